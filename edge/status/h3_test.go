package status

import (
	"crypto/tls"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go/http3"
)

// TestStatusHTTP3: h3 offered by Alt-Svc is fetched over QUIC; an offer
// nothing answers is a warning, not a failure.
func TestStatusHTTP3(t *testing.T) {
	ca := newTestCA(t)
	cert := ca.issue(t, 90*24*time.Hour, "127.0.0.1")
	f := startFake(t, cert, "")
	inner := f.srv.Config.Handler
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h3 := &http3.Server{Handler: inner, TLSConfig: http3.ConfigureTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})}
	go func() { _ = h3.Serve(pc) }()
	t.Cleanup(func() { h3.Close(); pc.Close() })
	udpPort := pc.LocalAddr().(*net.UDPAddr).Port
	altSvc := `h3=":` + strconv.Itoa(udpPort) + `"; ma=3600`
	f.srv.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Alt-Svc", altSvc)
		inner.ServeHTTP(w, r)
	})

	rep := inspect(t, f.name, Options{RootCAs: ca.pool})
	c := rep.Connections[0]
	if !rep.FederationOK || c.AltSvc != altSvc || c.HTTP3 != "ok (127.0.0.1:"+strconv.Itoa(udpPort)+")" || hasFinding(rep.Warnings, "HTTP3") != nil {
		t.Fatalf("h3 served: ok=%v alt-svc %q http3 %q warnings %+v", rep.FederationOK, c.AltSvc, c.HTTP3, rep.Warnings)
	}

	h3.Close()
	pc.Close()
	rep = inspect(t, f.name, Options{RootCAs: ca.pool})
	c = rep.Connections[0]
	if w := hasFinding(rep.Warnings, "HTTP3"); !rep.FederationOK || !strings.HasPrefix(c.HTTP3, "failed") || w == nil || !strings.Contains(w.Fix, "UDP") {
		t.Fatalf("h3 advertised, not served: ok=%v http3 %q warnings %+v", rep.FederationOK, c.HTTP3, rep.Warnings)
	}
	if got := altSvcH3(`h2=":443", h3="other.example:8443"; ma=60`, "127.0.0.1:8448"); got != "other.example:8443" {
		t.Fatalf("altSvcH3: %q", got)
	}
}
