#!/bin/sh
# Prints the package version (no leading "v", no release) from git describe:
#   v1.2.3            -> 1.2.3
#   v1.2.3-4-gabc1234 -> 1.2.3+4.gabc1234   (sorts after 1.2.3 in dpkg and rpm)
#   no v* tag         -> <newest changelog release>+git<commit count>.g<short hash>
#                        (0.1.0+git221.g6378991: the changelog names it)
# and ".dirty" appended when tracked files are modified.
set -eu
cd "$(dirname "$0")/.."
dirty=""
if ! git diff --quiet HEAD -- 2>/dev/null; then dirty=".dirty"; fi
if d=$(git describe --tags --match 'v[0-9]*' 2>/dev/null); then
	echo "${d#v}${dirty}" | sed 's/-\([0-9]*\)-g\([0-9a-f]*\)/+\1.g\2/'
else
	release=$(sed -n 's/^- semver: \([0-9][^-[:space:]]*\).*/\1/p' packaging/changelog.yml | head -n 1)
	echo "${release:-0.0.0}+git$(git rev-list --count HEAD).g$(git rev-parse --short HEAD)${dirty}"
fi
