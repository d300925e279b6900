// Command edge is a Matrix homeserver in one binary.
//
//	edge init --server-name NAME [--dir DIR] [--listen ADDR] [federation flags]
//	edge run [-c FILE]
//	edge register USER [--admin] [--password P] [-c FILE]
//	edge status [-c FILE] [--json] [SERVER]
//	edge import-synapse --config homeserver.yaml [--dir DIR]
//	edge health [-c FILE | --url URL]
//	edge version
package main

import (
	"errors"
	"fmt"
	"os"
)

const usage = `edge: a Matrix homeserver in one binary

Usage:
  edge init --server-name NAME [--dir DIR] [--listen ADDR]   write edge.yaml and a signing key
            [--federation-listen ADDR] [--tls-cert FILE --tls-key FILE]
            [--trust-ca FILE] [--allow-private-federation] [--metrics-listen ADDR]
            [--tls off|files|acme|internal] [--tls-listen ADDR] [--tls-hosts H1,H2]
            [--acme-email E] [--acme-staging] [--acme-directory URL] [--acme-http-listen ADDR]
  edge run [-c FILE]                                         serve
  edge register USER [--admin] [--password P] [-c FILE]      create a user (node running or stopped)
  edge keys list|rotate [-c FILE]                            show or rotate the signing keys
  edge status [-c FILE] [--json] [flags] SERVER              check federation with SERVER (exit 0 when it works)
  edge status [-c FILE] [--json]                             the running node's health (admin listener)
  edge import-synapse --config homeserver.yaml [--dir DIR]   write edge.yaml from a Synapse config and key
  edge health [-c FILE | --url URL]                          exit 0 when the node answers /_matrix/client/versions
  edge version                                               print the version
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "init":
		err = cmdInit(args)
	case "run":
		err = cmdRun(args)
	case "register":
		err = cmdRegister(args)
	case "keys":
		err = cmdKeys(args)
	case "status":
		err = cmdStatus(args)
	case "import-synapse":
		err = cmdImportSynapse(args)
	case "health":
		err = cmdHealth(args)
	case "version", "--version", "-v":
		err = cmdVersion(args)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		err = fmt.Errorf("unknown command %q\n\n%s", cmd, usage)
	}
	if err != nil {
		var ue usageError
		fmt.Fprintln(os.Stderr, "edge:", err)
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError marks mistakes on the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }
