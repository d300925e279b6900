package wellknown

import (
	"bufio"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"strings"
)

// The hosts file comes before DNS, as `hosts: files dns` does for the
// system resolver: names that exist only there (Docker's --add-host and
// host.docker.internal, Kubernetes hostAliases, a LAN without DNS) must
// resolve for federation too. It is read with the system nameservers,
// i.e. when Options.Nameservers is empty; explicit nameservers mean an
// explicit view of DNS.

// readHosts parses a hosts file into lower-case name → addresses, in file
// order. A missing file is an empty table.
func readHosts(path string) (map[string][]netip.Addr, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	} else if err != nil {
		return nil, err
	}
	defer f.Close()
	hosts := map[string][]netip.Addr{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		// A zone (fe80::1%eth0) cannot be dialled by name from here.
		addr, err := netip.ParseAddr(fields[0])
		if err != nil || addr.Zone() != "" {
			continue
		}
		addr = addr.Unmap()
		for _, name := range fields[1:] {
			name = strings.ToLower(strings.TrimSuffix(name, "."))
			hosts[name] = append(hosts[name], addr)
		}
	}
	return hosts, sc.Err()
}
