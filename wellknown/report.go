package wellknown

import (
	"net/netip"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// Result says where to send federation requests for a server name.
type Result struct {
	// ServerName is the name that was resolved, as given.
	ServerName string `json:"server_name"`
	// Step is the spec step that produced the result: "1", "2", "3.1" …
	// "3.5", "4", "5" or "6".
	Step string `json:"step"`
	// Host is the Host header to send: the server name or, after
	// delegation, the delegated name — with its port if it had one.
	Host string `json:"host"`
	// TLSServerName is the name the peer's certificate must be valid for;
	// use it as tls.Config.ServerName (Go sends no SNI when it is an IP).
	TLSServerName string `json:"tls_server_name"`
	// Endpoints are the addresses to try, in order: SRV priority/weight
	// order, and within one target AAAA before A.
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one address to connect to.
type Endpoint struct {
	Addr netip.AddrPort `json:"addr"`
	// Target is the hostname whose A/AAAA records gave Addr (an SRV target
	// or the server's hostname); empty for IP literals.
	Target string `json:"target,omitempty"`
}

// Addrs returns the endpoints as "ip:port" strings for net.Dial.
func (r *Result) Addrs() []string {
	out := make([]string, len(r.Endpoints))
	for i, e := range r.Endpoints {
		out[i] = e.Addr.String()
	}
	return out
}

// Report is the step-by-step account of one resolution, for `edge status`
// and logs. It is built on every resolution; Resolve just drops it.
type Report struct {
	ServerName string    `json:"server_name"`
	Started    time.Time `json:"started"`
	Steps      []*Step   `json:"steps"`
	Result     *Result   `json:"result,omitempty"`
	Error      string    `json:"error,omitempty"`
}

// Outcome is what happened at one step.
type Outcome string

const (
	// OutcomeSkipped: the step's condition did not hold (e.g. step 1 for a
	// DNS name).
	OutcomeSkipped Outcome = "skipped"
	// OutcomeNotFound: tried, nothing there; resolution goes on.
	OutcomeNotFound Outcome = "not_found"
	// OutcomeFound: step 3 got a valid well-known; its sub-steps follow.
	OutcomeFound Outcome = "found"
	// OutcomeUsed: this step produced the Result.
	OutcomeUsed Outcome = "used"
	// OutcomeFailed: tried and failed. At step 3 resolution goes on to
	// step 4 (as the spec says); anywhere else resolution stops with Error.
	OutcomeFailed Outcome = "failed"
)

// Step is one numbered step of the spec's algorithm.
type Step struct {
	// Step is the spec's number for it: "1" … "6", "3.1" … "3.5"; "parse"
	// for the initial grammar check.
	Step string `json:"step"`
	// Tried says what the step looked at, e.g. "SRV _matrix-fed._tcp.example.org".
	Tried   string  `json:"tried"`
	Outcome Outcome `json:"outcome"`
	Detail  string  `json:"detail,omitempty"`
	// DNS holds every query made for this step, CNAME hops included.
	DNS []DNSQuery `json:"dns,omitempty"`
	// SRV lists the SRV records in the order they will be tried.
	SRV []SRVRecord `json:"srv,omitempty"`
	// WellKnown is the fetch behind step 3 (possibly from the cache).
	WellKnown *WellKnownFetch `json:"well_known,omitempty"`
	// Refused lists addresses dropped by the AllowPrivate policy.
	Refused []string `json:"refused,omitempty"`
	Error   string   `json:"error,omitempty"`
	// Err is Error as a Go error, for errors.Is.
	Err error `json:"-"`
}

// DNSQuery is one DNS question and what came back.
type DNSQuery struct {
	Name    string      `json:"name"`
	Type    string      `json:"type"`
	Server  string      `json:"server,omitempty"`
	Rcode   string      `json:"rcode,omitempty"`
	Answers []DNSRecord `json:"answers,omitempty"`
	Error   string      `json:"error,omitempty"`
}

// DNSRecord is one answer record (SRV, CNAME, A, AAAA …).
type DNSRecord struct {
	Name string `json:"name"`
	Type string `json:"type"`
	TTL  uint32 `json:"ttl"`
	// Value is the record data in zone-file form, e.g. "10 5 8448 fed.example.org."
	// for SRV or "192.0.2.1" for A.
	Value string `json:"value"`
}

// SRVRecord is one SRV answer in the order chosen by priority and weight.
type SRVRecord struct {
	Target   string `json:"target"`
	Port     uint16 `json:"port"`
	Priority uint16 `json:"priority"`
	Weight   uint16 `json:"weight"`
}

// WellKnownFetch records GET https://<hostname>/.well-known/matrix/server.
type WellKnownFetch struct {
	URL string `json:"url"`
	// Cached is true when this record was served from the cache (or from a
	// fetch another caller had in flight).
	Cached    bool      `json:"cached"`
	FetchedAt time.Time `json:"fetched_at"`
	// Expires is when the cache entry lapses.
	Expires time.Time `json:"expires"`
	// DNS are the lookups the dialer made for the well-known host(s).
	DNS []DNSQuery `json:"dns,omitempty"`
	// Dialed are the addresses connected to, in order.
	Dialed []string `json:"dialed,omitempty"`
	// Refused are addresses the dialer would not connect to.
	Refused []string `json:"refused,omitempty"`
	// Redirects are the Location targets followed (or refused, last).
	Redirects    []string `json:"redirects,omitempty"`
	Status       int      `json:"status,omitempty"`
	CacheControl string   `json:"cache_control,omitempty"`
	// Body is the start of the response body (at most 1 KiB).
	Body string `json:"body,omitempty"`
	// MServer is the validated m.server value.
	MServer string `json:"m_server,omitempty"`
	Error   string `json:"error,omitempty"`
}

// reportBodyMax bounds WellKnownFetch.Body so reports stay printable.
const reportBodyMax = 1024

func newStep(rep *Report, id, tried string) *Step {
	st := &Step{Step: id, Tried: tried}
	rep.Steps = append(rep.Steps, st)
	return st
}

func (st *Step) fail(err error) error {
	st.Outcome, st.Err, st.Error = OutcomeFailed, err, err.Error()
	return err
}

// dnsRecords renders answer records for the report.
func dnsRecords(rrs []dns.RR) []DNSRecord {
	out := make([]DNSRecord, 0, len(rrs))
	for _, rr := range rrs {
		h := rr.Header()
		out = append(out, DNSRecord{
			Name:  h.Name,
			Type:  dns.TypeToString[h.Rrtype],
			TTL:   h.Ttl,
			Value: strings.TrimPrefix(rr.String(), h.String()),
		})
	}
	return out
}
