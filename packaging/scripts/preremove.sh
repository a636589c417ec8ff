#!/bin/sh
# patchagent preremove, shared by the deb and the rpm.
#   deb: remove | upgrade <new-version> | deconfigure | failed-upgrade
#   rpm: $1 = 0 (erase) or 1 (upgrade: the new version's postinstall
#        try-restarts the daemon, nothing to do here)
# Removal with a patch cycle open (pre ran, exit did not: the node may be
# blocked, out of its load balancer) is refused, with the commands that
# put the node back, unless PATCHAGENT_REMOVE_OPEN_CYCLE=1: nothing would
# unblock it afterwards. On removal both units are stopped and disabled
# (the reconcile unit may have been enabled by the operator), after the
# ones enabled are written to /var/lib/patchagent/enabled-units (empty:
# none), for a reinstall to enable them again (postinstall.sh); and the
# node_exporter textfile is deleted (a stale one would fire alerts
# forever). The state in /var/lib/patchagent is kept.
#
# daemon.state_dir and daemon.textfile_dir come from check-config, which
# prints a valid config's effective values whatever it finds on the node
# (exit 2 when pm2 or the app user is gone already, as on a node being
# decommissioned); only a config that is not valid leaves the defaults, and
# that is said.
#
# PATCHAGENT_SYSTEMD_DIR replaces /run/systemd/system in the "is systemd
# running" check, PATCHAGENT_STATE_DIR the state directory (else
# daemon.state_dir), PATCHAGENT_ENABLED_UNITS
# /var/lib/patchagent/enabled-units and PATCHAGENT_CONFIG
# /etc/patchagent/config.yaml; they exist for the package tests only.
set -e

systemd_dir=${PATCHAGENT_SYSTEMD_DIR:-/run/systemd/system}
config=${PATCHAGENT_CONFIG:-/etc/patchagent/config.yaml}

case "$1" in
remove | 0) ;;
*) exit 0 ;;
esac

# The config's effective values, as check-config prints them, whatever its
# exit code (none when the config is not valid): daemon.state_dir and
# daemon.textfile_dir may not be the defaults.
effective=$(patchagent check-config --config "$config" 2>/dev/null) || :
if [ -z "$effective" ]; then
	echo "patchagent: $config is not valid ('patchagent check-config' says why): looking for the state in /var/lib/patchagent and node_exporter's textfile in /var/lib/prometheus/node-exporter, the defaults" >&2
fi
value() {
	v=$(printf '%s\n' "$effective" | sed -n "s/^ *$1: *\"\{0,1\}\([^\"]*\)\"\{0,1\}\$/\1/p" | head -n 1)
	echo "${v:-$2}"
}
state=${PATCHAGENT_STATE_DIR:-$(value state_dir /var/lib/patchagent)}/state.json

if [ -f "$state" ] && grep -Eq '^  "open": true,?$' "$state"; then
	cat >&2 <<-EOF
	patchagent: A PATCH CYCLE IS OPEN on this node (pre ran, exit did not): the
	node may still be blocked and out of its load balancer, and nothing will
	put it back once patchagent is gone. First return it to service:
	    patchagent exit                 # once the app is healthy
	    patchagent exit --force         # or the break-glass: unblock now
	or remove the block by hand afterwards:
	    iptables -D INPUT -j PATCHAGENT-BLOCK; iptables -F PATCHAGENT-BLOCK; iptables -X PATCHAGENT-BLOCK
	    ip6tables -D INPUT -j PATCHAGENT-BLOCK; ip6tables -F PATCHAGENT-BLOCK; ip6tables -X PATCHAGENT-BLOCK
	(see $state for the load balancer changes to undo).
	EOF
	if [ "${PATCHAGENT_REMOVE_OPEN_CYCLE:-}" != 1 ]; then
		echo "patchagent: removal refused; set PATCHAGENT_REMOVE_OPEN_CYCLE=1 to remove it anyway" >&2
		exit 1
	fi
	echo "patchagent: PATCHAGENT_REMOVE_OPEN_CYCLE=1: removing it anyway" >&2
fi

rm -f "$(value textfile_dir /var/lib/prometheus/node-exporter)/patchagent.prom"

[ -d "$systemd_dir" ] || exit 0

enabled_units=${PATCHAGENT_ENABLED_UNITS:-/var/lib/patchagent/enabled-units}
(umask 077 && mkdir -p "${enabled_units%/*}")
for unit in patchagent.service patchagent-reconcile.service; do
	if systemctl is-enabled --quiet "$unit"; then echo "$unit"; fi
done >"$enabled_units"

systemctl stop patchagent.service patchagent-reconcile.service || :
systemctl disable patchagent.service patchagent-reconcile.service || :
exit 0
