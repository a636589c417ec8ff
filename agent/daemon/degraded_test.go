package daemon

import (
	"context"
	"errors"
	"sync/atomic"
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
	a, err := BuildOrWait(context.Background(), build, n, 200*time.Millisecond, zaptest.NewLogger(t), m)
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
	_, err := BuildOrWait(ctx, func() (*agent.Agent, error) { return nil, errors.New("boom") }, nil, 0, zaptest.NewLogger(t), m)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want the context's error, got %v", err)
	}
}
