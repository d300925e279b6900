// Package tlsfiles serves a TLS certificate from PEM files and picks up
// replaced files without a restart (a renewed certificate, copied in by
// an operator or a renewal job). ACME is another package's business.
package tlsfiles

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultInterval is how often, at most, the files are looked at again.
const DefaultInterval = 3 * time.Second

// Error says which file is at fault.
type Error struct {
	// Which is "cert", "key", or "pair" (both read, but they do not make
	// a usable certificate and key).
	Which string
	Err   error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// Files is a certificate and key file pair. Its GetCertificate re-reads
// the files when their size or modification time changed, at most once
// per interval; a replacement that does not load (say the certificate is
// written but the key not yet) keeps the last good pair in service and is
// tried again at the next check.
type Files struct {
	certFile, keyFile string
	interval          time.Duration
	log               *slog.Logger

	mu      sync.Mutex
	cert    *tls.Certificate
	stamp   [2]stamp // of the files behind cert
	checked time.Time
}

type stamp struct {
	mod  time.Time
	size int64
}

// Load reads the pair once (an error here is fatal to the caller) and
// returns the Files that keep it fresh. interval <= 0 means DefaultInterval;
// log may be nil.
func Load(certFile, keyFile string, interval time.Duration, log *slog.Logger) (*Files, error) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Files{certFile: certFile, keyFile: keyFile, interval: interval, log: log}
	st, err := f.stat()
	if err != nil {
		return nil, err
	}
	if f.cert, err = f.load(); err != nil {
		return nil, err
	}
	f.stamp, f.checked = st, time.Now()
	return f, nil
}

func (f *Files) stat() ([2]stamp, error) {
	var st [2]stamp
	for i, p := range []struct{ which, path string }{{"cert", f.certFile}, {"key", f.keyFile}} {
		fi, err := os.Stat(p.path)
		if err != nil {
			return st, &Error{p.which, err}
		}
		st[i] = stamp{fi.ModTime(), fi.Size()}
	}
	return st, nil
}

func (f *Files) load() (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(f.certFile)
	if err != nil {
		return nil, &Error{"cert", err}
	}
	keyPEM, err := os.ReadFile(f.keyFile)
	if err != nil {
		return nil, &Error{"key", err}
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, &Error{"pair", fmt.Errorf("%s and %s: %w", f.certFile, f.keyFile, err)}
	}
	return &c, nil
}

// GetCertificate is a tls.Config.GetCertificate.
func (f *Files) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if now := time.Now(); now.Sub(f.checked) >= f.interval {
		f.checked = now
		f.refresh()
	}
	return f.cert, nil
}

// refresh reloads the pair if either file changed; f.mu is held.
func (f *Files) refresh() {
	st, err := f.stat()
	if err != nil {
		f.log.Warn("TLS certificate files unreadable; serving the loaded certificate", "err", err)
		return
	}
	if st == f.stamp {
		return
	}
	c, err := f.load()
	if err != nil {
		f.log.Warn("TLS certificate files changed but do not load; serving the previous certificate", "err", err)
		return
	}
	f.cert, f.stamp = c, st
	if c.Leaf != nil {
		f.log.Info("TLS certificate reloaded", "file", f.certFile, "subject", c.Leaf.Subject.String(), "not_after", c.Leaf.NotAfter)
	}
}
