#!/usr/bin/env bash
# Benchmark Matrix homeservers with bench/hsbench and print a markdown table
# comparing them (all targets measured in the same run, on this machine).
#
# Run from the repo root:
#   bench/run.sh [target...]        targets: dendrite (default), edge
#   HSBENCH_FLAGS="-msgs 500 -wake 50" bench/run.sh dendrite edge
# Env: HSBENCH_FLAGS (extra hsbench flags), EDGE_BIN (default ./bin/edge),
# SETTLE (seconds before idle RSS is read), KEEP_DATA=1 (reuse server state),
# DENDRITE_PORT / EDGE_PORT (loopback ports, default 18008 / 18009).
#
# Everything lives under .cache/ (binaries in .cache/bin, server state and
# results in .cache/bench); server state is wiped per run unless KEEP_DATA=1.
set -euo pipefail

[[ -f go.mod && -d bench/hsbench ]] || { echo "run from the repo root" >&2; exit 2; }

DENDRITE_VERSION=$(sed -n 's/^DENDRITE_VERSION=//p' scripts/dendrite.sh)
SETTLE=${SETTLE:-5}              # seconds after /versions answers before idle RSS is read
EDGE_BIN=${EDGE_BIN:-./bin/edge}
HSBENCH_FLAGS=${HSBENCH_FLAGS:-}
targets=("$@")
((${#targets[@]})) || targets=(dendrite)

root=$PWD
bin=$root/.cache/bin
work=$root/.cache/bench
results=$work/results
export GOTOOLCHAIN=local GOEXPERIMENT=jsonv2
mkdir -p "$bin" "$results"
command -v curl >/dev/null || { echo "curl is required" >&2; exit 2; }

pid=
stop_server() {
	[[ -n $pid ]] || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	kill -KILL "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	pid=
}
trap stop_server EXIT

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

# wait_up URL LOG: wait for the client API to answer, failing early if the server died.
wait_up() {
	for _ in $(seq 240); do
		curl -fsS -o /dev/null "$1/_matrix/client/versions" 2>/dev/null && return 0
		kill -0 "$pid" 2>/dev/null || { echo "server exited; last log lines:" >&2; tail -20 "$2" >&2; return 1; }
		sleep 0.25
	done
	echo "server did not answer $1 within 60s" >&2
	return 1
}

port_free() {
	if curl -s -o /dev/null "http://127.0.0.1:$1/"; then
		echo "something already listens on 127.0.0.1:$1" >&2
		return 1
	fi
}

# --- dendrite ---------------------------------------------------------------

install_dendrite() {
	# Shared with `make test` (integration/dendrite_test.go federates with it).
	scripts/dendrite.sh >/dev/null
}

# setup_dendrite DIR PORT: fresh keys, databases and config.
#
# Config = `generate-config` defaults (sqlite per component, file log at info
# level, presence off) with these changes, checked below:
#   client_api.registration_disabled: false  (plus the -really-enable-open-registration
#                                             flag, which Dendrite requires for open
#                                             registration without captcha; it has no
#                                             config key for it)
#   client_api.rate_limiting.enabled: false  (measure throughput, not the limiter)
#   federation_api.key_perspectives: []      (no outbound lookups to matrix.org)
setup_dendrite() {
	local dir=$1
	[[ ${KEEP_DATA:-} == 1 && -f $dir/dendrite.yaml ]] && return 0
	rm -rf "$dir"
	mkdir -p "$dir"
	"$bin/generate-keys" --private-key "$dir/matrix_key.pem" >/dev/null || return 1
	"$bin/generate-config" -dir "$dir" -server localhost |
		sed -e 's/^  registration_disabled: true$/  registration_disabled: false/' \
			-e '/^  rate_limiting:$/,/^    enabled:/ s/^    enabled: true$/    enabled: false/' \
			-e '/^  key_perspectives:$/,/^  prefer_direct_fetch:/ { /^  key_perspectives:$/ s/$/ []/; /^  - \|^    /d }' \
			>"$dir/dendrite.yaml"
	local want
	for want in '  registration_disabled: false' '  enable_registration_captcha: false' \
		'  key_perspectives: []' '  server_name: localhost'; do
		grep -qxF "$want" "$dir/dendrite.yaml" || { echo "dendrite config: missing '$want'" >&2; return 1; }
	done
	grep -A1 -x '  rate_limiting:' "$dir/dendrite.yaml" | grep -qx '    enabled: false' ||
		{ echo "dendrite config: rate limiting still on" >&2; return 1; }
}

start_dendrite() {
	local dir=$1 port=$2
	install_dendrite && setup_dendrite "$dir" || return 1
	binary=$bin/dendrite
	(cd "$dir" && exec "$bin/dendrite" -config dendrite.yaml -http-bind-address "127.0.0.1:$port" \
		-really-enable-open-registration) >"$dir/stdout.log" 2>&1 &
	pid=$!
	log=$dir/stdout.log
}

# --- edge (PROVISIONAL) -----------------------------------------------------
# The edge CLI does not exist yet; this follows the agreed interface:
#   ./bin/edge init --server-name localhost --dir DIR --listen 127.0.0.1:PORT
#   ./bin/edge run -c DIR/edge.yaml
# Revisit once it lands (registration mode, rate limits, log level).

start_edge() {
	local dir=$1 port=$2
	if ! binary=$(realpath "$EDGE_BIN" 2>/dev/null) || [[ ! -x $binary ]]; then
		echo "edge: $EDGE_BIN not found; build it first" >&2
		return 1
	fi
	if [[ ${KEEP_DATA:-} != 1 || ! -f $dir/edge.yaml ]]; then
		rm -rf "$dir"
		mkdir -p "$dir"
		"$binary" init --server-name localhost --dir "$dir" --listen "127.0.0.1:$port" || return 1
		# Same policy as for Dendrite: rate limits off ("a rate of 0 switches that limit off").
		sed -i -E 's/^(  [a-z]+_per_second:) .*/\1 0/' "$dir/edge.yaml"
		if grep -qE '^  [a-z]+_per_second: [^0]' "$dir/edge.yaml"; then
			echo "edge config: rate limits still on" >&2
			return 1
		fi
	fi
	"$binary" run -c "$dir/edge.yaml" >"$dir/stdout.log" 2>&1 &
	pid=$!
	log=$dir/stdout.log
}

# --- driver -----------------------------------------------------------------

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
echo "building hsbench ..."
go build -o "$bin/hsbench" ./bench/hsbench

declare -A ports=([dendrite]=${DENDRITE_PORT:-18008} [edge]=${EDGE_PORT:-18009})
files=() failed=()
for target in "${targets[@]}"; do
	port=${ports[$target]:-}
	[[ -n $port ]] || { echo "unknown target $target" >&2; failed+=("$target"); continue; }
	echo "== $target"
	dir=$work/$target
	rm -f "$results/$target.json"
	if ! port_free "$port" || ! "start_$target" "$dir" "$port" || ! wait_up "http://127.0.0.1:$port" "$log"; then
		stop_server
		failed+=("$target")
		continue
	fi
	sleep "$SETTLE"
	idle_kib=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
	# shellcheck disable=SC2086 # HSBENCH_FLAGS is meant to split into flags
	"$bin/hsbench" -url "http://127.0.0.1:$port" -json -label "$target" -pid "$pid" \
		-meta "idle RSS (MiB)=$(mib $((idle_kib * 1024)))" \
		-meta "binary size (MiB)=$(mib "$(stat -c %s "$binary")")" \
		$HSBENCH_FLAGS >"$results/$target.json" || failed+=("$target")
	stop_server
	[[ -s $results/$target.json ]] && files+=("$results/$target.json")
done

echo
echo "## Homeserver benchmark"
echo
echo "- command: \`${HSBENCH_FLAGS:+HSBENCH_FLAGS=\"$HSBENCH_FLAGS\" }bench/run.sh ${targets[*]}\`"
echo "- machine: $(uname -m), $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(go env GOVERSION)"
echo "- date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "- load average (1/5/15 min) at start: $load_start, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- hsbench runs on the same machine as the server (shares its CPUs); all on loopback"
[[ " ${targets[*]} " == *" dendrite "* ]] &&
	echo "- dendrite: $DENDRITE_VERSION, sqlite, rate limiting disabled, open registration (-really-enable-open-registration)"
[[ " ${targets[*]} " == *" edge "* ]] &&
	echo "- edge: $EDGE_BIN ($("$EDGE_BIN" version 2>/dev/null || echo "version unknown")), rate limits set to 0, provisional start-up (see bench/run.sh)"
echo
((${#files[@]})) && "$bin/hsbench" -report "${files[@]}" | tee "$results/report.md"
if ((${#failed[@]})); then
	echo
	echo "failed: ${failed[*]} (see $work/<target>/stdout.log)"
	exit 1
fi
