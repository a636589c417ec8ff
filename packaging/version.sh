#!/bin/sh
# Prints the package version (no leading "v", no release), from the newest
# release in changelog.yml, <release> below, and git:
#   HEAD tagged v<release>        -> <release>
#   <N> commits after v<release>  -> <release>+<N>.g<hash>
#                                    (sorts after <release> in dpkg and rpm)
#   v<release> not tagged (yet)   -> <release>~git<commits>.g<hash>
#                                    (0.1.0~git221.g6378991: sorts before
#                                    <release> in dpkg and rpm >= 4.10, so the
#                                    release, once built, upgrades a build
#                                    made on the way to it)
# and ".dirty" appended when tracked files are modified.
set -eu
cd "$(dirname "$0")/.."
dirty=""
if ! git diff --quiet HEAD -- 2>/dev/null; then dirty=".dirty"; fi
release=$(sed -n 's/^- semver: \([0-9][^-[:space:]]*\).*/\1/p' packaging/changelog.yml | head -n 1)
release=${release:-0.0.0}
# --match names the release's own tag: only it, reachable from HEAD, makes
# this build the release or one after it.
if d=$(git describe --tags --match "v$release" 2>/dev/null); then
	echo "$(echo "${d#v}" | sed 's/-\([0-9]*\)-g\([0-9a-f]*\)$/+\1.g\2/')${dirty}"
else
	echo "${release}~git$(git rev-list --count HEAD).g$(git rev-parse --short HEAD)${dirty}"
fi
