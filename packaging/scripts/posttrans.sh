#!/bin/sh
# patchagent posttrans, rpm only: runs once the whole transaction is done.
#
# patchagent 0.1.0's rpm owned /etc/patchagent/config.yaml
# (%config(noreplace)); later ones own no config (postinstall.sh creates it
# when absent, and no removal touches it). Upgrading from 0.1.0, rpm erases
# the old package's files after the new postinstall ran: it renames an
# edited config config.yaml.rpmsave and deletes an unedited one. This puts
# the operator's back, or creates the config from the template as
# postinstall.sh does; with a config in place it does nothing. Its $1
# differs between rpm versions (0 on older ones, the number of instances
# installed on newer ones) and is not read.
#
# PATCHAGENT_CONFIG and PATCHAGENT_CONFIG_TEMPLATE replace the config's and
# the template's paths; they exist for the package tests only.
set -e

config=${PATCHAGENT_CONFIG:-/etc/patchagent/config.yaml}
template=${PATCHAGENT_CONFIG_TEMPLATE:-/usr/share/patchagent/config.yaml}

if [ -e "$config" ] || [ -L "$config" ]; then exit 0; fi
mkdir -p "${config%/*}"
if [ -f "$config.rpmsave" ] && [ ! -L "$config.rpmsave" ]; then
	mv -f "$config.rpmsave" "$config"
	echo "patchagent: restored $config from $config.rpmsave (rpm saved it there when it upgraded patchagent 0.1.0)" >&2
else
	tmp="$config.patchagent-new"
	rm -f "$tmp"
	(umask 077 && cp "$template" "$tmp")
	mv -f "$tmp" "$config"
	echo "patchagent: created $config from $template" >&2
fi
exit 0
