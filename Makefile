# edge: a Matrix homeserver in one static binary.
#
#   make run     build, create ./data/edge.yaml on first use, serve on [::]:8008
#   make test    every test (unit, integration, riscv64 smoke under qemu)
#   make bench   benchmarks, side by side with Dendrite
#   make cross   static binaries for linux/amd64, arm64, riscv64

# mautrix-go's PDU and auth-rule packages use encoding/json/v2, which Go
# 1.26 ships behind this experiment (Go 1.27 has it on by default).
export GOEXPERIMENT := jsonv2
export CGO_ENABLED := 0

GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X edge/edge.Version=$(VERSION)
ARCHES  := amd64 arm64 riscv64
PKGS    := ./...

.PHONY: build run test unit lint smoke-riscv64 cross bench deps dendrite pebble complement-image clean

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/edge ./cmd/edge

run: build
	@test -f data/edge.yaml || ./bin/edge init --server-name localhost --dir data
	./bin/edge run -c data/edge.yaml

test: lint unit smoke-riscv64

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet -tags goolm $(PKGS)
	cd bench/stateres && $(GO) vet ./...

# integration/dendrite_test.go federates with a real Dendrite: it fails
# (never skips) when EDGE_DENDRITE_BIN does not name one.
# integration/acme_test.go likewise needs Pebble (EDGE_PEBBLE_BIN).
unit: dendrite pebble
	EDGE_DENDRITE_BIN=$(CURDIR)/.cache/bin/dendrite EDGE_PEBBLE_BIN=$(CURDIR)/.cache/bin/pebble $(GO) test -tags goolm -count=1 -timeout 20m $(PKGS)
	@# edge's state resolution gives gomatrixserverlib's answer on a 10k-member
	@# forked room (a module of its own, so gomatrixserverlib stays out of go.mod).
	cd bench/stateres && $(GO) test -count=1 -run TestSameResolvedState .

cross:
	@mkdir -p dist
	@for arch in $(ARCHES); do \
	  echo "linux/$$arch"; \
	  GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/edge-linux-$$arch ./cmd/edge || exit 1; \
	done
	@ls -l dist

# The K1 board is riscv64: run the cross-built binary under qemu user
# emulation and drive it over loopback.
smoke-riscv64: deps
	@mkdir -p dist
	GOOS=linux GOARCH=riscv64 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o dist/edge-linux-riscv64 ./cmd/edge
	$(GO) run ./integration/smoke -binary dist/edge-linux-riscv64 -qemu "$$(scripts/find-qemu.sh riscv64)"

deps: dendrite pebble
	@scripts/deps.sh

pebble:
	@scripts/pebble.sh >/dev/null

dendrite:
	@scripts/dendrite.sh >/dev/null

bench: build
	$(GO) test -tags goolm -run XXX -bench . -benchtime 2000x ./edge/room/
	$(GO) test -run XXX -bench . -benchtime 200x ./edge/store/
	$(GO) test -tags goolm -run XXX -bench SendWake -benchtime 2000x ./integration/
	$(GO) test -tags goolm -run XXX -bench 'JoinLargeRoom|PartialJoinFirstEvent' -benchtime 1x -timeout 60m ./integration/
	cd bench/stateres && $(GO) test -run XXX -bench . -benchmem
	bench/run.sh dendrite edge

# The image Complement (the Matrix conformance suite) tests: FROM scratch,
# the static binary and docker/complement/*. See docs/complement.md.
COMPLEMENT_IMAGE ?= complement-edge:latest
complement-image: build
	rm -rf .cache/complement-image && mkdir -p .cache/complement-image/tmp
	chmod 1777 .cache/complement-image/tmp
	cp bin/edge docker/complement/edge.yaml docker/complement/nsswitch.conf .cache/complement-image/
	docker build -t $(COMPLEMENT_IMAGE) -f docker/complement/Dockerfile .cache/complement-image

clean:
	rm -rf bin dist
