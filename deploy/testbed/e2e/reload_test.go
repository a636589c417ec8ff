//go:build integration

package e2e

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonPicksUpAnEditedConfig: R7 of issue 13, second half, with the
// real daemon and binary. The daemon's config file is edited between
// cycles: the next pre runs the edit (before, the daemon kept running the
// config it started with). Mid-cycle, a SIGHUP with a broken edit keeps
// the running config and says so (log, patchagent_config_last_reload_successful
// 0); a SIGHUP with a good one is used (the gauge back to 1).
func TestDaemonPicksUpAnEditedConfig(t *testing.T) {
	n := setupNode(t, "pa-e2rl", nil)
	const metrics = "127.0.0.1:18753"
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: "+metrics+"\n  watch_interval: 200ms\ndrain:\n  idle: 200ms\n")
	d := startDaemon(t, n, cfg)
	body, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}
	edit := func(from, to string) {
		t.Helper()
		b := strings.Replace(string(body), from, to, 1)
		if b == string(body) && from != to {
			t.Fatalf("no %q in the config", from)
		}
		if err := os.WriteFile(cfg, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	gauge := func() string {
		for _, l := range strings.Split(scrape(t, n, "http://"+metrics+"/metrics"), "\n") {
			if v, ok := strings.CutPrefix(l, "patchagent_config_last_reload_successful "); ok {
				return v
			}
		}
		return "absent"
	}
	sighup := func() {
		t.Helper()
		if err := syscall.Kill(d.PID(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !ok(); time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 5s\n%s", what, d.LogTail())
			}
		}
	}

	edit("idle: 200ms", "idle: 700ms")
	r := patchagent(t, n, "pre", "--config", cfg)
	if r.code != 0 || strings.Contains(r.stderr, "running the phase in this process") || !strings.Contains(r.stderr, "idle >= 700ms") {
		t.Fatalf("pre after the edit did not run it in the daemon: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}

	// Mid-cycle, a broken edit and a SIGHUP: the daemon keeps running.
	edit("idle: 200ms", "idle: 200ms\n  bogus: 1")
	sighup()
	eventually("the refused reload reported", func() bool {
		return strings.Contains(d.LogTail(), "config not reloaded") && gauge() == "0"
	})
	edit("idle: 200ms", "idle: 300ms")
	sighup()
	eventually("the good reload used", func() bool {
		return strings.Contains(d.LogTail(), "config reloaded") && gauge() == "1"
	})
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 || strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("exit: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	assertInService(t, n)

	// SIGHUP did not end the daemon (its default action would).
	if err := syscall.Kill(d.PID(), 0); err != nil {
		t.Fatalf("the daemon is gone: %v", err)
	}
}
