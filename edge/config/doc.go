// Package config loads, validates and writes edge.yaml, the one file that
// describes a node: its server name, signing key, listeners, registration
// policy and limits.
package config
