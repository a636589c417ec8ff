// Package hooks runs the external programs patchagent depends on: pm2 (and,
// later, npm and other step commands). It is the only package that imports
// os/exec.
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
// hooks knows nothing of iptables.
package hooks
