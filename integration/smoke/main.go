// Command smoke runs an edge binary — natively or under a qemu user-mode
// emulator, for the riscv64 build — and drives it over loopback with the
// mautrix client: version, register, login, create a room, send, sync.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"maunium.net/go/mautrix"
)

func main() {
	binary := flag.String("binary", "bin/edge", "edge binary to test")
	qemu := flag.String("qemu", "", "qemu user-mode emulator to run it under")
	flag.Parse()
	if err := run(*binary, *qemu); err != nil {
		fmt.Fprintln(os.Stderr, "smoke: FAIL:", err)
		os.Exit(1)
	}
	fmt.Println("smoke: ok")
}

func command(qemu, binary string, args ...string) *exec.Cmd {
	if qemu != "" {
		return exec.Command(qemu, append([]string{binary}, args...)...)
	}
	return exec.Command(binary, args...)
}

func run(binary, qemu string) error {
	binary, _ = filepath.Abs(binary)
	out, err := command(qemu, binary, "version").CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "edge ") {
		return fmt.Errorf("edge version: %v: %s", err, out)
	}
	fmt.Print("smoke: ", string(out))
	dir, err := os.MkdirTemp("", "edge-smoke")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := ln.Addr().String()
	ln.Close()
	if out, err := command(qemu, binary, "init", "--server-name", "localhost", "--dir", dir, "--listen", addr).CombinedOutput(); err != nil {
		return fmt.Errorf("edge init: %v: %s", err, out)
	}
	srv := command(qemu, binary, "run", "-c", filepath.Join(dir, "edge.yaml"))
	srv.Stderr = os.Stderr
	if err := srv.Start(); err != nil {
		return err
	}
	defer func() {
		_ = srv.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = srv.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = srv.Process.Kill()
		}
	}()
	base := "http://" + addr
	if err := waitUp(base+"/_matrix/client/versions", 60*time.Second); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, _ := mautrix.NewClient(base, "", "")
	if _, err := c.RegisterDummy(ctx, &mautrix.ReqRegister[any]{Username: "smoke", Password: "smoke-password"}); err != nil {
		return fmt.Errorf("register: %w", err)
	}
	if _, err := c.Login(ctx, &mautrix.ReqLogin{
		Type: mautrix.AuthTypePassword, Identifier: mautrix.UserIdentifier{Type: mautrix.IdentifierTypeUser, User: "smoke"},
		Password: "smoke-password", StoreCredentials: true,
	}); err != nil {
		return fmt.Errorf("login: %w", err)
	}
	room, err := c.CreateRoom(ctx, &mautrix.ReqCreateRoom{Name: "smoke"})
	if err != nil {
		return fmt.Errorf("createRoom: %w", err)
	}
	sent, err := c.SendText(ctx, room.RoomID, "hello from the board")
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	resp, err := c.SyncRequest(ctx, 0, "", "", false, "")
	if err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	for _, ev := range resp.Rooms.Join[room.RoomID].Timeline.Events {
		if ev.ID == sent.EventID {
			return nil
		}
	}
	return errors.New("sent message not in /sync")
}

func waitUp(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s not up after %s", url, limit)
}
