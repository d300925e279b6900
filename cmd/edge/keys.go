package main

import (
	"fmt"
	"time"

	"edge/edge/config"
	"edge/federation"
)

const keysUsage = `usage:
  edge keys list [-c FILE]     show the current and retired signing keys
  edge keys rotate [-c FILE]   make a new signing key; the current one becomes an old_verify_key
`

// cmdKeys manages the server's signing keys.
func cmdKeys(args []string) error {
	if len(args) == 0 {
		return usageError{"keys: a subcommand is required\n\n" + keysUsage}
	}
	sub, args := args[0], args[1:]
	fs := newFlags("keys " + sub)
	cfgPath := fs.String("c", "edge.yaml", "config file")
	if err := parse(fs, args); err != nil {
		return err
	}
	switch sub {
	case "list", "rotate":
	default:
		return usageError{fmt.Sprintf("keys: unknown subcommand %q\n\n%s", sub, keysUsage)}
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return err
	}
	keyPath, oldPath := cfg.Path(cfg.SigningKeyPath), cfg.OldKeysPath()
	if sub == "rotate" {
		fresh, retired, err := federation.RotateKeys(keyPath, oldPath, time.Now())
		if err != nil {
			return fmt.Errorf("keys rotate: %w", err)
		}
		for _, k := range retired {
			fmt.Printf("retired %s (kept in %s as an old_verify_key)\n", k.ID, oldPath)
		}
		fmt.Printf("new signing key %s in %s; restart edge to sign with it\n", fresh.ID, keyPath)
		return nil
	}
	current, err := config.ReadSigningKeys(keyPath)
	if err != nil {
		return err
	}
	old, err := federation.ReadOldKeys(oldPath)
	if err != nil {
		return err
	}
	for _, k := range current {
		fmt.Printf("current %s %s\n", k.ID, federation.EncodeKey(k.Public()))
	}
	for _, k := range old {
		fmt.Printf("old     %s %s expired %s\n", k.ID, federation.EncodeKey(k.Public), time.UnixMilli(k.ExpiredTS).UTC().Format(time.RFC3339))
	}
	return nil
}
