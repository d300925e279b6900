#!/usr/bin/env bash
# Installs Pebble, Let's Encrypt's test ACME CA (the CA of
# integration/acme_test.go), into .cache/bin. Idempotent: a binary of the
# pinned version is kept. Prints the pebble binary's path.
set -euo pipefail

PEBBLE_VERSION=v2.10.1
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/.cache/bin
mkdir -p "$bin"

if ! { [[ -x $bin/pebble ]] && go version -m "$bin/pebble" 2>/dev/null | grep -q "github.com/letsencrypt/pebble/v2[[:space:]]*$PEBBLE_VERSION"; }; then
	echo "installing Pebble $PEBBLE_VERSION ..." >&2
	# Built as upstream builds it: no GOEXPERIMENT, no inherited GOFLAGS.
	GOEXPERIMENT='' GOFLAGS='' GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN=$bin \
		go install "github.com/letsencrypt/pebble/v2/cmd/pebble@$PEBBLE_VERSION" >&2
fi
echo "$bin/pebble"
