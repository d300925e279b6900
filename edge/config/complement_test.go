package config

import "testing"

// TestComplementConfig loads the Complement image's edge.yaml: it must
// validate, and keep the settings Complement's tests depend on — URL
// previews on and allowed to reach Docker's private network
// (TestUrlPreview serves its page from the host), private federation
// peers, unauthenticated media downloads.
func TestComplementConfig(t *testing.T) {
	t.Setenv("SERVER_NAME", "hs1")
	cfg, err := Load("../../docker/complement/edge.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.Media.URLPreviewEnabled || !cfg.Media.URLPreviewAllowPrivate {
		t.Errorf("url previews: enabled %t, allow private %t; want both", cfg.Media.URLPreviewEnabled, cfg.Media.URLPreviewAllowPrivate)
	}
	if !cfg.Federation.AllowPrivateAddresses || cfg.Media.FreezeUnauthenticated {
		t.Errorf("federation.allow_private_addresses %t, media.freeze_unauthenticated %t", cfg.Federation.AllowPrivateAddresses, cfg.Media.FreezeUnauthenticated)
	}
	if cfg.ServerName != "hs1" {
		t.Errorf("server_name %q, want hs1 from the environment", cfg.ServerName)
	}
}
