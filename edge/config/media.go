package config

import (
	"fmt"
	"path/filepath"
	"time"
)

// Media configures the content repository (edge/media).
type Media struct {
	// Path is the directory holding uploaded files and thumbnails; a
	// relative path is resolved against the database file's directory.
	Path string `yaml:"path"`
	// MaxUploadBytes caps one upload (M_TOO_LARGE above it); clients read
	// it as m.upload.size.
	MaxUploadBytes int64 `yaml:"max_upload_bytes"`
	// MaxImagePixels refuses to thumbnail images whose header declares more
	// pixels than this, before decoding them (decompression bombs).
	MaxImagePixels int64 `yaml:"max_image_pixels"`
	// FreezeUnauthenticated marks new uploads as reachable only through the
	// authenticated /_matrix/client/v1/media endpoints, as the spec asks
	// servers to do from v1.12; media uploaded while it was off stays
	// reachable through the deprecated /_matrix/media/v3 downloads.
	FreezeUnauthenticated bool `yaml:"freeze_unauthenticated"`
	// URLPreviewEnabled serves preview_url, which makes the server fetch
	// URLs its users name; off, the endpoint does not exist (as in Synapse).
	URLPreviewEnabled bool `yaml:"url_preview_enabled"`
	// URLPreviewAllowPrivate lets previews reach loopback, private and
	// link-local addresses (the LAN, tests); off, they are refused.
	URLPreviewAllowPrivate bool `yaml:"url_preview_allow_private"`
	// URLPreviewMaxBytes caps what is read of a previewed page (the rest
	// is ignored) and the size of its image.
	URLPreviewMaxBytes int64 `yaml:"url_preview_max_bytes"`
	// URLPreviewTimeout bounds one preview, redirects and image included.
	URLPreviewTimeout time.Duration `yaml:"url_preview_timeout"`
}

// DefaultMedia is the media section `edge init` writes.
func DefaultMedia() Media {
	return Media{
		Path:                  "media",
		MaxUploadBytes:        50 << 20,
		MaxImagePixels:        32_000_000,
		FreezeUnauthenticated: true,
		URLPreviewMaxBytes:    1 << 20,
		URLPreviewTimeout:     10 * time.Second,
	}
}

func (m Media) validate() error {
	if m.Path == "" {
		return &FieldError{"media.path", "is required"}
	}
	if m.MaxUploadBytes < 1 {
		return &FieldError{"media.max_upload_bytes", "must be at least 1"}
	}
	if m.MaxImagePixels < 1 {
		return &FieldError{"media.max_image_pixels", "must be at least 1"}
	}
	if m.URLPreviewMaxBytes < 1 {
		return &FieldError{"media.url_preview_max_bytes", "must be at least 1"}
	}
	if m.URLPreviewTimeout <= 0 {
		return &FieldError{"media.url_preview_timeout", "must be positive"}
	}
	return nil
}

// MediaDir is the absolute (or config-relative) media directory: Path,
// resolved against the database file's directory when relative.
func (c *Config) MediaDir() string {
	if filepath.IsAbs(c.Media.Path) {
		return c.Media.Path
	}
	return filepath.Join(filepath.Dir(c.Path(c.DatabasePath)), c.Media.Path)
}

// mediaSection renders the media settings with comments.
func mediaSection(m Media) string {
	return fmt.Sprintf(`# Content repository: uploads, downloads and thumbnails.
media:
  # Directory for files and thumbnails, relative to the database's directory.
  path: %q
  # Largest upload accepted, in bytes.
  max_upload_bytes: %d
  # Images declaring more pixels than this are not thumbnailed.
  max_image_pixels: %d
  # New uploads are only served by the authenticated endpoints
  # (/_matrix/client/v1/media); the deprecated /_matrix/media/v3 downloads
  # keep serving media uploaded while this was false.
  freeze_unauthenticated: %t
  # Serve URL previews (preview_url). The server then fetches any http(s)
  # URL a user names, so it is off unless turned on.
  url_preview_enabled: %t
  # Let previews reach loopback, private and link-local addresses.
  url_preview_allow_private: %t
  # Bytes read of a previewed page (the rest is ignored) and largest image kept.
  url_preview_max_bytes: %d
  # Longest one preview may take, redirects and image included.
  url_preview_timeout: %s
`, m.Path, m.MaxUploadBytes, m.MaxImagePixels, m.FreezeUnauthenticated,
		m.URLPreviewEnabled, m.URLPreviewAllowPrivate, m.URLPreviewMaxBytes, m.URLPreviewTimeout)
}
