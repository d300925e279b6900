package filter

import (
	"bytes"
	"edge/edge/jsonpath"
	"fmt"

	"github.com/tidwall/gjson"
)

// ApplyEventFields returns event JSON reduced to the filter's event_fields;
// see the package function.
func (f *Filter) ApplyEventFields(event []byte) ([]byte, error) {
	if f == nil {
		return event, nil
	}
	return ApplyEventFields(event, f.EventFields)
}

// ApplyEventFields keeps only the listed fields of an event object. Fields
// are dot-separated paths ("content.body", "content.m\.relates_to"); a path
// through something that is not an object, or to a key that is absent,
// contributes nothing. An empty or absent list returns the event unchanged
// (as Synapse does; the spec only says absent means all fields). Values and
// key spellings are copied byte for byte and keep the event's key order.
func ApplyEventFields(event []byte, fields []string) ([]byte, error) {
	if len(fields) == 0 {
		return event, nil
	}
	doc := gjson.ParseBytes(event)
	if !doc.IsObject() {
		return nil, fmt.Errorf("filter: event is not a JSON object")
	}
	root := &fieldNode{}
	for _, f := range fields {
		n := root
		for _, seg := range jsonpath.Split(f) {
			if n.all {
				break // a shorter path already selects this whole subtree
			}
			if n.kids == nil {
				n.kids = map[string]*fieldNode{}
			}
			next, ok := n.kids[seg]
			if !ok {
				next = &fieldNode{}
				n.kids[seg] = next
			}
			n = next
		}
		n.all, n.kids = true, nil
	}
	var b bytes.Buffer
	writeSelected(&b, doc, root)
	return b.Bytes(), nil
}

// fieldNode is one level of the selected-paths tree: all selects the whole
// value, otherwise kids name the selected keys below.
type fieldNode struct {
	all  bool
	kids map[string]*fieldNode
}

// writeSelected writes obj reduced to node and returns how many keys it
// kept, so a parent can drop objects where nothing was selected.
func writeSelected(b *bytes.Buffer, obj gjson.Result, node *fieldNode) int {
	n := 0
	seen := map[string]bool{}
	b.WriteByte('{')
	obj.ForEach(func(k, v gjson.Result) bool {
		child, ok := node.kids[k.Str]
		if !ok || seen[k.Str] {
			return true // first occurrence wins, like gjson lookups
		}
		seen[k.Str] = true
		mark := b.Len()
		if n > 0 {
			b.WriteByte(',')
		}
		b.WriteString(k.Raw)
		b.WriteByte(':')
		switch {
		case child.all:
			b.WriteString(v.Raw)
		case v.IsObject() && writeSelected(b, v, child) > 0:
		default:
			b.Truncate(mark)
			return true
		}
		n++
		return true
	})
	b.WriteByte('}')
	return n
}
