package config

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Environment expansion: a value in edge.yaml may name environment
// variables as ${NAME} or ${NAME:-default}, so one file serves every
// container started from an image (server_name: ${SERVER_NAME}). Only the
// braced form is expanded, so a secret containing a bare $ stays as
// written; $${ stands for a literal ${. Expansion happens on parsed
// values, never on the text, so comments are left alone and a variable's
// content cannot change the file's structure.

// UnsetVarError is a ${NAME} without a default whose variable is not set.
type UnsetVarError struct {
	Name string
	Line int
}

func (e *UnsetVarError) Error() string {
	return fmt.Sprintf("line %d: environment variable %s is not set (use ${%s:-default} for a fallback)", e.Line, e.Name, e.Name)
}

// expandEnv replaces ${NAME} and ${NAME:-default} in s from lookup.
func expandEnv(s string, lookup func(string) (string, bool)) (string, error) {
	if !strings.Contains(s, "${") {
		return s, nil
	}
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			return b.String(), nil
		}
		if i > 0 && s[i-1] == '$' {
			// $${ is an escaped ${.
			b.WriteString(s[:i-1])
			b.WriteString("${")
			s = s[i+2:]
			continue
		}
		b.WriteString(s[:i])
		end := strings.IndexByte(s[i:], '}')
		if end < 0 {
			return "", fmt.Errorf("unterminated ${ in %q", s)
		}
		expr := s[i+2 : i+end]
		s = s[i+end+1:]
		name, def, hasDef := strings.Cut(expr, ":-")
		if !validVarName(name) {
			return "", fmt.Errorf("${%s}: %q is not an environment variable name", expr, name)
		}
		v, ok := lookup(name)
		switch {
		case ok && v != "":
			b.WriteString(v)
		case hasDef:
			b.WriteString(def)
		case ok:
			// Set but empty, no default: the operator asked for empty.
		default:
			return "", &UnsetVarError{Name: name}
		}
	}
}

func validVarName(n string) bool {
	if n == "" || (n[0] >= '0' && n[0] <= '9') {
		return false
	}
	for _, r := range n {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// expandNode expands every scalar under n. An expanded plain scalar has
// its tag resolved again, so ${PORT} can fill an integer field; a quoted
// one stays a string.
func expandNode(n *yaml.Node, lookup func(string) (string, bool)) error {
	if n.Kind == yaml.ScalarNode {
		v, err := expandEnv(n.Value, lookup)
		if err != nil {
			var ue *UnsetVarError
			if errors.As(err, &ue) {
				ue.Line = n.Line
				return ue
			}
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		if v != n.Value {
			n.Value = v
			if n.Style&yaml.TaggedStyle == 0 {
				n.Tag = ""
			}
		}
		return nil
	}
	for _, c := range n.Content {
		if err := expandNode(c, lookup); err != nil {
			return err
		}
	}
	return nil
}

// decodeExpanded parses data, expands environment variables in its
// values and decodes the result into cfg.
func decodeExpanded(data []byte, cfg *Config, lookup func(string) (string, bool)) error {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return err
	}
	if root.Kind == 0 {
		return nil // an empty file: all defaults
	}
	if err := expandNode(&root, lookup); err != nil {
		return err
	}
	return root.Decode(cfg)
}

// EnsureSigningKey writes a fresh signing key to signing_key_path when
// signing_key_generate is on and the file does not exist yet; an existing
// key is always kept (a changed key breaks federation with servers that
// cached the old one). It reports whether it wrote one.
func (c *Config) EnsureSigningKey() (SigningKey, bool, error) {
	if !c.SigningKeyGenerate {
		return SigningKey{}, false, nil
	}
	path := c.Path(c.SigningKeyPath)
	if _, err := os.Stat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return SigningKey{}, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return SigningKey{}, false, fmt.Errorf("signing_key_path: %w", err)
	}
	key, err := GenerateSigningKey()
	if err != nil {
		return SigningKey{}, false, err
	}
	if err := WriteSigningKey(path, key); err != nil {
		if errors.Is(err, os.ErrExist) {
			return SigningKey{}, false, nil // another process won the race
		}
		return SigningKey{}, false, fmt.Errorf("signing_key_path: %w", err)
	}
	return key, true, nil
}
