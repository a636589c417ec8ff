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
# Upgrade: try-restart (restarts the daemon only if it is running).
# patchagent-reconcile.service is never enabled here: it is the boot step
# for nodes that do not run the daemon (see patchagent(8)).
#
# Every systemctl call is skipped when systemd is not running (chroots,
# containers, image builds). PATCHAGENT_SYSTEMD_DIR replaces
# /run/systemd/system in that check; it exists for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
config=/etc/patchagent/config.yaml

case "$1" in
configure)
	if [ -z "${2:-}" ]; then action=install; else action=upgrade; fi
	;;
1) action=install ;;
2) action=upgrade ;;
*) exit 0 ;;
esac

[ -d "$systemd_dir" ] || exit 0

systemctl daemon-reload >/dev/null 2>&1 || :

case "$action" in
install)
	if patchagent check-config --config "$config" >/dev/null 2>&1; then
		systemctl enable patchagent.service || :
	else
		echo "patchagent: not enabled: set app.name in $config (check it with 'patchagent check-config'), then run 'systemctl enable --now patchagent.service'" >&2
	fi
	;;
upgrade)
	systemctl try-restart patchagent.service || :
	;;
esac
exit 0
