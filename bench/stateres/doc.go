// Package stateres benchmarks edge's state resolution against
// gomatrixserverlib's, the resolver Dendrite v0.13.8 runs, on one synthetic
// input. It is a module of its own so that gomatrixserverlib stays out of
// edge's go.mod: run it with `cd bench/stateres && go test -bench .`.
package stateres
