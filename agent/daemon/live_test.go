package daemon

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// liveRig is a Live over a config file of the test's own; each Agent it
// builds has a state store of its own in one state dir (so that only
// AdoptState carries one over) and an app that pm2 does not answer for
// (a phase run fails at its check: these tests are about which config
// runs, not the phase).
type liveRig struct {
	path   string
	state  string
	live   *Live
	m      *agent.Metrics
	app    *downApp
	stores []*agent.StateStore
}

func newLiveRig(t *testing.T, body string) *liveRig {
	t.Helper()
	r := &liveRig{path: filepath.Join(t.TempDir(), "config.yaml"), state: t.TempDir(), m: agent.NewMetrics(prometheus.NewRegistry(), "test"), app: &downApp{}}
	r.write(t, body)
	load := func(p string) (agent.Config, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return agent.Config{}, err
		}
		return agent.ParseConfig(p, b)
	}
	log := zaptest.NewLogger(t)
	build := func(cfg agent.Config) (*agent.Agent, error) {
		store := agent.NewStateStore(r.state)
		r.stores = append(r.stores, store)
		return agent.New(cfg, agent.Deps{
			Log: log, Firewall: &leftoverFW{}, App: r.app, AppUser: "node", Health: healthyProbe{}, HealthName: "health-check",
			HealthPolicy: healthcheck.Policy{Interval: time.Millisecond, Deadline: 100 * time.Millisecond, Successes: 1},
			State:        store, Lock: agent.NewPhaseLock(r.state), Metrics: r.m,
			BootID: func() (string, error) { return "boot-1", nil },
		}), nil
	}
	cfg, err := load(r.path)
	if err != nil {
		t.Fatal(err)
	}
	a, _ := build(cfg)
	r.live = NewLive(r.path, a, log, build)
	r.live.load = load
	return r
}

func (r *liveRig) write(t *testing.T, body string) {
	t.Helper()
	if err := os.WriteFile(r.path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// downApp is an app whose pm2 does not answer; it counts the calls.
type downApp struct {
	mu    sync.Mutex
	calls int
}

var errPM2Down = errors.New("pm2 does not answer")

func (a *downApp) called() int { a.mu.Lock(); defer a.mu.Unlock(); return a.calls }
func (a *downApp) count()      { a.mu.Lock(); a.calls++; a.mu.Unlock() }
func (a *downApp) Processes(ctx context.Context, app string) ([]hooks.Process, error) {
	a.count()
	return nil, errPM2Down
}
func (a *downApp) Stop(ctx context.Context, app string) ([]hooks.Process, error) {
	a.count()
	return nil, errPM2Down
}
func (a *downApp) Start(ctx context.Context, app string) error { a.count(); return errPM2Down }
func (a *downApp) StartFrom(ctx context.Context, app, source string) error {
	a.count()
	return errPM2Down
}
func (a *downApp) Proc(pid int) (hooks.ProcInfo, error) {
	return hooks.ProcInfo{}, hooks.ErrProcessGone
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
	// What the first store keeps unwritten must be what the next agent reads.
	r.stores[0].Remember(agent.State{CycleID: "kept-in-memory"}, errors.New("read-only file system"))
	r.write(t, strings.Replace(liveBase, "idle: 100ms", "idle: 150ms", 1))
	if changed, err := r.live.Reload(ctx, "test"); err != nil || !changed {
		t.Fatalf("edited file: changed %v, %v", changed, err)
	}
	a := r.live.Agent()
	if a == first || a.Config().Drain.Idle.D() != 150*time.Millisecond {
		t.Fatalf("the edit is not what runs: drain.idle %s", a.Config().Drain.Idle)
	}
	if st, _ := a.State(); st.CycleID != "kept-in-memory" {
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
	if rep := r.live.RunPhase(ctx, "pre", agent.RunOptions{}, io.Discard); rep.Phase != "pre" || r.app.called() == 0 {
		t.Fatalf("pre did not run: %s", rep.Text())
	}
	if got := r.live.Agent().Config().Drain.Idle.D(); got != 120*time.Millisecond {
		t.Fatalf("the new cycle's pre ran drain.idle %s", got)
	}
	// Mid-cycle: exit runs the config the cycle started with.
	if err := r.stores[len(r.stores)-1].Save(agent.State{CycleID: "c1", Open: true, Phase: "pre", Status: agent.StatusOK, Step: "done"}); err != nil {
		t.Fatal(err)
	}
	during := r.live.Agent()
	r.write(t, strings.Replace(liveBase, "idle: 100ms", "idle: 130ms", 1))
	if rep := r.live.RunPhase(ctx, "exit", agent.RunOptions{}, io.Discard); rep.Phase != "exit" {
		t.Fatal(rep.Text())
	}
	if r.live.Agent() != during {
		t.Fatal("exit reloaded the config in the middle of a cycle")
	}
	// A broken edit before the next cycle: pre is refused, nothing done.
	if err := r.stores[len(r.stores)-1].Save(agent.State{CycleID: "c1", Open: false, Status: agent.StatusOK}); err != nil {
		t.Fatal(err)
	}
	r.write(t, "app:\n  name: [web\n")
	calls := r.app.called()
	rep := r.live.RunPhase(ctx, "pre", agent.RunOptions{}, io.Discard)
	if rep.ExitCode != agent.ExitUsage || !strings.Contains(rep.Verdict(), "was edited and cannot be used") || r.app.called() != calls {
		t.Fatalf("pre with a broken config: %d %q", rep.ExitCode, rep.Verdict())
	}
	if r.live.Agent() != during {
		t.Fatal("a broken edit replaced the running agent")
	}
}
