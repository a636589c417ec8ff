// Package node boots a real Debian 12 node with systemd for the end-to-end
// test of the shipped package: a root built with debootstrap (cached between
// runs), the sample app under the pinned pm2 started at boot by a
// `pm2 startup`-style unit, patchagent installed from its .deb, booted with
// systemd-nspawn in a network namespace of the test's own, rebooted for real
// (a container restart). Nothing touches the host's own network.
package node
