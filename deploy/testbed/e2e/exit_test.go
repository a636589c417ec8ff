//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// assertInService checks the node is back: nothing of ours in the rules, the
// app online, new connections from outside answered over IPv4 and IPv6.
func assertInService(t *testing.T, n *sandbox.Node) {
	t.Helper()
	assertNotBlocked(t, n)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := n.WaitHealthy(ctx, 5*time.Second); err != nil {
		t.Fatalf("node not back in service: %v", err)
	}
}

func firstLine(s string) string { l, _, _ := strings.Cut(s, "\n"); return l }

// preThenAppEnv runs pre with the app healthy on its default env, then
// relaunches the app with env (sandbox's SetAppEnv) without waiting for its
// health: what the app comes back as after the patch.
func preThenAppEnv(t *testing.T, n *sandbox.Node, cfg string, env map[string]string) {
	t.Helper()
	ctx := context.Background()
	if err := n.SetAppEnv(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := n.WaitHealthy(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	if err := n.SetAppEnv(ctx, env); err != nil {
		t.Fatal(err)
	}
}

func TestFullCycleWithRebootUnderLoad(t *testing.T) {
	n := setupNode(t, "pa-e2r", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 300ms\nhealth:\n  interval: 50ms\n")
	ctx := context.Background()
	load := n.Load(ctx, sandbox.LoadOptions{Workers: 2, Path: "/", Interval: 20 * time.Millisecond})
	defer load.Stop()
	time.Sleep(500 * time.Millisecond)

	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	time.Sleep(300 * time.Millisecond) // the OS update
	oldDaemon := n.DaemonPID()
	// The reboot: rules gone, pm2 killed; at boot patchagent's reconcile runs
	// before pm2's service resurrects the app.
	var reconciled result
	err := n.Reboot(ctx, func() error {
		reconciled = patchagent(t, n, "reconcile", "--config", cfg)
		if reconciled.code != 0 {
			t.Errorf("reconcile exit %d", reconciled.code)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(firstLine(reconciled.stdout), "block re-applied (443/tcp v4+v6)") {
		t.Fatalf("reconcile verdict %q", firstLine(reconciled.stdout))
	}
	if d := n.DaemonPID(); d == 0 || d == oldDaemon {
		t.Fatalf("pm2 daemon %d after the reboot (was %d)", d, oldDaemon)
	}
	// Watch outside connections from the moment pm2 is back.
	watch := n.Probe(ctx, sandbox.ProbeOptions{Interval: 20 * time.Millisecond})
	time.Sleep(time.Second)
	exitStart := time.Now()
	r := patchagent(t, n, "exit", "--config", cfg, "--output", "json")
	time.Sleep(300 * time.Millisecond)
	attempts := watch.Stop()
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	// When did exit's health check pass? The steps before unblock.
	var rep agent.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatal(err)
	}
	unblock, _, ok := rep.StepSpan("unblock")
	if !ok {
		t.Fatalf("exit's report has no unblock step: %s", r.stdout)
	}
	passed := exitStart.Add(unblock)
	var refused, accepted int
	for _, a := range attempts {
		switch {
		case a.Refused:
			refused++
		case a.Status != 0:
			accepted++
			if a.At.Before(passed) {
				t.Fatalf("an outside connection was answered at %s, before the health check passed at %s", a.At.Format(time.StampMilli), passed.Format(time.StampMilli))
			}
		}
	}
	if refused == 0 || accepted == 0 {
		t.Fatalf("outside attempts: %d refused, %d answered (want both)", refused, accepted)
	}
	assertInService(t, n)
	s := load.Stop()
	t.Logf("load over the cycle: %s", s)
	if s.Failed != 0 {
		t.Fatalf("requests dropped over the cycle: %s", s)
	}
}

func TestExitWithoutRebootReturnsTheNode(t *testing.T) {
	n := setupNode(t, "pa-e2n", nil)
	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 200ms\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	daemon := n.DaemonPID()
	r := patchagent(t, n, "exit", "--config", cfg)
	if r.code != 0 || !regexp.MustCompile(`^patchagent exit: ok in \S+ \(started sample-app, healthy after \d+ attempt\(s\) in \S+, unblocked 443/tcp v4\+v6\)$`).MatchString(firstLine(r.stdout)) {
		t.Fatalf("exit %d: %q", r.code, firstLine(r.stdout))
	}
	assertInService(t, n)
	if n.DaemonPID() != daemon {
		t.Fatal("exit replaced the pm2 daemon")
	}
	st, err := os.ReadFile(stateDir + "/state.json")
	if err != nil || !strings.Contains(string(st), `"open": false`) || !strings.Contains(string(st), `"closed_at"`) {
		t.Fatalf("state does not record the end of the cycle: %v\n%s", err, st)
	}
	// exit twice: nothing to do, nothing changes, the app not restarted.
	info, _, _ := n.App(context.Background())
	r = patchagent(t, n, "exit", "--config", cfg)
	if r.code != 0 || !strings.Contains(firstLine(r.stdout), "nothing to do: no patch cycle open, app healthy") {
		t.Fatalf("second exit %d: %q", r.code, firstLine(r.stdout))
	}
	if again, _, _ := n.App(context.Background()); again.PID != info.PID || again.Restarts != info.Restarts {
		t.Fatalf("second exit restarted the app: %+v -> %+v", info, again)
	}
}

func TestExitWithoutPreChangesNothing(t *testing.T) {
	n := setupNode(t, "pa-e2x", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "")
	info, _, _ := n.App(context.Background())
	r := patchagent(t, n, "exit", "--config", cfg)
	if r.code != 0 || !strings.Contains(firstLine(r.stdout), "nothing to do: no patch cycle open, app healthy") || r.took > 3*time.Second {
		t.Fatalf("exit %d in %s: %q", r.code, r.took, firstLine(r.stdout))
	}
	if again, _, _ := n.App(context.Background()); again.PID != info.PID || again.Restarts != info.Restarts {
		t.Fatalf("exit touched the app: %+v -> %+v", info, again)
	}
	assertInService(t, n)
}

// killPreAt runs pre in n's server netns as SSM does, SIGKILLed (as an
// SSM timeout kills it) right after it records the intent of step
// (PATCHAGENT_TEST_CRASH_AFTER), and fails t unless it died so.
func killPreAt(t *testing.T, n *sandbox.Node, cfg, step string) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", n.ServerNS, binary, "pre", "--config", cfg)
	cmd.Env = []string{"PATH=" + sandbox.SSMPath, "PATCHAGENT_TEST_CRASH_AFTER=" + step}
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL && ee.ExitCode() != 137 {
		t.Fatalf("pre was not killed at %s: %v", step, err)
	}
}

func TestExitAfterPreKilledAtEachStep(t *testing.T) {
	n := setupNode(t, "pa-e2k", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 200ms\n")
	for _, step := range []string{"block", "drain", "stop", "done"} {
		t.Run(step, func(t *testing.T) {
			killPreAt(t, n, cfg, step)
			r := patchagent(t, n, "exit", "--config", cfg)
			if r.code != 0 {
				t.Fatalf("exit after pre died at %s: %d", step, r.code)
			}
			assertInService(t, n)
		})
	}
}

func TestExitWithBadHealthEndpoints(t *testing.T) {
	n := setupNode(t, "pa-e2h", nil)
	ctx := context.Background()
	certPath, err := n.WriteTLSCert("localhost", "127.0.0.1", "::1")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		env      map[string]string
		health   string
		wantCode int
		wantLine *regexp.Regexp
		maxTook  time.Duration
	}{
		{"hanging: per-attempt timeout honoured", map[string]string{"HEALTH_MODE": "hang"},
			"  timeout: 1s\n  deadline: 3s\n", 1,
			regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: health-check http://localhost:443/health-check: .*timeout.* after [234] attempts in (2\.9\d|3(\.\d+)?)s`), 6 * time.Second},
		{"500", map[string]string{"HEALTH_MODE": "500"}, "  deadline: 2s\n", 1,
			regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: health-check http://localhost:443/health-check: status 500 after \d+ attempts in (1\.9\d|2(\.\d+)?)s`), 5 * time.Second},
		{"redirect not followed", map[string]string{"HEALTH_MODE": "redirect"}, "  deadline: 2s\n", 1,
			regexp.MustCompile(`node still out of service: health-check .*: status 302`), 5 * time.Second},
		{"self-signed TLS, verification off (curl -k)", n.TLSEnv(certPath),
			"  url: https://localhost:443/health-check\n  insecure: true\n", 0,
			regexp.MustCompile(`^patchagent exit: ok in `), 8 * time.Second},
		{"self-signed TLS, verification on, no CA", n.TLSEnv(certPath),
			"  url: https://localhost:443/health-check\n  insecure: false\n  deadline: 2s\n", 1,
			regexp.MustCompile(`node still out of service: health-check https://localhost:443/health-check: .*x509`), 6 * time.Second},
		{"self-signed TLS, verification with the CA file", n.TLSEnv(certPath),
			"  url: https://localhost:443/health-check\n  insecure: false\n  ca_file: " + certPath + "\n", 0,
			regexp.MustCompile(`^patchagent exit: ok in `), 8 * time.Second},
		{"slow-starting app: refused, then healthy", map[string]string{"START_DELAY_MS": "2000"}, "", 0,
			regexp.MustCompile(`^patchagent exit: ok in \S+ \(healthy after (\d{2,}|[2-9]) attempt\(s\)`), 10 * time.Second},
		{"crash-looping app: fails fast", map[string]string{"CRASH_AFTER_MS": "1"}, "  deadline: 1m\n", 1,
			regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: sample-app (is crash-looping: its pid changed \d+ time\(s\)|is errored in pm2|restarted \S+ after its health check passed)`), 5 * time.Second},
		{"app crashing late: caught by exit.min_uptime", map[string]string{"CRASH_AFTER_MS": "1500"}, "exit:\n  min_uptime: 5s\n", 1,
			regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: sample-app restarted \S+ after its health check passed, inside its stability window of 5s \(exit.min_uptime\): `), 8 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := writeConfig(t, n, n.Opts.AppName, "health:\n  interval: 100ms\n"+tt.health)
			// A failed case must not leave the next one a bad app behind a block.
			fixed, _ := writeConfig(t, n, n.Opts.AppName, "")
			t.Cleanup(func() {
				if t.Failed() {
					_ = n.SetAppEnv(ctx, nil)
					patchagent(t, n, "exit", "--config", fixed)
				}
			})
			// pre with the app healthy, then the app comes back bad.
			preThenAppEnv(t, n, cfg, tt.env)
			r := patchagent(t, n, "exit", "--config", cfg)
			if r.code != tt.wantCode || !tt.wantLine.MatchString(firstLine(r.stdout)) {
				t.Fatalf("exit %d (want %d): %q", r.code, tt.wantCode, firstLine(r.stdout))
			}
			if r.took > tt.maxTook {
				t.Fatalf("exit took %s (at most %s)", r.took, tt.maxTook)
			}
			if tt.wantCode != 0 {
				assertBlocked(t, n)
				// Back to a healthy app: exit now returns the node.
				if err := n.SetAppEnv(ctx, nil); err != nil {
					t.Fatal(err)
				}
				if r := patchagent(t, n, "exit", "--config", fixed); r.code != 0 {
					t.Fatalf("exit with the app fixed: %d", r.code)
				}
			}
			assertNotBlocked(t, n)
		})
	}
}
