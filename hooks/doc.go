// Package hooks runs the external programs patchagent depends on: pm2, npm,
// systemctl and the operator's step commands. It is the only package that
// imports os/exec. It also owns the snapshots of an npm app's dependency
// state (package.json, lockfile, node_modules) and the lockfile diff.
//
// Every program runs through a Runner with an explicit argv (never a shell),
// an explicit, complete environment (nothing of the agent's own environment
// leaks, in particular not NOTIFY_SOCKET), an optional credential (pm2 and npm
// run as the app's user, never as root), its own deadline, and a process
// group that is killed as a whole when the deadline passes.
//
// PM2 drives the app user's pm2 daemon. It never runs pm2 unless that daemon
// is already alive: any pm2 command spawns a daemon when none is running, and
// one spawned by patchagent would be root-owned or live in patchagent's
// cgroup (see DaemonAlive).
//
// NPM runs npm as the app's user in the app's directory, with bounded fetch
// timeouts; TakeSnapshot/Restore make a failed update leave nothing behind.
//
// hooks knows nothing of iptables.
package hooks
