#!/bin/sh
# Installs what patchagent's tests, demo and benchmarks need on Debian 12,
# as root. Idempotent: installs only what is missing.
set -eu

if [ "$(id -u)" != 0 ]; then
	echo "setup: run as root (the tests create network namespaces and firewall rules in them)" >&2
	exit 1
fi
if ! command -v go >/dev/null 2>&1; then
	echo "setup: the Go toolchain (go 1.26) is required and not on PATH" >&2
	exit 1
fi

need=""
command -v iptables >/dev/null 2>&1 || need="$need iptables"
command -v ip6tables >/dev/null 2>&1 || need="$need iptables"
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v ss >/dev/null 2>&1 || need="$need iproute2"
command -v node >/dev/null 2>&1 || need="$need nodejs"
command -v npm >/dev/null 2>&1 || need="$need npm"
command -v git >/dev/null 2>&1 || need="$need git"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v lintian >/dev/null 2>&1 || need="$need lintian"
command -v rpm >/dev/null 2>&1 || need="$need rpm"
# The signed-package test: a throwaway key (gpg), the deb's debsigs
# signature checked by debsig-verify, the rpm's by rpm -K.
command -v gpg >/dev/null 2>&1 || need="$need gnupg"
command -v debsig-verify >/dev/null 2>&1 || need="$need debsig-verify"
# The generated zsh completion is checked with zsh -n.
command -v zsh >/dev/null 2>&1 || need="$need zsh"
# The load-balancer tests run a real HAProxy in the network namespaces they make.
command -v haproxy >/dev/null 2>&1 || need="$need haproxy"
# An app user only the name services know (LDAP, SSSD): the e2e test looks
# one up through a real NSS module, libnss-extrausers.
[ -e /usr/lib/libnss_extrausers.so.2 ] || need="$need libnss-extrausers"
# The real-node test (deploy/testbed/node): a Debian root booted with systemd-nspawn.
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v systemd-nspawn >/dev/null 2>&1 || need="$need systemd-container"
if [ -n "$need" ]; then
	echo "setup: installing$need"
	apt-get update -qq
	# shellcheck disable=SC2086 # word splitting of the package list is intended
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
# promtool ('promtool check metrics', 'promtool test rules') and prometheus
# (the real-node test scrapes the daemon with it): only the binaries, taken
# out of Debian's prometheus package into .cache/bin (where the tests look
# after PATH). Installing the package instead pulls ~100 MB of web UI, adds a
# system user and, under systemd, enables and starts a server on :9090.
cache="$(cd "$(dirname "$0")/.." && pwd)/.cache"
if [ ! -x "$cache/bin/promtool" ] || [ ! -x "$cache/bin/prometheus" ]; then
	echo "setup: extracting promtool and prometheus from Debian's prometheus package into $cache/bin"
	tmp=$(mktemp -d)
	chown _apt "$tmp" # apt-get download drops to _apt
	apt-get update -qq
	(cd "$tmp" && apt-get download -qq prometheus)
	dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
	mkdir -p "$cache/bin"
	cp "$tmp/x/usr/bin/promtool" "$tmp/x/usr/bin/prometheus" "$cache/bin/"
	rm -rf "$tmp"
fi
# nf_tables and the REJECT target are kernel modules; iptables loads them on
# first use. Fail early and clearly when the kernel cannot.
if ! ip netns list >/dev/null 2>&1; then
	echo "setup: 'ip netns' does not work here: network namespaces are required" >&2
	exit 1
fi
echo "setup: ok ($(iptables --version), node $(node --version), npm $(npm --version), $(go version | cut -d' ' -f3))"
