package agent

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// liveRig is a Live over a config file of the test's own: each Agent it
// builds is the test env's, with the loaded config.
type liveRig struct {
	e    *testEnv
	path string
	live *Live
	m    *Metrics
}

func newLiveRig(t *testing.T, body string) *liveRig {
	t.Helper()
	r := &liveRig{e: newTestEnv(t), path: filepath.Join(t.TempDir(), "config.yaml"), m: NewMetrics(prometheus.NewRegistry(), "test")}
	r.write(t, body)
	load := func(p string) (Config, error) { return loadConfig(p, uint32(os.Geteuid())) }
	build := func(cfg Config) (*Agent, error) {
		r.e.cfg = cfg
		a := r.e.agent(t)
		a.d.Metrics = r.m
		return a, nil
	}
	cfg, err := load(r.path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := build(cfg)
	r.live = NewLive(r.path, a, a.log, build)
	r.live.load = load
	return r
}

func (r *liveRig) write(t *testing.T, body string) {
	t.Helper()
	if err := os.WriteFile(r.path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

const liveBase = "app:\n  name: web\ndrain:\n  idle: 100ms\n  timeout: 300ms\n  interval: 1ms\n"

func TestLiveReloadsAnEditedConfig(t *testing.T) {
	r := newLiveRig(t, liveBase)
	ctx := context.Background()
	first := r.live.Agent()
	if changed, err := r.live.Reload(ctx, "test"); err != nil || changed {
		t.Fatalf("unchanged file: changed %v, %v", changed, err)
	}
	if r.live.Agent() != first {
		t.Fatal("an unchanged file rebuilt the agent")
	}
	r.write(t, strings.Replace(liveBase, "idle: 100ms", "idle: 150ms", 1))
	if changed, err := r.live.Reload(ctx, "test"); err != nil || !changed {
		t.Fatalf("edited file: changed %v, %v", changed, err)
	}
	a := r.live.Agent()
	if a == first || a.cfg.Drain.Idle.D() != 150*time.Millisecond {
		t.Fatalf("the edit is not what runs: drain.idle %s", a.cfg.Drain.Idle)
	}
	if a.d.State != first.d.State {
		t.Fatal("the state store (and what it kept unwritten) did not carry over")
	}
	if got := testutil.ToFloat64(r.m.ReloadOK); got != 1 {
		t.Fatalf("patchagent_config_last_reload_successful %v", got)
	}
}

func TestLiveKeepsTheRunningConfigOnABadEdit(t *testing.T) {
	for _, tt := range []struct{ name, body, want string }{
		{"does not parse", "app:\n  nme: web\n", "nme: unknown key"},
		{"invalid", liveBase + "health:\n  successes: -1\n", "successes"},
		{"restart-only field", liveBase + "daemon:\n  socket: /run/other.sock\n", "[daemon.socket] changed: the daemon binds them at start"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := newLiveRig(t, liveBase)
			first := r.live.Agent()
			r.write(t, tt.body)
			changed, err := r.live.Reload(context.Background(), "test")
			if err == nil || changed || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("changed %v, err %v; want %q", changed, err, tt.want)
			}
			if r.live.Agent() != first {
				t.Fatal("a refused edit replaced the running agent")
			}
			if got := testutil.ToFloat64(r.m.ReloadOK); got != 0 {
				t.Fatalf("patchagent_config_last_reload_successful %v after a refused edit", got)
			}
		})
	}
}

// TestLiveNewCycleRunsTheEditedConfig: the daemon re-reads its file before
// a pre that opens a cycle (not in the middle of one), and refuses that
// pre, changing nothing, when the edit cannot be used.
func TestLiveNewCycleRunsTheEditedConfig(t *testing.T) {
	r := newLiveRig(t, liveBase)
	ctx := context.Background()
	r.write(t, strings.Replace(liveBase, "idle: 100ms", "idle: 120ms", 1))
	if rep := r.live.RunPhase(ctx, "pre", RunOptions{}, io.Discard); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if got := r.live.Agent().cfg.Drain.Idle.D(); got != 120*time.Millisecond {
		t.Fatalf("the new cycle's pre ran drain.idle %s", got)
	}
	// Mid-cycle: exit runs the config the cycle started with.
	during := r.live.Agent()
	r.write(t, strings.Replace(liveBase, "idle: 100ms", "idle: 130ms", 1))
	if rep := r.live.RunPhase(ctx, "exit", RunOptions{}, io.Discard); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if r.live.Agent() != during {
		t.Fatal("exit reloaded the config in the middle of a cycle")
	}
	// A broken edit before the next cycle: pre is refused, nothing done.
	r.write(t, "app:\n  name: [web\n")
	r.e.ev.log = nil
	rep := r.live.RunPhase(ctx, "pre", RunOptions{}, io.Discard)
	if rep.ExitCode != ExitUsage || !strings.Contains(rep.Verdict(), "was edited and cannot be used") || len(r.e.ev.all()) != 0 {
		t.Fatalf("pre with a broken config: %d %q, events %q", rep.ExitCode, rep.Verdict(), r.e.ev.all())
	}
	if r.live.Agent() != during {
		t.Fatal("a broken edit replaced the running agent")
	}
}
