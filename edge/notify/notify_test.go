package notify

import (
	"strings"
	"testing"
	"time"
)

func TestNotifierWakesOnlyItsKeys(t *testing.T) {
	n := New()
	a := n.Listen(RoomKey("!a"), UserKey("@u"))
	b := n.Listen(RoomKey("!b"))
	defer a.Close()
	n.Notify(RoomKey("!a"))
	select {
	case <-a.C:
	default:
		t.Fatal("listener on !a not woken")
	}
	select {
	case <-b.C:
		t.Fatal("listener on !b woken by !a")
	default:
	}
	// A wake-up that comes before the wait is not lost (buffered).
	n.Notify(UserKey("@u"))
	n.Notify(UserKey("@u")) // a second one coalesces, never blocks
	select {
	case <-a.C:
	case <-time.After(time.Second):
		t.Fatal("pending wake-up lost")
	}
	b.Close()
	n.Notify(RoomKey("!b")) // closed listener: nothing, no panic
	if len(n.waiters) != 2 {
		t.Fatalf("waiters map keeps closed listeners: %v", n.waiters)
	}
}

func TestTypingExpiresAndWakes(t *testing.T) {
	n := New()
	ty := NewTyping(n)
	start := ty.Serial()
	w := n.Listen(RoomKey("!r"))
	defer w.Close()
	ty.Set("!r", "@a", true, time.Second)
	<-w.C
	users, changed := ty.Since("!r", start)
	if !changed || len(users) != 1 || users[0] != "@a" {
		t.Fatalf("typing = %v %v", users, changed)
	}
	if _, changed := ty.Since("!r", ty.Serial()); changed {
		t.Fatal("no change since the latest serial, yet reported")
	}
	select {
	case <-w.C: // expiry after ~1s wakes the room again
	case <-time.After(3 * time.Second):
		t.Fatal("expiry did not wake the room")
	}
	if users, _ := ty.Since("!r", start); len(users) != 0 {
		t.Fatalf("still typing after the timeout: %v", users)
	}
	if ty.Serial() <= start {
		t.Fatal("serial did not grow")
	}
}

// TestTypingOnChange: the hook hears each change of a room's typing users,
// the expiry of a notice included, and not a repeat of the same state.
func TestTypingOnChange(t *testing.T) {
	ty := NewTyping(New())
	got := make(chan string, 10)
	ty.OnChange = func(roomID string, users []string) { got <- roomID + " " + strings.Join(users, ",") }
	ty.Set("!r", "@a", true, time.Second)
	ty.Set("!r", "@a", true, time.Second) // still typing: no change
	ty.Set("!r", "@b", true, 5*time.Second)
	for _, want := range []string{"!r @a", "!r @a,@b", "!r @b"} {
		select {
		case g := <-got:
			if g != want {
				t.Fatalf("OnChange %q, want %q", g, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("no OnChange, want %q", want)
		}
	}
}
