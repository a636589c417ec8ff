// Package packaging holds what installs patchagent on a node: systemd units
// (systemd/), and, later, the packages. Its tests check the units with
// systemd-analyze; it has no code of its own.
package packaging
