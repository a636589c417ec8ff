#!/bin/sh
# patchagent postinstall, shared by the deb and the rpm.
#   deb: configure [<old-version>] (empty old-version: first install)
#        abort-upgrade|abort-remove|abort-deconfigure: nothing to undo
#   rpm: $1 = 1 (first install) or 2 (upgrade)
#
# First install: the daemon is enabled (never started) only when systemd is
# 239 or newer and /etc/patchagent/config.yaml passes `patchagent
# check-config`. The shipped config leaves app.name empty, so on a fresh
# install nothing is enabled and nothing can crash-loop; the operator sets
# app.name, then runs `systemctl enable --now patchagent.service`.
# systemd 239 is the oldest the units work with: older ones do not know
# SystemCallFilter=@system-service, ignore it ("Unknown system call group")
# and leave the daemon only the @default system calls, so it cannot even
# open a socket (Amazon Linux 2 and CentOS 7 have 219, Ubuntu 18.04 237).
# Reinstall after a removal: preremove recorded in
# /var/lib/patchagent/enabled-units which units were enabled; exactly those
# are enabled again (the daemon on the same conditions as a first install),
# and the record is deleted. dpkg gives a reinstall after remove (not purge)
# as `configure <old-version>`, like an upgrade: the record tells them apart.
# Upgrade: try-restart (restarts the daemon only if it is running), once no
# phase runs (the phase lock is free).
# patchagent-reconcile.service is never enabled here unless it was before a
# removal: it is the boot step for nodes that do not run the daemon (see
# patchagent(8)).
#
# The config is the operator's: created (0600 root) from the template
# /usr/share/patchagent/config.yaml only when absent, never replaced, so an
# upgrade never stops on a conffile question, and no package owns it, so a
# removal (rpm -e included) leaves it as it is. patchagent 0.1.0's rpm did
# own it (%config(noreplace)): erasing that one renamed an edited config
# config.yaml.rpmsave, which is put back here (and in posttrans.sh, for an
# upgrade from 0.1.0, where rpm erases the old copy after this script ran).
#
# Every systemctl call is skipped when systemd is not running (chroots,
# containers, image builds). PATCHAGENT_SYSTEMD_DIR replaces
# /run/systemd/system in that check, PATCHAGENT_CONFIG and
# PATCHAGENT_CONFIG_TEMPLATE the config's and the template's paths,
# PATCHAGENT_ENABLED_UNITS /var/lib/patchagent/enabled-units,
# PATCHAGENT_STATE_DIR the state directory (else daemon.state_dir, as
# check-config prints it), PATCHAGENT_LOCK_WAIT the 1800 s wait for the
# phase lock; they exist for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
config=${PATCHAGENT_CONFIG:-/etc/patchagent/config.yaml}
template=${PATCHAGENT_CONFIG_TEMPLATE:-/usr/share/patchagent/config.yaml}
enabled_units=${PATCHAGENT_ENABLED_UNITS:-/var/lib/patchagent/enabled-units}

case "$1" in
configure)
	if [ -z "${2:-}" ]; then action=install; else action=upgrade; fi
	;;
1) action=install ;;
2) action=upgrade ;;
*) exit 0 ;;
esac

if [ ! -e "$config" ] && [ ! -L "$config" ]; then
	mkdir -p "${config%/*}"
	if [ -f "$config.rpmsave" ] && [ ! -L "$config.rpmsave" ]; then
		mv -f "$config.rpmsave" "$config"
		echo "patchagent: restored $config from $config.rpmsave (the rpm of patchagent 0.1.0 saved it there when it was removed)" >&2
	else
		tmp="$config.patchagent-new"
		rm -f "$tmp"
		(umask 077 && cp "$template" "$tmp")
		mv -f "$tmp" "$config"
		echo "patchagent: created $config from $template" >&2
	fi
fi

[ -d "$systemd_dir" ] || exit 0

systemctl daemon-reload >/dev/null 2>&1 || :

if [ -f "$enabled_units" ]; then action=reinstall; fi

# systemd_new_enough says whether systemd is 239 or newer, and why not
# when it is not. A version it cannot read does not stop anything.
systemd_new_enough() {
	v=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p')
	if [ -n "$v" ] && [ "$v" -lt 239 ]; then
		echo "patchagent: not enabled: systemd $v is older than 239, the oldest patchagent supports (its units need SystemCallFilter=@system-service): upgrade the node's OS (e.g. RHEL 8, Ubuntu 20.04, Debian 10, Amazon Linux 2023 or newer)" >&2
		return 1
	fi
}

# enable_daemon enables the daemon once the config passes check-config on
# this node, else says what to do; $1, if any, is said once it is enabled.
enable_daemon() {
	if problems=$(patchagent check-config --config "$config" 2>&1 >/dev/null); then
		systemctl enable patchagent.service || :
		if [ -n "${1:-}" ]; then echo "patchagent: $1" >&2; fi
	else
		echo "patchagent: not enabled: $config is not ready on this node (set app.name first; 'patchagent check-config' says what else), then run 'systemctl enable --now patchagent.service':" >&2
		printf '%s\n' "$problems" | sed 's/^/  /' >&2
	fi
}

case "$action" in
install)
	if systemd_new_enough; then enable_daemon; fi
	;;
reinstall)
	if [ -s "$enabled_units" ] && systemd_new_enough; then
		while read -r unit; do
			case "$unit" in
			patchagent.service) enable_daemon "patchagent.service enabled again, as it was before the removal; not started: 'systemctl start patchagent.service' starts it" ;;
			patchagent-reconcile.service) systemctl enable patchagent-reconcile.service || : ;;
			esac
		done <"$enabled_units"
	fi
	rm -f "$enabled_units"
	;;
upgrade)
	# A restart kills a phase the daemon runs (npm mid-update): wait for
	# the phase lock first, as long as post may take (30 min), and leave
	# the old daemon running if it is still held. check-config prints a
	# valid config's values even when the node lacks what it names.
	state_dir=${PATCHAGENT_STATE_DIR:-}
	if [ -z "$state_dir" ]; then
		state_dir=$(patchagent check-config --config "$config" 2>/dev/null | sed -n 's/^ *state_dir: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | head -n 1) || :
		if [ -z "$state_dir" ]; then
			echo "patchagent: $config is not valid ('patchagent check-config' says why): the phase lock is looked for in /var/lib/patchagent, the default" >&2
		fi
	fi
	lock=${state_dir:-/var/lib/patchagent}/phase.lock
	if command -v flock >/dev/null 2>&1 && [ -e "$lock" ] &&
		! flock -w "${PATCHAGENT_LOCK_WAIT:-1800}" "$lock" true; then
		echo "patchagent: a patchagent phase still runs: the daemon is not restarted; run 'systemctl restart patchagent.service' once it ends" >&2
		exit 0
	fi
	systemctl try-restart patchagent.service || :
	;;
esac
exit 0
