# patchagent: `make demo` runs pre on the sandbox node under load; `make test`
# runs every test. Both set up what they need (as root, on Debian 12).

GO          ?= go
BIN         := bin/patchagent
# The package version (packaging/version.sh): `patchagent version` prints
# what the package is called.
VERSION     ?= $(shell sh packaging/version.sh 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
# The architectures packaged, in Go's names (nfpm names them amd64/arm64 in
# the deb, x86_64/aarch64 in the rpm).
ARCHES      := amd64 arm64
HOSTARCH    := $(shell $(GO) env GOARCH)
# Every file in the packages gets this mtime, so that building the same
# commit twice gives the same bytes.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
PATCHAGENT_SIGNING_KEY ?=
STATICCHECK := $(CURDIR)/.cache/bin/staticcheck
# nfpm builds the packages; v2.48.0 writes the rpm payload's cpio names
# relative (./usr/bin/...), as rpmbuild does: v2.45.2's absolute names made
# rpm2cpio | cpio -id (and rpmlint) write into /. Installed per version, so
# a bump takes effect.
NFPM_VERSION := v2.48.0
NFPM         := $(CURDIR)/.cache/nfpm-$(NFPM_VERSION)/nfpm
# Fuzz budgets are execution counts, about 10 s each here: a duration races
# the fuzz coordinator's own deadline in Go 1.26 and can fail a clean run with
# "context deadline exceeded" (go.dev/issue/75804, fixed in Go 1.27).
FUZZ_CONFIG  ?= 80000x
FUZZ_DIAG    ?= 300000x
FUZZ_REQUEST ?= 120000x

.PHONY: all build setup lint unit integration fuzz test demo bench fleet-bench clean package distributor nfpm-path

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/patchagent

# Installs what the tests and the demo need (iptables, iproute2, node/npm if
# missing). The pinned pm2 is installed by the sandbox itself.
setup:
	sh deploy/setup.sh

$(STATICCHECK):
	GOBIN=$(CURDIR)/.cache/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2

lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	$(STATICCHECK) ./...
	$(STATICCHECK) -tags integration ./...

unit:
	$(GO) test -race -count=1 ./...

# Real iptables in namespaces the tests create, a real Node.js app under real
# pm2, real npm against verdaccio, real sockets, and the built .deb on a
# Debian node booted with systemd-nspawn (deploy/testbed/node; its root is cached in
# /var/cache/patchagent-node). Packages run one at a time: they share the
# machine's CPU.
integration: package
	PATCHAGENT_E2E=1 $(GO) test -tags integration -count=1 -p 1 -timeout 25m ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(FUZZ_CONFIG) ./agent/
	$(GO) test -run '^$$' -fuzz '^FuzzParseDiag$$' -fuzztime $(FUZZ_DIAG) ./firewall/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRequest$$' -fuzztime $(FUZZ_REQUEST) ./agent/daemon/

test: setup lint unit integration fuzz

demo: setup build
	$(GO) run ./deploy/testbed/demo -patchagent $(BIN)

# Side-by-side figures: sock_diag vs ss vs /proc at 40,000 sockets; the app's
# own start-to-healthy time vs exit's start-to-service time; snapshot and
# restore vs a plain copy of a 100 MB tree; post vs a bare npm update; then
# patchagent vs the tutorial's scripts under load (bench-results/results.md);
# then the fleet bench (fleet-bench below).
bench: setup build
	$(GO) test -tags integration -run '^$$' -bench . -benchtime 20x -timeout 20m ./firewall/
	$(GO) test -run '^$$' -bench BenchmarkSnapshot -benchtime 3x -timeout 20m ./hooks/
	$(GO) test -tags integration -run '^$$' -bench BenchmarkExitToService -benchtime 5x -timeout 20m ./deploy/testbed/e2e/
	$(GO) test -tags integration -run '^$$' -bench BenchmarkPostOverhead -benchtime 3x -timeout 20m ./deploy/testbed/e2e/
	$(GO) run ./deploy/testbed/bench -n 3 -out bench-results -patchagent $(BIN)
	$(GO) run ./deploy/testbed/bench -fleet 4 -n 2 -out bench-results/fleet -patchagent $(BIN)

# Four sandbox nodes behind a real HAProxy, patched one at a time as SSM's
# rate control does, for the tutorial's scripts, patchagent's block alone,
# its readiness endpoint and HAProxy's runtime API, with and without a
# reboot: client errors, nodes in rotation over time (an SVG per rollout),
# each node's time out of rotation, the rollout's duration
# (bench-results/fleet/fleet.md).
fleet-bench: setup build
	$(GO) run ./deploy/testbed/bench -fleet 4 -n 2 -out bench-results/fleet -patchagent $(BIN)

# dist/patchagent_<version>_<arch>.deb and dist/patchagent-<version>.<arch>.rpm
# for each of ARCHES, from packaging/nfpm.yaml (nfpm NFPM_VERSION, installed
# into .cache when missing), the binaries in dist/<arch>/; the package version
# comes from packaging/version.sh, every mtime from SOURCE_DATE_EPOCH. With
# PATCHAGENT_SIGNING_KEY (an armored OpenPGP private key file; a passphrase
# in NFPM_PASSPHRASE) the packages are signed, else they are not, and it
# says so. The shell completions come from the binary built for this
# machine, which must be one of ARCHES.
package:
	for arch in $(ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/$$arch/patchagent ./cmd/patchagent || exit 1; \
	done
	gzip -9n -c packaging/man/patchagent.8 > dist/patchagent.8.gz
	dist/$(HOSTARCH)/patchagent completion bash > dist/patchagent.bash
	dist/$(HOSTARCH)/patchagent completion zsh > dist/_patchagent
	[ -x $(NFPM) ] || GOBIN=$(dir $(NFPM)) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)
	rm -f dist/patchagent_*.deb dist/patchagent-*.rpm
	for arch in $(ARCHES); do for format in deb rpm; do \
		GOARCH=$$arch PKG_VERSION=$(VERSION) PATCHAGENT_SIGNING_KEY=$(PATCHAGENT_SIGNING_KEY) $(NFPM) package -f packaging/nfpm.yaml -p $$format -t dist/ || exit 1; \
	done; done
	@if [ -n "$(PATCHAGENT_SIGNING_KEY)" ]; then echo "package: signed with $(PATCHAGENT_SIGNING_KEY)"; \
	else echo "package: the packages are UNSIGNED (set PATCHAGENT_SIGNING_KEY to an armored OpenPGP private key file to sign them)"; fi

# The SSM Distributor package in dist/distributor/: one zip per package
# format and arch (install.sh, uninstall.sh, the package) and manifest.json.
distributor: package
	$(GO) run ./packaging/distributor -dist dist -out dist/distributor -version $(VERSION)

clean:
	rm -rf bin .cache dist

# The nfpm binary package builds use (for the packaging tests).
nfpm-path:
	@echo $(NFPM)
