//go:build integration

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBootReblockNeedsOnlyTheStateAndIptables: R3 and E2 of issue 13, with
// the real daemon and iptables in the sandbox.
//
//   - The app user is not known to the node at boot (an LDAP or SSSD user
//     before the network is up), so the agent cannot be
//     built: the reconcile command fails, the daemon comes up degraded
//     (READY, its status and patchagent_daemon_degraded say why, it
//     retries); the open cycle's block, gone with the reboot, is back all
//     the same.
//   - The state file cannot be parsed at boot with our chain present: the
//     daemon keeps the block, comes up (READY) and says so in its status.
func TestBootReblockNeedsOnlyTheStateAndIptables(t *testing.T) {
	n := setupNode(t, "pa-e2bb", nil)
	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "  watch_interval: 200ms\n  metrics_listen: 127.0.0.1:18746\ndrain:\n  idle: 200ms\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	ldapCfg := withAppUser(t, cfg, n.AppUser, "ldap-only-user")

	t.Run("app user unknown at boot", func(t *testing.T) {
		// The reconcile unit's command.
		if err := n.FlushFirewall(context.Background()); err != nil {
			t.Fatal(err)
		}
		r := patchagent(t, n, "reconcile", "--config", ldapCfg)
		if r.code == 0 || !strings.Contains(r.stdout+r.stderr, "boot re-block block re-applied") || !strings.Contains(r.stdout, "ldap-only-user") {
			t.Errorf("reconcile with an unknown app user: %d\n%s\n%s", r.code, r.stdout, r.stderr)
		}
		assertBlocked(t, n)

		// The daemon's start.
		if err := n.FlushFirewall(context.Background()); err != nil {
			t.Fatal(err)
		}
		dir, err := os.MkdirTemp("", "pa-sdn") // short: it holds the notify socket
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		d, err := n.StartDaemon(context.Background(), binary, ldapCfg, dir, 10*time.Second)
		if err != nil {
			t.Fatalf("the daemon did not come up (degraded) without its app user: %v", err)
		}
		defer stopDaemon(t, d)
		if st := d.Status(); !strings.HasPrefix(st, "degraded, phases not served: ") || !strings.Contains(st, "ldap-only-user") {
			t.Errorf("status %q, want degraded naming the user", st)
		}
		if !strings.Contains(scrape(t, n, "http://127.0.0.1:18746/metrics"), "\npatchagent_daemon_degraded 1\n") {
			t.Error("patchagent_daemon_degraded is not 1")
		}
		assertBlocked(t, n)
	})

	t.Run("state file unreadable", func(t *testing.T) {
		// Our chain is in place (the subtest above); the state is broken.
		assertBlocked(t, n)
		state := filepath.Join(stateDir, "state.json")
		good, err := os.ReadFile(state)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(state, good[:len(good)/2], 0o600); err != nil {
			t.Fatal(err)
		}
		d := startDaemon(t, n, cfg) // READY, or the test fails
		if s := d.Status(); !strings.Contains(s, "state file unreadable") {
			t.Errorf("daemon status %q does not say the state is unreadable", s)
		}
		time.Sleep(500 * time.Millisecond) // a few ticks: nothing removes it
		assertBlocked(t, n)
		r := patchagent(t, n, "exit", "--config", cfg)
		if r.code == 0 || !strings.Contains(r.stdout, "state file unreadable") {
			t.Errorf("exit with the state unreadable: %d\n%s", r.code, r.stdout)
		}
		assertBlocked(t, n)
		stopDaemon(t, d)
		if err := os.WriteFile(state, good, 0o600); err != nil {
			t.Fatal(err)
		}
		if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
			t.Fatalf("exit once the state is back: %d\n%s", r.code, r.stdout)
		}
		assertInService(t, n)
	})
}
