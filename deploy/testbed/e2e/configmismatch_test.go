//go:build integration

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDaemonRefusesAHookWithAnotherConfig: R7 of issue 13 with the real
// daemon and binary. The daemon started with one config file; a hook
// names another (an edited copy, another path in the SSM document): it is
// refused with exit 2, both paths named, and nothing is done, instead of
// the phase running silently with the daemon's settings. The daemon's own
// file, even through a symlink, is served.
func TestDaemonRefusesAHookWithAnotherConfig(t *testing.T) {
	n := setupNode(t, "pa-e2cf", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18748\n  watch_interval: 500ms\ndrain:\n  idle: 200ms\n")
	startDaemon(t, n, cfg)
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(filepath.Dir(cfg), "edited.yaml")
	if err := os.WriteFile(other, []byte(strings.Replace(string(body), "idle: 200ms", "idle: 2s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	r := patchagent(t, n, "pre", "--config", other)
	if r.code != 2 || !strings.Contains(r.stdout, "the daemon runs "+cfg+", this command names "+other) {
		t.Fatalf("pre with another config: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	assertNotBlocked(t, n)
	link := filepath.Join(filepath.Dir(cfg), "current.yaml")
	if err := os.Symlink(cfg, link); err != nil {
		t.Fatal(err)
	}
	if r := patchagent(t, n, "pre", "--config", link); r.code != 0 || strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("pre with the daemon's config through a link: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	assertBlocked(t, n)
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit: %d\n%s", r.code, r.stdout)
	}
	assertInService(t, n)
}
