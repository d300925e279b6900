#!/usr/bin/env bash
# Installs Dendrite (the interop peer of integration/dendrite_test.go and
# the baseline of bench/run.sh) into .cache/bin. Idempotent: a binary of
# the pinned version is kept. Prints the dendrite binary's path.
#
#   scripts/dendrite.sh            dendrite, generate-keys, generate-config
# Env: DENDRITE_CGO=0|1 (default: 1 when a C compiler is found; cgo links
# Dendrite's SQLite as upstream ships it, without cgo it uses its pure-Go
# SQLite, which is all a clean CI machine may have).
set -euo pipefail

DENDRITE_VERSION=v0.13.8
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.cache/bin
mkdir -p "$bin"

cgo=${DENDRITE_CGO:-}
if [[ -z $cgo ]]; then
	if command -v "${CC:-cc}" >/dev/null 2>&1; then cgo=1; else cgo=0; fi
fi

missing=()
for t in dendrite generate-keys generate-config; do
	if [[ -x $bin/$t ]] && go version -m "$bin/$t" 2>/dev/null | grep "github.com/matrix-org/dendrite[[:space:]]*$DENDRITE_VERSION" >/dev/null; then
		continue
	fi
	missing+=("github.com/matrix-org/dendrite/cmd/$t@$DENDRITE_VERSION")
done
if ((${#missing[@]})); then
	echo "installing Dendrite $DENDRITE_VERSION (CGO_ENABLED=$cgo) ..." >&2
	t0=$SECONDS
	# Dendrite pins its own dependencies and is built as upstream builds it:
	# no GOEXPERIMENT (the Makefile's jsonv2 would swap encoding/json's
	# internals under it), no inherited GOFLAGS, the local toolchain.
	GOEXPERIMENT='' GOFLAGS='' GOTOOLCHAIN=local CGO_ENABLED=$cgo GOBIN=$bin \
		go install "${missing[@]}" >&2
	echo "go install took $((SECONDS - t0))s" >&2
fi
echo "$bin/dendrite"
