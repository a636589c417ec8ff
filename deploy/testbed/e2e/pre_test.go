//go:build integration

package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

func TestPreDrainsInFlightRequestAndIgnoresIdleKeepAlives(t *testing.T) {
	// Idle keep-alive connections stay open for a minute unless the drain
	// ignores them.
	n := setupNode(t, "pa-e2d", map[string]string{"KEEPALIVE_MS": "60000"})
	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 500ms\n  timeout: 15s\n")
	ctx := context.Background()
	daemonPID := n.DaemonPID()

	// Three idle keep-alive connections (two IPv4, one IPv6).
	idle4, idle6 := n.Client(false), n.Client(true)
	var wg sync.WaitGroup
	for i, c := range []*http.Client{idle4, idle4, idle6} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, err := get(ctx, c, n.URL("/slow?ms=200", i == 2)); err != nil || code != 200 {
				t.Errorf("keep-alive warm-up: %d %v", code, err)
			}
		}()
	}
	wg.Wait()

	// One request in flight for 4 s when pre starts.
	type slowResult struct {
		code int
		err  error
		done time.Time
	}
	slow := make(chan slowResult, 1)
	go func() {
		code, err := get(ctx, n.Client(false), n.URL("/slow?ms=4000", false))
		slow <- slowResult{code, err, time.Now()}
	}()
	time.Sleep(300 * time.Millisecond)

	r := patchagent(t, n, "pre", "--config", cfg, "--output", "json")
	s := <-slow
	if r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	if s.err != nil || s.code != 200 {
		t.Fatalf("in-flight request lost: %d %v", s.code, s.err)
	}
	if after := r.ended.Sub(s.done); after < 0 || after > 1500*time.Millisecond {
		t.Fatalf("pre ended %s after the in-flight request completed (want within about a second)", after)
	}
	if r.took > 6*time.Second {
		t.Fatalf("pre took %s: idle keep-alive connections held the drain", r.took)
	}
	if sum := r.report["summary"].([]any); len(sum) != 3 || sum[0] != "blocked 443/tcp v4+v6" || !strings.HasPrefix(sum[1].(string), "drained ") || sum[2] != "stopped "+n.Opts.AppName {
		t.Fatalf("summary: %v", sum)
	}
	if w, _ := r.report["warnings"].([]any); len(w) != 0 {
		t.Fatalf("warnings: %v", w)
	}
	// The verdict line in text mode is exercised in TestPreTextVerdict; here
	// the effects on the node:
	assertBlocked(t, n)
	if info, ok, err := n.App(ctx); err != nil || !ok || info.Status != "stopped" || info.PID != 0 {
		t.Fatalf("app after pre: %+v %v %v", info, ok, err)
	}
	if pid := n.DaemonPID(); pid != daemonPID || pid == 0 {
		t.Fatalf("pm2 daemon pid %d before, %d after: pre spawned or killed a daemon", daemonPID, pid)
	}
	if foreign, err := n.ForeignFiles(); err != nil || len(foreign) > 0 {
		t.Fatalf("files in PM2_HOME not owned by the app user: %v %v", foreign, err)
	}
	st, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil || !strings.Contains(string(st), `"open": true`) || !strings.Contains(string(st), `"status": "ok"`) {
		t.Fatalf("state after pre: %v\n%s", err, st)
	}

	// pre again converges: still exactly one jump and one rule per family.
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 || !strings.HasPrefix(r.stdout, "patchagent pre: ok in ") {
		t.Fatalf("second pre: exit %d", r.code)
	}
	assertBlocked(t, n)
}

func TestPreServesAKeepAliveBurstAndEndsSoonAfter(t *testing.T) {
	// A keep-alive client in a burst (a request every 10ms on one
	// connection, begun before the block) is served to the end: the drain
	// waits while its gaps are shorter than drain.keepalive_idle (250ms
	// here, for a margin on a loaded machine), and ends about that long
	// after the burst, not drain.idle (1s).
	n := setupNode(t, "pa-e2k", map[string]string{"KEEPALIVE_MS": "60000"})
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  keepalive_idle: 250ms\n")
	ctx := context.Background()
	c := n.Client(false)
	if code, err := get(ctx, c, n.URL("/", false)); err != nil || code != 200 {
		t.Fatalf("warm-up: %d %v", code, err)
	}
	type burst struct {
		ok, failed int
		lastErr    error
		end        time.Time
	}
	done := make(chan burst, 1)
	go func() {
		var b burst
		for until := time.Now().Add(1500 * time.Millisecond); time.Now().Before(until); {
			if code, err := get(ctx, c, n.URL("/slow?ms=20", false)); err != nil || code != 200 {
				b.failed, b.lastErr = b.failed+1, fmt.Errorf("%d %v", code, err)
			} else {
				b.ok++
			}
			time.Sleep(10 * time.Millisecond)
		}
		b.end = time.Now()
		done <- b
	}()
	time.Sleep(200 * time.Millisecond)
	r := patchagent(t, n, "pre", "--config", cfg, "--output", "json")
	b := <-done
	if r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	if b.failed > 0 || b.ok < 10 {
		t.Fatalf("burst: %d ok, %d failed (last: %v)", b.ok, b.failed, b.lastErr)
	}
	if !r.ended.After(b.end) {
		t.Fatalf("pre ended %s before the burst did", b.end.Sub(r.ended))
	}
	// 0.25s keep-alive idle + the stop (~0.15s); drain.idle would be 1s+.
	after := r.ended.Sub(b.end)
	t.Logf("burst: %d requests ok; pre ended %s after it", b.ok, after)
	if after > 900*time.Millisecond {
		t.Fatalf("pre ended %s after the burst, want well under drain.idle (1s) plus the stop", after)
	}
	assertBlocked(t, n)
}

func TestPreDrainTimeoutCutsANeverIdleConnection(t *testing.T) {
	n := setupNode(t, "pa-e2t", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 500ms\n  keepalive_idle: 500ms\n  timeout: 2s\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// A chatty client: one keep-alive connection, a request every 100 ms,
	// never idle for 500 ms (drain.keepalive_idle: it answers requests).
	c := n.Client(false)
	c.Transport.(*http.Transport).MaxConnsPerHost = 1
	if code, err := get(ctx, c, n.URL("/", false)); err != nil || code != 200 {
		t.Fatalf("chatty client: %d %v", code, err)
	}
	ended := make(chan error, 1)
	var ok int
	go func() {
		for {
			code, err := get(ctx, c, n.URL("/", false))
			if err != nil || code != 200 {
				ended <- errors.Join(err, errors.New("status "+strconv.Itoa(code)))
				return
			}
			ok++
			time.Sleep(100 * time.Millisecond)
		}
	}()
	time.Sleep(200 * time.Millisecond)
	r := patchagent(t, n, "pre", "--config", cfg, "--output", "json")
	if r.code != 0 {
		t.Fatalf("pre exit %d", r.code)
	}
	w, _ := r.report["warnings"].([]any)
	if len(w) != 1 || !strings.Contains(w[0].(string), "drain timed out after 2s with 1 connection(s) still busy") {
		t.Fatalf("warnings: %v", w)
	}
	if r.took < 2*time.Second || r.took > 8*time.Second {
		t.Fatalf("pre took %s with a 2s drain timeout", r.took)
	}
	select {
	case err := <-ended:
		t.Logf("chatty client cut after %d requests: %v", ok, err)
	case <-time.After(5 * time.Second):
		t.Fatal("the never-idle connection was not cut by the stop")
	}
	assertBlocked(t, n)
}

func TestPreRefusesBeforeBlockingAndNeverSpawnsPM2(t *testing.T) {
	n := setupNode(t, "pa-e2p", nil)
	ctx := context.Background()

	// --dry-run: the plan, and nothing changes.
	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "")
	r := patchagent(t, n, "pre", "--config", cfg, "--dry-run")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "patchagent pre: dry run, nothing changed") ||
		!strings.Contains(r.stdout, "would: iptables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK") {
		t.Fatalf("dry run: exit %d\n%s", r.code, r.stdout)
	}
	assertNotBlocked(t, n)
	if _, err := os.Stat(filepath.Join(stateDir, "state.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("dry run wrote state: %v", err)
	}

	// Unknown app: a config error (exit 2) before anything is blocked.
	cfg, _ = writeConfig(t, n, "no-such-app", "")
	r = patchagent(t, n, "pre", "--config", cfg)
	first := strings.SplitN(r.stdout, "\n", 2)[0]
	if r.code != 2 || !strings.Contains(first, "nothing was blocked") || !strings.Contains(first, `unknown pm2 app "no-such-app"`) {
		t.Fatalf("unknown app: exit %d, first line %q", r.code, first)
	}
	assertNotBlocked(t, n)
	if info, ok, err := n.App(ctx); err != nil || !ok || info.Status != "online" {
		t.Fatalf("the real app was touched: %+v %v %v", info, ok, err)
	}

	// pm2 daemon not running: a clear error, nothing blocked, no daemon
	// spawned (by root or the user).
	if err := n.KillPM2(ctx); err != nil {
		t.Fatal(err)
	}
	cfg, _ = writeConfig(t, n, n.Opts.AppName, "")
	r = patchagent(t, n, "pre", "--config", cfg)
	first = strings.SplitN(r.stdout, "\n", 2)[0]
	if r.code != 1 || !strings.Contains(first, "pm2 daemon not running (PM2_HOME="+n.PM2Home+")") || !strings.Contains(first, "nothing was blocked") {
		t.Fatalf("dead daemon: exit %d, first line %q", r.code, first)
	}
	assertNotBlocked(t, n)
	if _, err := os.Stat(filepath.Join(n.PM2Home, "pm2.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a pm2 daemon was spawned: pm2.pid %v", err)
	}
	if pids, err := n.PM2Daemons(); err != nil || len(pids) != 0 {
		t.Fatalf("pm2 daemon processes exist after pre: %v", pids)
	}
}

func TestPreTextVerdict(t *testing.T) {
	n := setupNode(t, "pa-e2v", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 200ms\n")
	r := patchagent(t, n, "pre", "--config", cfg)
	lines := strings.Split(r.stdout, "\n")
	want := "(blocked 443/tcp v4+v6, drained 0 connection(s), stopped " + n.Opts.AppName + ")"
	if r.code != 0 || !strings.HasPrefix(lines[0], "patchagent pre: ok in ") || !strings.HasSuffix(lines[0], want) {
		t.Fatalf("verdict %q", lines[0])
	}
	if len(r.stdout) > 2500 {
		t.Fatalf("output %d characters", len(r.stdout))
	}
	// Progress went to stderr, live.
	if !strings.Contains(r.stderr, "drain: 0 connection(s)") || !strings.Contains(r.stderr, "stop: pm2 stop "+n.Opts.AppName) {
		t.Fatalf("no progress on stderr:\n%s", r.stderr)
	}
}

func get(ctx context.Context, c *http.Client, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	return sandbox.Get(ctx, c, url)
}

// assertBlocked checks the rules (one jump, one rule per family) and that
// new connections from the client netns are refused on IPv4 and IPv6.
func assertBlocked(t *testing.T, n *sandbox.Node) {
	t.Helper()
	rules := iptablesS(t, n)
	if strings.Count(rules, "-A INPUT -j PATCHAGENT-BLOCK") != 2 || strings.Count(rules, "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset") != 2 {
		t.Fatalf("want one jump and one rule per family:\n%s", rules)
	}
	for _, v6 := range []bool{false, true} {
		err := dialFromClient(n, v6)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("new connection (v6=%v) not refused: %v", v6, err)
		}
	}
}

func assertNotBlocked(t *testing.T, n *sandbox.Node) {
	t.Helper()
	if rules := iptablesS(t, n); strings.Contains(rules, "PATCHAGENT") {
		t.Fatalf("rules of ours present:\n%s", rules)
	}
}

func dialFromClient(n *sandbox.Node, v6 bool) error {
	addr := net.JoinHostPort(n.ServerV4.String(), "443")
	if v6 {
		addr = net.JoinHostPort(n.ServerV6.String(), "443")
	}
	return n.InClient(func() error {
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
}
