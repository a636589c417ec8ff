#!/bin/sh
# SSM Distributor "install" action for patchagent (AWS-ConfigureAWSPackage
# runs `sh install.sh` in the extracted zip). The zip holds one package: a
# .deb (installed with dpkg -i) or an .rpm (rpm -Uvh --replacepkgs), so
# running it again is harmless. The package's own scripts enable the daemon
# only once /etc/patchagent/config.yaml is valid (see patchagent(8)).
#
# With installationType "Uninstall and reinstall", uninstall.sh records which
# patchagent units were enabled/active; they are restored here, so a
# reinstall does not leave a configured node without its daemon.
#
# Exit codes: 0 installed; 1 the package manager failed; 2 this zip's
# package or its package manager is missing (wrong platform).
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system and PATCHAGENT_STATE_DIR
# /var/lib/patchagent (tests only).
set -u
cd "$(dirname "$0")" || exit 2

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
units_file=${PATCHAGENT_STATE_DIR:-/var/lib/patchagent}/distributor-units

deb=""
rpm=""
for f in patchagent_*.deb; do [ -f "$f" ] && deb=$f; done
for f in patchagent-*.rpm; do [ -f "$f" ] && rpm=$f; done
if [ -n "$deb" ]; then
	command -v dpkg >/dev/null 2>&1 || { echo "install.sh: $deb needs dpkg, not found" >&2; exit 2; }
	echo "install.sh: dpkg -i $deb"
	dpkg -i "$deb" || { echo "install.sh: dpkg -i $deb failed" >&2; exit 1; }
elif [ -n "$rpm" ]; then
	command -v rpm >/dev/null 2>&1 || { echo "install.sh: $rpm needs rpm, not found" >&2; exit 2; }
	echo "install.sh: rpm -Uvh --replacepkgs $rpm"
	rpm -Uvh --replacepkgs "$rpm" || { echo "install.sh: rpm -Uvh $rpm failed" >&2; exit 1; }
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
