//go:build integration

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonDegradedUntilItCanBuild: R3 of issue 13 with the real daemon.
// What the agent needs beyond the state file and iptables is not there at
// start (here the health check's CA file, on a disk mounted later): the
// daemon comes up degraded instead of exiting into systemd's start limit,
// says why, retries, and serves the hooks once the file appears.
func TestDaemonDegradedUntilItCanBuild(t *testing.T) {
	n := setupNode(t, "pa-e2dg", nil)
	cert, err := n.WriteTLSCert("localhost", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "later", "ca.pem")
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18754\n  watch_interval: 200ms\ndrain:\n  idle: 200ms\nhealth:\n  ca_file: "+ca+"\n")
	d := startDaemon(t, n, cfg)
	if st := d.Status(); !strings.HasPrefix(st, "degraded, phases not served: ") || !strings.Contains(st, "ca_file") {
		t.Fatalf("status %q, want degraded naming ca_file", st)
	}
	if !strings.Contains(scrape(t, n, "http://127.0.0.1:18754/metrics"), "\npatchagent_daemon_degraded 1\n") {
		t.Fatal("patchagent_daemon_degraded is not 1")
	}

	pem, err := os.ReadFile(cert)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(ca), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	// Retries are 1 s doubling: within a few seconds it is built.
	for deadline := time.Now().Add(10 * time.Second); strings.HasPrefix(d.Status(), "degraded"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still %q 10 s after the CA file appeared\n%s", d.Status(), d.LogTail())
		}
	}
	if !strings.Contains(scrape(t, n, "http://127.0.0.1:18754/metrics"), "\npatchagent_daemon_degraded 0\n") {
		t.Fatal("patchagent_daemon_degraded is not back to 0")
	}
	for _, phase := range []string{"pre", "exit"} {
		if r := patchagent(t, n, phase, "--config", cfg); r.code != 0 || strings.Contains(r.stderr, "running the phase in this process") {
			t.Fatalf("%s not served by the daemon once built: %d\n%s\n%s", phase, r.code, r.stdout, r.stderr)
		}
	}
	assertInService(t, n)
}

// TestDaemonExits2WhenTheNodeStaysWrong: issue 17. A node that still
// lacks what the config names once daemon.node_wait has passed (here an
// app user no system database knows) is misconfigured, not slow to boot:
// with no cycle open the daemon exits 2, which the unit does not restart
// (RestartPreventExitStatus=2), and says what to run; with a cycle open it
// stays up, degraded, and the block stays.
func TestDaemonExits2WhenTheNodeStaysWrong(t *testing.T) {
	n := setupNode(t, "pa-e2nw", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18755\n  watch_interval: 200ms\n  node_wait: 2s\ndrain:\n  idle: 200ms\n")
	wrong := withAppUser(t, cfg, n.AppUser, "ldap-only-user")

	t.Run("no cycle open", func(t *testing.T) {
		d := startDaemon(t, n, wrong)
		code, ok := d.Exited(15 * time.Second)
		if !ok || code != 2 {
			t.Fatalf("exited %v with %d, want exit 2 once node_wait passed\n%s", ok, code, d.LogTail())
		}
		if st := d.Status(); !strings.HasPrefix(st, "stopped: the node is not ready for the agent: still failing after daemon.node_wait 2s") || !strings.Contains(st, "ldap-only-user") {
			t.Errorf("status %q, want stopped naming the user", st)
		}
		if !strings.Contains(d.LogTail(), "patchagent check-config") {
			t.Errorf("the log does not say what to run:\n%s", d.LogTail())
		}
	})

	t.Run("cycle open", func(t *testing.T) {
		if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
			t.Fatalf("pre %d\n%s", r.code, r.stderr)
		}
		d := startDaemon(t, n, wrong)
		// Retries at 1 s and 3 s: the second is past node_wait.
		if code, ok := d.Exited(5 * time.Second); ok {
			t.Fatalf("exited %d with a cycle open\n%s", code, d.LogTail())
		}
		if st := d.Status(); !strings.HasPrefix(st, "degraded, phases not served: ") {
			t.Errorf("status %q, want degraded", st)
		}
		if !strings.Contains(d.LogTail(), "a patch cycle may be open: staying up") {
			t.Errorf("the log does not say why it stays:\n%s", d.LogTail())
		}
		assertBlocked(t, n)
		// Degraded, it still watches the block: flushed (a firewall
		// reload), it is back within a few watch intervals.
		if err := n.FlushFirewall(context.Background()); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		assertBlocked(t, n)
		if !strings.Contains(d.LogTail(), "degraded: the block of the open cycle was gone: re-applied") {
			t.Errorf("the log does not say the block was re-applied:\n%s", d.LogTail())
		}
		stopDaemon(t, d)
		if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
			t.Fatalf("exit %d\n%s", r.code, r.stderr)
		}
		assertInService(t, n)
	})
}

// TestDegradedDaemonTakesItsFixOnReload: a degraded daemon (app.user
// unknown) is not ended by SIGHUP (Go's default action, which systemd
// counts as a clean exit and does not restart), and after the config is
// fixed, SIGHUP (systemctl reload) makes it build at once from the file as
// it now is.
func TestDegradedDaemonTakesItsFixOnReload(t *testing.T) {
	n := setupNode(t, "pa-e2rl", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18756\n  watch_interval: 200ms\ndrain:\n  idle: 200ms\n")
	good, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The daemon's config: app.user unknown until it is fixed.
	daemonCfg := withAppUser(t, cfg, n.AppUser, "ldap-only-user")
	d := startDaemon(t, n, daemonCfg)
	hup := func() {
		t.Helper()
		if err := syscall.Kill(d.PID(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	hup()
	if code, ok := d.Exited(500 * time.Millisecond); ok {
		t.Fatalf("SIGHUP ended the degraded daemon (exit %d)\n%s", code, d.LogTail())
	}
	if !strings.HasPrefix(d.Status(), "degraded") {
		t.Fatalf("status %q, want still degraded", d.Status())
	}
	// Past the retry at 1 s: the next is at 3 s.
	time.Sleep(800 * time.Millisecond)
	if err := os.WriteFile(daemonCfg, good, 0o600); err != nil {
		t.Fatal(err)
	}
	hup()
	for deadline := time.Now().Add(800 * time.Millisecond); strings.HasPrefix(d.Status(), "degraded"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still %q 800 ms after the fix and SIGHUP\n%s", d.Status(), d.LogTail())
		}
	}
	if r := patchagent(t, n, "pre", "--config", daemonCfg); r.code != 0 || strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("pre not served by the daemon once built: %d\n%s", r.code, r.stderr)
	}
	if r := patchagent(t, n, "exit", "--config", daemonCfg); r.code != 0 {
		t.Fatalf("exit %d\n%s", r.code, r.stderr)
	}
	assertInService(t, n)
}

// withAppUser writes a copy of the config at cfg, beside it, with app.user
// to instead of from (the state dir and everything else shared), and
// returns its path.
func withAppUser(t *testing.T, cfg, from, to string) string {
	t.Helper()
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(body), "  user: "+from+"\n", "  user: "+to+"\n", 1)
	if changed == string(body) {
		t.Fatalf("no app user line in:\n%s", body)
	}
	p := filepath.Join(filepath.Dir(cfg), to+".yaml")
	if err := os.WriteFile(p, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
