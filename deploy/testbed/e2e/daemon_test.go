//go:build integration

package e2e

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/prometheus/promcheck"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// startDaemon starts the node's daemon as systemd would and waits for
// READY=1; it is stopped (SIGTERM) at the end of the test.
func startDaemon(t *testing.T, n *sandbox.Node, cfg string) *sandbox.Daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	d, err := n.StartDaemon(context.Background(), binary, cfg, dir, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopDaemon(t, d)
		if t.Failed() {
			t.Logf("daemon log:\n%s", d.LogTail())
		}
	})
	return d
}

func stopDaemon(t *testing.T, d *sandbox.Daemon) {
	if err := d.Stop(); err != nil {
		t.Errorf("stopping the daemon: %v", err)
	}
}

func TestDaemonRunsPhasesThatOutliveTheirCLI(t *testing.T) {
	n := setupNode(t, "pa-e2dm", map[string]string{"KEEPALIVE_MS": "60000"})
	// A short loop period, so that the watchdog is pinged within the test.
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18741\n  watch_interval: 500ms\ndrain:\n  idle: 300ms\n")
	d := startDaemon(t, n, cfg)

	// A 3 s request in flight, then pre whose CLI is SIGKILLed mid-drain.
	slow := make(chan int, 1)
	go func() {
		code, _ := get(context.Background(), n.Client(false), n.URL("/slow?ms=3000", false))
		slow <- code
	}()
	time.Sleep(300 * time.Millisecond)
	cli := exec.Command("ip", "netns", "exec", n.ServerNS, binary, "pre", "--config", cfg)
	cli.Env = []string{"PATH=" + sandbox.SSMPath}
	stderr, _ := cli.StderrPipe()
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "drain:") {
			break
		}
	}
	_ = cli.Process.Kill()
	_ = cli.Wait()
	if code := <-slow; code != 200 {
		t.Fatalf("the in-flight request got %d", code)
	}
	// The daemon finished pre: the next pre reports it done (joined, or a
	// quick idempotent run).
	r := patchagent(t, n, "pre", "--config", cfg)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "patchagent pre: ok") || strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("second pre %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	assertBlocked(t, n)
	st, _ := os.ReadFile(filepath.Join(filepath.Dir(cfg), "state", "state.json"))
	if !strings.Contains(string(st), `"pre": {`) || strings.Count(string(st), `"result": "ok"`) < 1 {
		t.Fatalf("state after the killed pre:\n%s", st)
	}

	// Two CLIs at once: serialised, one block. Each joins the other's run
	// or runs after it (exit 0); one may find the phase lock taken (exit 3),
	// never both.
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Add(1)
		go func() { defer wg.Done(); codes[i] = patchagent(t, n, "pre", "--config", cfg).code }()
	}
	wg.Wait()
	for _, c := range codes {
		if c != 0 && c != 3 {
			t.Fatalf("concurrent pre exit codes %v: want 0 or 3", codes)
		}
	}
	if codes[0] != 0 && codes[1] != 0 {
		t.Fatalf("concurrent pre exit codes %v: neither succeeded", codes)
	}
	assertBlocked(t, n)

	// A nothing-to-do round trip through the daemon.
	start := time.Now()
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	t.Logf("exit through the daemon: %s", time.Since(start))
	assertInService(t, n)

	// Metrics over HTTP after the full cycle, promtool-clean.
	body := scrape(t, n, "http://127.0.0.1:18741/metrics")
	for _, want := range []string{
		`patchagent_phase_runs_total{phase="pre",result="ok"}`,
		`patchagent_phase_runs_total{phase="exit",result="ok"} 1`,
		"patchagent_traffic_blocked 0", "patchagent_cycle_open 0", "patchagent_build_info{",
		"process_resident_memory_bytes", "go_goroutines",
	} {
		if !strings.Contains(body, want) {
			t.Fatalf("metrics lack %q:\n%s", want, body)
		}
	}
	if promtool := promcheck.Promtool(); promtool != "" {
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = strings.NewReader(body)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("promtool check metrics: %v\n%s", err, out)
		}
	}
	stopDaemon(t, d)
	if notes := strings.Join(d.Notes(), "\n"); !strings.Contains(notes, "STOPPING=1") || !strings.Contains(notes, "WATCHDOG=1") || !strings.Contains(notes, "STATUS=") {
		t.Fatalf("notify messages: %s", notes)
	}
}

// scrape GETs url from the server netns. The daemon listens for metrics
// in the background, after READY (R1: never before the boot re-block), so
// a refused connection is tried again for up to 5 s.
func scrape(t *testing.T, n *sandbox.Node, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var resp *http.Response
	var err error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err = n.ServerClient().Do(req); err == nil || !errors.Is(err, syscall.ECONNREFUSED) || ctx.Err() != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scraping %s: status %d, %v", url, resp.StatusCode, err)
	}
	return string(b)
}

func TestDaemonReblocksAtBootAndRemovesLeftovers(t *testing.T) {
	n := setupNode(t, "pa-e2db", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  watch_interval: 200ms\n  metrics_listen: 127.0.0.1:18742\ndrain:\n  idle: 200ms\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	// The rules vanish (a reboot, a flush) while the cycle is open.
	if err := n.FlushFirewall(context.Background()); err != nil {
		t.Fatal(err)
	}
	assertNotBlocked(t, n)
	d := startDaemon(t, n, cfg)
	assertBlocked(t, n) // back before READY

	// IPv4's jump flushed while the daemon runs: re-asserted within a few
	// ticks (200ms), the jump back in both families, and counted.
	if out, err := sandbox.NetnsCommand(n.ServerNS, "iptables", "-w", "5", "-F", "INPUT").CombinedOutput(); err != nil {
		t.Fatalf("iptables -F INPUT: %v %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(iptablesS(t, n), "-A INPUT -j PATCHAGENT-BLOCK") != 2 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	assertBlocked(t, n)
	// Once at boot (reconcile), once by the watch (which counts it just
	// after the rule is back: poll briefly).
	const reapplied = "\npatchagent_block_reapplied_total 2\n"
	body := scrape(t, n, "http://127.0.0.1:18742/metrics")
	for deadline := time.Now().Add(2 * time.Second); !strings.Contains(body, reapplied) && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
		body = scrape(t, n, "http://127.0.0.1:18742/metrics")
	}
	if !strings.Contains(body, reapplied) {
		t.Fatalf("re-application not counted (want %q):\n%s", strings.TrimSpace(reapplied), body)
	}
	stopDaemon(t, d)

	// No cycle open, a leftover block of ours, the app healthy: removed.
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for _, b := range []string{"iptables", "ip6tables"} {
		for _, args := range [][]string{{"-N", "PATCHAGENT-BLOCK"}, {"-A", "PATCHAGENT-BLOCK", "!", "-i", "lo", "-p", "tcp", "--dport", "443", "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"}, {"-I", "INPUT", "1", "-j", "PATCHAGENT-BLOCK"}} {
			if out, err := sandbox.NetnsCommand(n.ServerNS, append([]string{b, "-w", "5"}, args...)...).CombinedOutput(); err != nil {
				t.Fatalf("%s %v: %v %s", b, args, err, out)
			}
		}
	}
	assertBlocked(t, n)
	startDaemon(t, n, cfg)
	deadline = time.Now().Add(10 * time.Second)
	for strings.Contains(iptablesS(t, n), "PATCHAGENT") && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	assertInService(t, n)
}

func TestDaemonDeadmanAutoRecover(t *testing.T) {
	n := setupNode(t, "pa-e2dd", nil)
	for _, tt := range []struct {
		name    string
		env     map[string]string
		healthy bool
	}{
		{"healthy app comes back", nil, true},
		{"unhealthy app stays out of service", map[string]string{"HEALTH_MODE": "500"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _ := writeConfig(t, n, n.Opts.AppName, "  watch_interval: 200ms\n  max_out_of_service: 2s\n  auto_recover: true\n  metrics_listen: 127.0.0.1:18743\ndrain:\n  idle: 200ms\nhealth:\n  deadline: 3s\n")
			preThenAppEnv(t, n, cfg, tt.env)
			d := startDaemon(t, n, cfg)
			time.Sleep(8 * time.Second) // dead-man at 2 s, then exit's 3 s health deadline
			body := scrape(t, n, "http://127.0.0.1:18743/metrics")
			if !strings.Contains(body, "patchagent_deadman_triggered_total 1") {
				t.Fatalf("dead-man not counted once:\n%s", body)
			}
			if tt.healthy {
				assertInService(t, n)
			} else {
				assertBlocked(t, n)
			}
			stopDaemon(t, d)
		})
	}
}
