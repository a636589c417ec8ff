#!/bin/sh
# SSM Distributor "install" action for patchagent (AWS-ConfigureAWSPackage
# runs `sh install.sh` in the extracted zip). The zip holds one package: a
# .deb or an .rpm, installed with the package manager that resolves its
# dependencies (iptables): apt-get for the deb, dnf or yum for the rpm; only
# where none is there, dpkg -i or rpm -Uvh --replacepkgs, which install no
# dependency (they fail, saying which, if one is missing). Running it again
# is harmless. At first boot unattended-upgrades or cloud-init often holds
# the dpkg lock, and apt-get and dpkg fail at once by default: apt-get is
# told to wait for it (DPkg::Lock::Timeout, apt >= 1.9.11; older apt sets
# an -o option it does not know and ignores it), dpkg is run again every
# second while the lock is held, both for up to 600 s. dnf, yum and rpm
# wait for their locks themselves. The package's own scripts enable the
# daemon only once /etc/patchagent/config.yaml is valid (see patchagent(8)).
#
# With installationType "Uninstall and reinstall", uninstall.sh records which
# patchagent units were enabled/active; they are restored here, so a
# reinstall does not leave a configured node without its daemon.
#
# Exit codes: 0 installed; 1 the package manager failed; 2 this zip's
# package or its package manager is missing (wrong platform).
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system, PATCHAGENT_STATE_DIR
# /var/lib/patchagent and PATCHAGENT_DPKG_LOCK_WAIT the 600 s (tests only).
set -u
cd "$(dirname "$0")" || exit 2

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
units_file=${PATCHAGENT_STATE_DIR:-/var/lib/patchagent}/distributor-units
lock_wait=${PATCHAGENT_DPKG_LOCK_WAIT:-600}

deb=""
rpm=""
for f in patchagent_*.deb; do [ -f "$f" ] && deb=$f; done
for f in patchagent-*.rpm; do [ -f "$f" ] && rpm=$f; done
# run runs the install command given, saying it, and exits 1 if it fails.
run() {
	echo "install.sh: $*"
	"$@" || { echo "install.sh: '$*' failed (exit $?): see its output above" >&2; exit 1; }
}
# dpkg_waiting: dpkg, again while another process holds its lock.
. ./dpkgwait.sh

if [ -n "$deb" ]; then
	if command -v apt-get >/dev/null 2>&1; then
		DEBIAN_FRONTEND=noninteractive
		export DEBIAN_FRONTEND
		run apt-get -o DPkg::Lock::Timeout="$lock_wait" install -y -q "./$deb"
	elif command -v dpkg >/dev/null 2>&1; then
		echo "install.sh: apt-get not found: dpkg -i installs no dependency (patchagent needs iptables)" >&2
		echo "install.sh: dpkg -i $deb"
		dpkg_waiting -i "$deb" || { echo "install.sh: 'dpkg -i $deb' failed (exit $?): see its output above" >&2; exit 1; }
	else
		echo "install.sh: $deb needs apt-get or dpkg, neither found: is this a Debian or Ubuntu node?" >&2
		exit 2
	fi
elif [ -n "$rpm" ]; then
	if command -v dnf >/dev/null 2>&1; then
		run dnf install -y "./$rpm"
	elif command -v yum >/dev/null 2>&1; then
		run yum install -y "./$rpm"
	elif command -v rpm >/dev/null 2>&1; then
		echo "install.sh: neither dnf nor yum found: rpm -Uvh installs no dependency (patchagent needs iptables)" >&2
		run rpm -Uvh --replacepkgs "$rpm"
	else
		echo "install.sh: $rpm needs dnf, yum or rpm, none found: is this an Amazon Linux or RHEL node?" >&2
		exit 2
	fi
else
	echo "install.sh: no patchagent package in $(pwd)" >&2
	exit 2
fi

if [ -f "$units_file" ]; then
	if [ -d "$systemd_dir" ]; then
		while read -r unit state; do
			case "$state" in
			enabled) systemctl enable "$unit" || : ;;
			active) systemctl start "$unit" || : ;;
			esac
		done <"$units_file"
	fi
	rm -f "$units_file"
fi
echo "install.sh: patchagent installed ($(patchagent version 2>/dev/null || echo 'version unknown'))"
exit 0
