#!/bin/sh
# Sourced by install.sh and uninstall.sh (in the same zip): needs
# $lock_wait, in seconds.
#
# dpkg_waiting runs dpkg with the arguments given, again every second while
# another process holds the dpkg lock, for up to $lock_wait seconds (dpkg
# has no wait of its own), then prints its output and returns its status.
dpkg_waiting() {
	waited=0
	while :; do
		out=$(LC_ALL=C dpkg "$@" 2>&1) && rc=0 || rc=$?
		case "$out" in
		*"locked by another process"*)
			if [ "$waited" -lt "$lock_wait" ]; then
				if [ "$waited" = 0 ]; then echo "${0##*/}: another process holds the dpkg lock: waiting for it, up to ${lock_wait}s" >&2; fi
				sleep 1
				waited=$((waited + 1))
				continue
			fi
			;;
		esac
		printf '%s\n' "$out"
		return "$rc"
	done
}
