// Package jsonpath splits the spec's dot-separated property paths
// (https://spec.matrix.org/latest/appendices/#dot-separated-property-paths),
// which push-rule conditions and filters' event_fields both use.
package jsonpath

import "strings"

// Split splits a dot-separated property path: "\." is a literal dot, "\\"
// a literal backslash, any other backslash is kept as is.
func Split(path string) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(path); i++ {
		c := path[i]
		switch {
		case c == '\\' && i+1 < len(path) && (path[i+1] == '.' || path[i+1] == '\\'):
			cur.WriteByte(path[i+1])
			i++
		case c == '.':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}
