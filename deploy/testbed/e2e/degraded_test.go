//go:build integration

package e2e

import (
	"os"
	"path/filepath"
	"strings"
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
