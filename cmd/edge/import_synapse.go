package main

import (
	"fmt"

	"edge/edge/synapseimport"
)

// cmdImportSynapse writes edge.yaml and signing.key from a Synapse config:
// edge import-synapse --config homeserver.yaml [--dir DIR]
func cmdImportSynapse(args []string) error {
	fs := newFlags("import-synapse")
	synPath := fs.String("config", "", "Synapse's homeserver.yaml")
	dir := fs.String("dir", ".", "directory to write edge.yaml and signing.key into")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *synPath == "" || fs.NArg() != 0 {
		return usageError{"import-synapse: --config homeserver.yaml is required\n\nusage: edge import-synapse --config homeserver.yaml [--dir DIR]"}
	}
	res, err := synapseimport.Import(*synPath, *dir)
	if err != nil {
		return fmt.Errorf("import-synapse: %w", err)
	}
	fmt.Printf("wrote %s for %s\n", res.ConfigPath, res.Config.ServerName)
	fmt.Printf("wrote %s (Synapse's signing key %s, mode 0600): the server keeps its identity\n", res.KeyPath, res.KeyID)
	if len(res.NotCarried) > 0 {
		fmt.Println("not carried over:")
		for _, l := range res.NotCarried {
			fmt.Println("  " + l)
		}
	}
	fmt.Println("Synapse's database (users, rooms, messages, media) is not imported: stop Synapse, then start edge with `edge run -c " + res.ConfigPath + "`.")
	return nil
}
