#!/bin/sh
# SSM Distributor "uninstall" action for patchagent. Removes the package
# (dpkg -r / rpm -e); /etc/patchagent/config.yaml (the operator's file,
# which no package owns: rpm -e leaves it as it is, no .rpmsave) and the
# state in /var/lib/patchagent stay. Before removing, it records which
# patchagent units are enabled/active in
# /var/lib/patchagent/distributor-units, for install.sh to restore on
# "Uninstall and reinstall". dpkg is run again every second while another
# process (unattended-upgrades, cloud-init at first boot) holds the dpkg
# lock, for up to 600 s; rpm waits for its lock itself.
#
# Exit codes: 0 removed or not installed; 1 the package manager failed.
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system, PATCHAGENT_STATE_DIR
# /var/lib/patchagent and PATCHAGENT_DPKG_LOCK_WAIT the 600 s (tests only).
set -u

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
units_file=${PATCHAGENT_STATE_DIR:-/var/lib/patchagent}/distributor-units
lock_wait=${PATCHAGENT_DPKG_LOCK_WAIT:-600}

# dpkg_waiting: dpkg, again while another process holds its lock.
. "$(dirname "$0")/dpkgwait.sh"

if command -v dpkg-query >/dev/null 2>&1 && dpkg-query -W -f='${Status}' patchagent 2>/dev/null | grep -q ' installed$'; then
	manager=dpkg
elif command -v rpm >/dev/null 2>&1 && rpm -q patchagent >/dev/null 2>&1; then
	manager=rpm
else
	echo "uninstall.sh: patchagent is not installed"
	exit 0
fi

if [ -d "$systemd_dir" ]; then
	mkdir -p "$(dirname "$units_file")"
	: >"$units_file"
	for unit in patchagent.service patchagent-reconcile.service; do
		if systemctl is-enabled --quiet "$unit" 2>/dev/null; then echo "$unit enabled" >>"$units_file"; fi
		if systemctl is-active --quiet "$unit" 2>/dev/null; then echo "$unit active" >>"$units_file"; fi
	done
fi

case "$manager" in
dpkg)
	echo "uninstall.sh: dpkg -r patchagent"
	dpkg_waiting -r patchagent || { echo "uninstall.sh: dpkg -r patchagent failed" >&2; exit 1; }
	;;
rpm)
	echo "uninstall.sh: rpm -e patchagent"
	rpm -e patchagent || { echo "uninstall.sh: rpm -e patchagent failed" >&2; exit 1; }
	;;
esac
exit 0
