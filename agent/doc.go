// Package agent is the only package that knows the whole patch window: it
// loads the configuration, keeps the crash-safe state file and the phase lock,
// and runs the phases (pre, post, exit) as ordered steps composed from the
// firewall, hooks and healthcheck packages. It runs no external program itself
// and touches no firewall rule directly: those go through the seams it is
// given.
package agent
