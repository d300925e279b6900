package wellknown

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A name only /etc/hosts knows (Docker's host.docker.internal) resolves
// with the system configuration, before any nameserver is asked.
func TestHostsFileBeforeDNS(t *testing.T) {
	// A nameserver that never answers: a DNS query would time out.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dir := t.TempDir()
	resolv := filepath.Join(dir, "resolv.conf")
	hosts := filepath.Join(dir, "hosts")
	_, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\noptions port:"+port+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(hosts, []byte(`# comment
127.0.0.1	localhost
172.17.0.1 Host.Docker.Internal. gateway # trailing comment
::ffff:10.0.0.7 mapped.test
fe80::1%eth0 zoned.test
not-an-ip broken.test
`), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := New(Options{ResolvConf: resolv, HostsFile: hosts, AllowPrivate: true, DNSTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	res, err := r.Resolve(ctx, "host.docker.internal:42345")
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Endpoints) != 1 || res.Endpoints[0].Addr.String() != "172.17.0.1:42345" || res.TLSServerName != "host.docker.internal" {
		t.Fatalf("endpoints %+v, SNI %q", res.Endpoints, res.TLSServerName)
	}
	if res, err := r.Resolve(ctx, "mapped.test:8448"); err != nil || res.Endpoints[0].Addr.String() != "10.0.0.7:8448" {
		t.Fatalf("mapped address: %+v %v", res, err)
	}
	// Names absent from the file (or on unusable lines) still go to DNS.
	for _, name := range []string{"zoned.test:8448", "broken.test:8448", "elsewhere.test:8448"} {
		if _, err := r.Resolve(ctx, name); err == nil {
			t.Fatalf("%s resolved without DNS", name)
		}
	}
	// The hosts file still obeys the private-address policy.
	strict, err := New(Options{ResolvConf: resolv, HostsFile: hosts})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := strict.Resolve(ctx, "host.docker.internal:42345"); err == nil {
		t.Fatal("a private address from the hosts file was allowed")
	}
	// Explicit nameservers are an explicit view of DNS: no hosts file.
	explicit, err := New(Options{Nameservers: []string{pc.LocalAddr().String()}, HostsFile: hosts, AllowPrivate: true, DNSTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := explicit.Resolve(ctx, "host.docker.internal:42345"); err == nil {
		t.Fatal("explicit nameservers used the hosts file")
	}
	// A missing hosts file is no hosts file.
	if _, err := New(Options{ResolvConf: resolv, HostsFile: filepath.Join(dir, "none")}); err != nil {
		t.Fatal(err)
	}
}
