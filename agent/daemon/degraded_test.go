package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
)

// TestBuildOrWaitStaysUpDegraded: a build that fails (the app user not
// known yet at boot) leaves the daemon up: READY=1 with a STATUS= that
// says why, the watchdog fed, patchagent_daemon_degraded 1, retried until
// the build works; before, the daemon exited into systemd's start limit.
func TestBuildOrWaitStaysUpDegraded(t *testing.T) {
	n := &recNotifier{ev: &events{}}
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	var tries atomic.Int32
	var seenDegraded atomic.Bool
	build := func() (*agent.Agent, error) {
		if testutil.ToFloat64(m.Degraded) == 1 {
			seenDegraded.Store(true)
		}
		if tries.Add(1) < 3 {
			return nil, errors.New(`app.user: unknown user "web"`)
		}
		return agent.New(agent.DefaultConfig(), agent.Deps{Log: zaptest.NewLogger(t)}), nil
	}
	a, err := BuildOrWait(context.Background(), build, n, WaitOptions{Watchdog: 200 * time.Millisecond}, zaptest.NewLogger(t), m)
	if err != nil || a == nil {
		t.Fatalf("BuildOrWait: %v", err)
	}
	if tries.Load() != 3 || !seenDegraded.Load() || testutil.ToFloat64(m.Degraded) != 0 {
		t.Fatalf("%d tries, degraded seen %v, gauge now %v", tries.Load(), seenDegraded.Load(), testutil.ToFloat64(m.Degraded))
	}
	if want := "READY=1\nSTATUS=degraded, phases not served: app.user: unknown user \"web\""; n.count(want) != 1 {
		t.Fatalf("no %q in %q", want, n.msgs)
	}
	// The retries (1 s, then 2 s) span seconds: a 200 ms watchdog needs
	// pings meanwhile.
	if n.count("WATCHDOG=1") < 3 {
		t.Fatalf("watchdog not fed while degraded: %q", n.msgs)
	}
}

func TestBuildOrWaitEndsWithTheDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	_, err := BuildOrWait(ctx, func() (*agent.Agent, error) { return nil, errors.New("boom") }, nil, WaitOptions{}, zaptest.NewLogger(t), m)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
}

// TestBuildOrWaitGivesUpOnAMisconfiguredNode: still failing once
// daemon.node_wait has passed, with no cycle open, BuildOrWait returns
// ErrNodeNotReady naming the reason (the daemon exits 2, which systemd
// does not restart), and says so in STATUS=; a limit of 0 never gives up.
func TestBuildOrWaitGivesUpOnAMisconfiguredNode(t *testing.T) {
	n := &recNotifier{ev: &events{}}
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	var asked atomic.Int32
	o := WaitOptions{Limit: 1500 * time.Millisecond, CycleOpen: func() (bool, error) { asked.Add(1); return false, nil }}
	start := time.Now()
	_, err := BuildOrWait(context.Background(), func() (*agent.Agent, error) { return nil, errors.New(`app.user: unknown user "web"`) }, n, o, zaptest.NewLogger(t), m)
	if !errors.Is(err, ErrNodeNotReady) || !strings.Contains(err.Error(), `unknown user "web"`) || !strings.Contains(err.Error(), "node_wait 1.5s") {
		t.Fatalf("want ErrNodeNotReady naming the user and the wait, got %v", err)
	}
	// Retries at 1 s and 3 s: the one at 3 s is the first past the limit.
	if d := time.Since(start); d < o.Limit || asked.Load() != 1 {
		t.Fatalf("gave up after %s having asked about the cycle %d times", d, asked.Load())
	}
	if testutil.ToFloat64(m.Degraded) != 0 {
		t.Fatal("patchagent_daemon_degraded still 1 after giving up")
	}
	if n.count("STATUS=stopped: the node is not ready for the agent: still failing after daemon.node_wait 1.5s: app.user: unknown user \"web\"; fix it, then systemctl restart patchagent") != 1 {
		t.Fatalf("no stopped STATUS= in %q", n.msgs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3500*time.Millisecond)
	defer cancel()
	_, err = BuildOrWait(ctx, func() (*agent.Agent, error) { return nil, errors.New("boom") }, nil, WaitOptions{CycleOpen: o.CycleOpen}, zaptest.NewLogger(t), m)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("node_wait 0 gave up: %v", err)
	}
}

// TestBuildOrWaitStaysUpWhileACycleIsOpen: past the limit, an open cycle
// (or a state that cannot be read) keeps the daemon up, asked again at
// each retry; once the cycle is closed (an exit run by the hook in its own
// process) it gives up.
func TestBuildOrWaitStaysUpWhileACycleIsOpen(t *testing.T) {
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	var asked atomic.Int32
	answers := []error{nil, errors.New("state unreadable")}
	o := WaitOptions{Limit: time.Millisecond, CycleOpen: func() (bool, error) {
		i := int(asked.Add(1)) - 1
		if i < len(answers) {
			return answers[i] == nil, answers[i]
		}
		return false, nil
	}}
	_, err := BuildOrWait(context.Background(), func() (*agent.Agent, error) { return nil, errors.New("pm2 not found") }, nil, o, zaptest.NewLogger(t), m)
	if !errors.Is(err, ErrNodeNotReady) || asked.Load() != 3 {
		t.Fatalf("want ErrNodeNotReady on the third question (open, unreadable, closed), got %v after %d", err, asked.Load())
	}
}

// TestBuildOrWaitRetriesAtOnceOnWake: SIGHUP (systemctl reload after the
// config is fixed) makes a degraded daemon retry at once, not at its next
// backoff step.
func TestBuildOrWaitRetriesAtOnceOnWake(t *testing.T) {
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	wake := make(chan os.Signal, 1)
	var tries atomic.Int32
	build := func() (*agent.Agent, error) {
		if tries.Add(1) == 1 {
			wake <- syscall.SIGHUP
			return nil, errors.New(`app.user: unknown user "web"`)
		}
		return agent.New(agent.DefaultConfig(), agent.Deps{Log: zaptest.NewLogger(t)}), nil
	}
	start := time.Now()
	a, err := BuildOrWait(context.Background(), build, nil, WaitOptions{Wake: wake}, zaptest.NewLogger(t), m)
	if err != nil || a == nil || tries.Load() != 2 {
		t.Fatalf("BuildOrWait: %v after %d tries", err, tries.Load())
	}
	// The first backoff step is 1 s.
	if d := time.Since(start); d >= degradedFirstRetry {
		t.Fatalf("retried after %s, not at once", d)
	}
}

// TestRebuilderReadsTheFileAsItNowIs: each degraded try builds from the
// config file as it is then, so its fix needs no restart; an edit of what
// the daemon bound at start is refused, as a reload refuses it.
func TestRebuilderReadsTheFileAsItNowIs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	write := func(body string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("app:\n  name: web\n  user: ldap-only-user\n")
	started, err := agent.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var built []string
	rebuild := Rebuilder(path, started, func(cfg agent.Config) (*agent.Agent, error) {
		built = append(built, cfg.App.User)
		if cfg.App.User == "ldap-only-user" {
			return nil, errors.New(`app.user: unknown user "ldap-only-user"`)
		}
		return agent.New(cfg, agent.Deps{Log: zaptest.NewLogger(t)}), nil
	})
	if _, err := rebuild(); err == nil {
		t.Fatal("built with the unknown user")
	}
	write("app:\n  name: web\n  user: web\ndaemon:\n  socket: /run/elsewhere.sock\n")
	if _, err := rebuild(); err == nil || !strings.Contains(err.Error(), "daemon.socket") || !strings.Contains(err.Error(), "systemctl restart patchagent") {
		t.Fatalf("a changed daemon.socket: %v", err)
	}
	write("app:\n  name: web\n  user: web\n")
	a, err := rebuild()
	if err != nil || a.Config().App.User != "web" {
		t.Fatalf("the fixed file: %v", err)
	}
	if want := []string{"ldap-only-user", "web"}; !reflect.DeepEqual(built, want) {
		t.Fatalf("built with users %v, want %v", built, want)
	}
}

// TestBuildOrWaitReassertsWhileDegraded: degraded, nothing else watches an
// open cycle's block: Reassert runs every ReassertEvery until the build
// works.
func TestBuildOrWaitReassertsWhileDegraded(t *testing.T) {
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	var reasserts, tries atomic.Int32
	build := func() (*agent.Agent, error) {
		if tries.Add(1) < 3 { // retried at 1 s and 3 s
			return nil, errors.New("pm2 not found")
		}
		return agent.New(agent.DefaultConfig(), agent.Deps{Log: zaptest.NewLogger(t)}), nil
	}
	o := WaitOptions{Watchdog: 400 * time.Millisecond, ReassertEvery: 200 * time.Millisecond, Reassert: func(context.Context) { reasserts.Add(1) }}
	if _, err := BuildOrWait(context.Background(), build, nil, o, zaptest.NewLogger(t), m); err != nil {
		t.Fatal(err)
	}
	// 3 s degraded, the loop ticking every 200 ms.
	if n := reasserts.Load(); n < 8 {
		t.Fatalf("%d re-asserts in 3 s of degraded start, want one per 200 ms", n)
	}
}
