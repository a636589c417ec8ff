#!/bin/sh
# patchagent postremove, shared by the deb and the rpm.
#   deb: remove | purge | upgrade <new-version> | failed-upgrade |
#        abort-install | abort-upgrade | disappear
#   rpm: $1 = 0 (erase) or 1 (upgrade)
# systemd re-reads its units after every removal. Only a deb purge deletes
# the state directory /var/lib/patchagent (the state file of an open patch
# cycle, dependency snapshots, the units to enable on a reinstall) and the
# config postinst created, /etc/patchagent/config.yaml; remove and rpm
# erase keep both as they are (no package owns the config).
#
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system in the "is systemd
# running" check; it exists for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}

if [ -d "$systemd_dir" ]; then
	systemctl daemon-reload >/dev/null 2>&1 || :
fi

if [ "$1" = purge ]; then
	rm -rf /var/lib/patchagent
	rm -f /etc/patchagent/config.yaml
	rmdir /etc/patchagent 2>/dev/null || :
fi
exit 0
