// Package sandbox builds a local patch target for tests, the demo and the
// benchmarks: a "server" network namespace that holds a sample Node.js app
// under real pm2 (run as an unprivileged app user with its own PM2_HOME), and
// a "client" namespace joined to it by a veth pair, IPv4 and IPv6.
//
// For the tests of the agent's exit path it can also play a bad app and a
// reboot: SetAppEnv relaunches the app with another HEALTH_MODE (ok, 500,
// hang, redirect), START_DELAY_MS, CRASH_AFTER_MS or HTTPS (WriteTLSCert,
// TLSEnv); Reboot kills pm2, flushes the server netns's firewall, writes a
// new boot id (BootIDPath) and runs `pm2 resurrect` as pm2's boot service
// does; Probe records what a new outside client sees, attempt by attempt.
//
// It never touches the host's own network namespace: every firewall rule and
// every byte of test traffic stays inside namespaces it created. Setup and
// teardown are idempotent and undo partial work after a failure.
package sandbox

// Layout: app/ is the sample app (embedded and copied to <Dir>/app), pm2/
// pins pm2 with a committed lock file (installed by EnsurePM2), and
// cmd/sandbox is a small CLI: sandbox up|status|load|down [-prefix pa].
