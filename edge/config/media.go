package config

import (
	"fmt"
	"path/filepath"
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
}

// DefaultMedia is the media section `edge init` writes.
func DefaultMedia() Media {
	return Media{
		Path:                  "media",
		MaxUploadBytes:        50 << 20,
		MaxImagePixels:        32_000_000,
		FreezeUnauthenticated: true,
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
`, m.Path, m.MaxUploadBytes, m.MaxImagePixels, m.FreezeUnauthenticated)
}
