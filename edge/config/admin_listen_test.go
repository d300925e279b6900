package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminListenRoundTrip: admin_listen survives WriteFile and Load, is
// on by default on loopback, can be switched off, and is validated.
func TestAdminListenRoundTrip(t *testing.T) {
	dir := t.TempDir()
	if Default("x.test").AdminListen != DefaultAdminListen || !strings.HasPrefix(DefaultAdminListen, "127.0.0.1:") {
		t.Fatalf("default admin_listen %q", Default("x.test").AdminListen)
	}
	for i, addr := range []string{"127.0.0.1:9999", ""} {
		c := Default("x.test")
		c.AdminListen = addr
		p := filepath.Join(dir, "edge"+string(rune('a'+i))+".yaml")
		if err := WriteFile(p, c); err != nil {
			t.Fatal(err)
		}
		got, err := Load(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.AdminListen != addr {
			t.Fatalf("admin_listen %q came back as %q", addr, got.AdminListen)
		}
	}
	// A file without the field gets the default.
	p := filepath.Join(dir, "min.yaml")
	if err := os.WriteFile(p, []byte("server_name: x.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(p); err != nil || got.AdminListen != DefaultAdminListen {
		t.Fatalf("minimal file: %v %+v", err, got)
	}
	if err := os.WriteFile(p, []byte("server_name: x.test\nadmin_listen: nonsense\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Load(p)
	var fe *FieldError
	if !errors.As(err, &fe) || fe.Field != "admin_listen" {
		t.Fatalf("bad admin_listen: %v", err)
	}
}
