#!/bin/sh
# patchagent postinstall, shared by the deb and the rpm.
#   deb: configure [<old-version>] (empty old-version: first install)
#        abort-upgrade|abort-remove|abort-deconfigure: nothing to undo
#   rpm: $1 = 1 (first install) or 2 (upgrade)
#
# First install: the daemon is enabled (never started) only when
# /etc/patchagent/config.yaml passes `patchagent check-config`. The shipped
# config leaves app.name empty, so on a fresh install nothing is enabled and
# nothing can crash-loop; the operator sets app.name, then runs
# `systemctl enable --now patchagent.service`.
# Upgrade: try-restart (restarts the daemon only if it is running), once no
# phase runs (the phase lock is free).
# patchagent-reconcile.service is never enabled here: it is the boot step
# for nodes that do not run the daemon (see patchagent(8)).
#
# The config is the operator's: created (0600 root) from the template
# /usr/share/patchagent/config.yaml only when absent, never replaced, so an
# upgrade never stops on a conffile question (the deb ships the template
# only; the rpm ships the config as %config(noreplace), already there).
#
# Every systemctl call is skipped when systemd is not running (chroots,
# containers, image builds). PATCHAGENT_SYSTEMD_DIR replaces
# /run/systemd/system in that check, PATCHAGENT_CONFIG and
# PATCHAGENT_CONFIG_TEMPLATE the config's and the template's paths,
# PATCHAGENT_STATE_DIR the state directory (else daemon.state_dir, as
# check-config prints it), PATCHAGENT_LOCK_WAIT the 1800 s
# wait for the phase lock; they exist for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
config=${PATCHAGENT_CONFIG:-/etc/patchagent/config.yaml}
template=${PATCHAGENT_CONFIG_TEMPLATE:-/usr/share/patchagent/config.yaml}

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
	tmp="$config.patchagent-new"
	rm -f "$tmp"
	(umask 077 && cp "$template" "$tmp")
	mv -f "$tmp" "$config"
	echo "patchagent: created $config from $template" >&2
fi

[ -d "$systemd_dir" ] || exit 0

systemctl daemon-reload >/dev/null 2>&1 || :

case "$action" in
install)
	if problems=$(patchagent check-config --config "$config" 2>&1 >/dev/null); then
		systemctl enable patchagent.service || :
	else
		echo "patchagent: not enabled: $config is not ready on this node (set app.name first; 'patchagent check-config' says what else), then run 'systemctl enable --now patchagent.service':" >&2
		printf '%s\n' "$problems" | sed 's/^/  /' >&2
	fi
	;;
upgrade)
	# A restart kills a phase the daemon runs (npm mid-update): wait for
	# the phase lock first, as long as post may take (30 min), and leave
	# the old daemon running if it is still held.
	state_dir=${PATCHAGENT_STATE_DIR:-}
	if [ -z "$state_dir" ]; then
		state_dir=$(patchagent check-config --config "$config" 2>/dev/null | sed -n 's/^ *state_dir: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | head -n 1) || :
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
