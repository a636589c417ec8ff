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
// For the tests of the agent's post phase (npm update) it runs an npm
// registry on the server netns's loopback: StartRegistry starts the pinned
// verdaccio (EnsureVerdaccio) as the app user, with no uplinks, so nothing
// ever reaches the public registry; Registry.Publish and PublishBench
// publish test packages straight from Go; StartHangingRegistry plays a
// registry that accepts and never answers. SetupNPMApp makes the sample app
// depend on packages from it (the app requires every dependency at start,
// so a broken one crashes it), and TreeHash/TreeOwners tell whether the app
// dir is byte-identical and still owned by the app user.
//
// It never touches the host's own network namespace: every firewall rule and
// every byte of test traffic stays inside namespaces it created. Setup and
// teardown are idempotent and undo partial work after a failure.
package sandbox

// Layout: app/ is the sample app (embedded and copied to <Dir>/app), pm2/
// and verdaccio/ pin pm2 and verdaccio with committed lock files (installed
// by EnsurePM2 and EnsureVerdaccio), and cmd/sandbox is a small CLI: sandbox
// up|status|load|down [-prefix pa].
