package media

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// files is the on-disk layout under the media directory:
//
//	content/ab/cd/<sha256>          uploaded bytes
//	thumbnails/ab/<sha256>/<name>   generated thumbnails of that content
//	tmp/                            partial writes, renamed into place
type files struct{ dir string }

func (f files) content(sha string) string {
	return filepath.Join(f.dir, "content", sha[:2], sha[2:4], sha)
}

func (f files) thumbnail(sha, name string) string {
	return filepath.Join(f.dir, "thumbnails", sha[:2], sha, name)
}

func (f files) tmp() string { return filepath.Join(f.dir, "tmp") }

// errTooLarge is returned by store when the body exceeds the limit.
var errTooLarge = errors.New("media: too large")

// store copies at most limit bytes of r into the content store and returns
// their sha256 and size. The file is written to tmp/, fsynced and renamed
// into place, so a crash never leaves a partial file under its hash.
func (f files) store(r io.Reader, limit int64) (sha string, size int64, err error) {
	h := sha256.New()
	tmp, err := f.writeTemp(func(w io.Writer) error {
		size, err = io.Copy(io.MultiWriter(w, h), io.LimitReader(r, limit+1))
		if err != nil {
			return err
		}
		if size > limit {
			return errTooLarge
		}
		return nil
	})
	if err != nil {
		return "", 0, err
	}
	sha = hex.EncodeToString(h.Sum(nil))
	if err := f.place(tmp, f.content(sha)); err != nil {
		return "", 0, err
	}
	return sha, size, nil
}

// writeAtomic writes data to path through a fsynced temporary file.
func (f files) writeAtomic(path string, data []byte) error {
	tmp, err := f.writeTemp(func(w io.Writer) error {
		_, err := w.Write(data)
		return err
	})
	if err != nil {
		return err
	}
	return f.place(tmp, path)
}

// writeTemp creates a file in tmp/, fills it and fsyncs it; on error the
// file is removed.
func (f files) writeTemp(fill func(io.Writer) error) (string, error) {
	if err := os.MkdirAll(f.tmp(), 0o755); err != nil {
		return "", err
	}
	t, err := os.CreateTemp(f.tmp(), "upload-*")
	if err != nil {
		return "", err
	}
	err = fill(t)
	if err == nil {
		err = t.Sync()
	}
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(t.Name())
		return "", err
	}
	return t.Name(), nil
}

// place renames tmp to path and fsyncs path's directory so the rename
// survives a crash. An existing file at path has the same content (the
// name is its hash, or a thumbnail derived from it) and is replaced.
func (f files) place(tmp, path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// cleanTmp removes partial writes left by a crash (older than an hour, so
// uploads in progress in another instance are left alone).
func (f files) cleanTmp() {
	entries, err := os.ReadDir(f.tmp())
	if err != nil {
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > time.Hour {
			os.Remove(filepath.Join(f.tmp(), e.Name()))
		}
	}
}
