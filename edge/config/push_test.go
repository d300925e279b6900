package config

import (
	"path/filepath"
	"testing"
)

// TestPushRoundTrip: push.allow_private_gateways is off by default and an
// operator's true survives WriteFile and Load.
func TestPushRoundTrip(t *testing.T) {
	if Default("example.org").Push.AllowPrivateGateways {
		t.Fatal("private push gateways are allowed by default")
	}
	c := Default("example.org")
	c.Push.AllowPrivateGateways = true
	path := filepath.Join(t.TempDir(), "edge.yaml")
	if err := WriteFile(path, c); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Push.AllowPrivateGateways {
		t.Fatal("push.allow_private_gateways did not survive the round trip")
	}
}
