#!/bin/sh
# patchagent preremove, shared by the deb and the rpm.
#   deb: remove | upgrade <new-version> | deconfigure | failed-upgrade
#   rpm: $1 = 0 (erase) or 1 (upgrade: the new version's postinstall
#        try-restarts the daemon, nothing to do here)
# On removal both units are stopped and disabled (the reconcile unit may
# have been enabled by the operator). The state in /var/lib/patchagent is
# kept: an open patch cycle is still recorded there.
#
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system in the "is systemd
# running" check; it exists for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}

case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac

[ -d "$systemd_dir" ] || exit 0

systemctl stop patchagent.service patchagent-reconcile.service || :
systemctl disable patchagent.service patchagent-reconcile.service || :
exit 0
