package wellknown

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// DefaultPort is the federation port used when a server name (or delegated
// name, or a plain hostname at step 6) carries none.
const DefaultPort = 8448

// ServerName is a parsed server name (appendices, "Server Name"):
// a hostname — DNS name, dotted IPv4 literal or bracketed IPv6 literal —
// and an optional port. The same grammar applies to a delegated m.server.
type ServerName struct {
	// Host is the DNS name or IP literal as written, without IPv6 brackets.
	Host string
	// Port is 0 when the name has no explicit port.
	Port int
	// IP is valid when Host is an IP literal.
	IP netip.Addr
}

// ParseServerName validates s against the server name grammar. Besides the
// grammar it rejects empty DNS labels and labels over 63 bytes (such names
// cannot be looked up) and port 0.
func ParseServerName(s string) (ServerName, error) {
	bad := func(why string) (ServerName, error) {
		return ServerName{}, fmt.Errorf("%w: %q: %s", ErrInvalidServerName, s, why)
	}
	if s == "" {
		return bad("empty")
	}
	var n ServerName
	host, port, hasPort := s, "", false
	if s[0] == '[' {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return bad("unterminated IPv6 literal")
		}
		host = s[1:end]
		if rest := s[end+1:]; rest != "" {
			if rest[0] != ':' {
				return bad("junk after IPv6 literal")
			}
			port, hasPort = rest[1:], true
		}
		// IPv6address = 2*45IPv6char; IPv6char = DIGIT / A-F / a-f / ":" / "."
		if len(host) < 2 || len(host) > 45 || strings.Trim(host, "0123456789abcdefABCDEF:.") != "" {
			return bad("bad IPv6 literal")
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || !ip.Is6() {
			return bad("bad IPv6 literal")
		}
		n.IP = ip
	} else {
		if i := strings.LastIndexByte(s, ':'); i >= 0 {
			host, port, hasPort = s[:i], s[i+1:], true
		}
		switch {
		case host == "":
			return bad("empty hostname")
		case looksIPv4(host):
			ip, err := netip.ParseAddr(host)
			if err != nil || !ip.Is4() {
				return bad("bad IPv4 literal")
			}
			n.IP = ip
		default:
			if why := checkDNSName(host); why != "" {
				return bad(why)
			}
		}
	}
	n.Host = host
	if hasPort {
		// port = 1*5DIGIT
		if port == "" || len(port) > 5 || strings.Trim(port, "0123456789") != "" {
			return bad("bad port")
		}
		p, _ := strconv.Atoi(port)
		if p < 1 || p > 65535 {
			return bad("port out of range")
		}
		n.Port = p
	}
	return n, nil
}

// looksIPv4 reports whether h has the IPv4address shape: four groups of
// 1–3 digits. Such a name is an IP literal and must then be a valid one.
func looksIPv4(h string) bool {
	parts := strings.Split(h, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// checkDNSName applies dns-name = 1*255dns-char (DIGIT / ALPHA / "-" / ".")
// and the label rules DNS itself imposes; it returns why h is invalid, or "".
func checkDNSName(h string) string {
	if len(h) > 255 {
		return "hostname longer than 255 characters"
	}
	for _, c := range []byte(h) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Sprintf("character %q not allowed in a hostname", c)
		}
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" {
			return "empty DNS label"
		}
		if len(label) > 63 {
			return "DNS label longer than 63 characters"
		}
	}
	return ""
}

// IsIP reports whether the hostname is an IP literal (spec steps 1 and 3.1).
func (n ServerName) IsIP() bool { return n.IP.IsValid() }

// String renders the name as it is written in IDs and Host headers.
func (n ServerName) String() string {
	h := n.Host
	if n.IP.Is6() {
		h = "[" + h + "]"
	}
	if n.Port != 0 {
		h += ":" + strconv.Itoa(n.Port)
	}
	return h
}
