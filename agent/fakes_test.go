package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"

	"github.com/patchagent/patchagent/agent/internal/testkit"
)

// events records the order of side effects across fakes.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) { e.mu.Lock(); e.log = append(e.log, s); e.mu.Unlock() }
func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

type fakeFirewall struct {
	ev       *events
	state    *StateStore // to check that intent was recorded before acting
	blocked  bool
	blockErr error
	// kernel, if set, is what Status reads instead of the block or nothing.
	kernel map[firewall.Family]firewall.FamilyStatus
}

func (f *fakeFirewall) Families() []firewall.Family {
	return []firewall.Family{firewall.IPv4, firewall.IPv6}
}
func (f *fakeFirewall) Plan() []string {
	return []string{"iptables -t filter -N PATCHAGENT-BLOCK", "iptables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK"}
}
func (f *fakeFirewall) Block(ctx context.Context) error {
	st, _ := f.state.Load()
	f.ev.add(fmt.Sprintf("block (state: open=%v step=%s)", st.Open, st.Step))
	if f.blockErr != nil {
		return f.blockErr
	}
	f.blocked = true
	return nil
}
func (f *fakeFirewall) Unblock(ctx context.Context) error {
	f.ev.add("unblock")
	f.blocked = false
	return nil
}
func (f *fakeFirewall) Status(ctx context.Context) (firewall.Status, error) {
	if f.kernel != nil {
		return firewall.Status{Families: f.kernel}, nil
	}
	fs := firewall.FamilyStatus{}
	if f.blocked {
		fs = firewall.FamilyStatus{Chain: true, Jumps: 1, JumpFirst: true, RulesOK: true}
	}
	return firewall.Status{Families: map[firewall.Family]firewall.FamilyStatus{firewall.IPv4: fs, firewall.IPv6: fs}}, nil
}

// fakeConns replays connection snapshots, one per poll; the last repeats.
type fakeConns struct {
	snaps     [][]firewall.Conn
	polls     int
	listening []firewall.Listener
	// listenUntil: Listening reports the listener until this many calls.
	listenCalls, listenUntil int
}

func (c *fakeConns) Established(ctx context.Context, ports []uint16) ([]firewall.Conn, error) {
	i := min(c.polls, len(c.snaps)-1)
	c.polls++
	if i < 0 {
		return nil, nil
	}
	return c.snaps[i], nil
}
func (c *fakeConns) Listening(ctx context.Context, ports []uint16) ([]firewall.Listener, error) {
	c.listenCalls++
	if c.listenCalls <= c.listenUntil {
		return c.listening, nil
	}
	return nil, nil
}

type fakeApp struct {
	mu       sync.Mutex
	ev       *events
	state    *StateStore
	procs    []hooks.Process
	listErr  error
	stopErr  error
	startErr error
	unknown  bool // pm2 no longer knows the app
	// wall is pm2's wall clock, which stamps Started (pm_uptime) at each
	// start (default time.Now).
	wall func() time.Time
	// born is when each pid started by the monotonic clock: the kernel's
	// record, what Proc reads. A pid missing from it was born at its
	// instance's Started (a test that sets an old Started means an old
	// process), else when Proc first sees it.
	born map[int]time.Time
}

func (a *fakeApp) wallNow() time.Time {
	if a.wall != nil {
		return a.wall()
	}
	return time.Now()
}

// bear records that pid starts now; a.mu is held.
func (a *fakeApp) bear(pid int) {
	if a.born == nil {
		a.born = map[int]time.Time{}
	}
	a.born[pid] = time.Now()
}

func (a *fakeApp) Processes(ctx context.Context, app string) ([]hooks.Process, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.listErr != nil {
		return nil, a.listErr
	}
	if app != "web" || a.unknown {
		return nil, fmt.Errorf("%w %q", hooks.ErrUnknownApp, app)
	}
	return append([]hooks.Process(nil), a.procs...), nil
}

// setProcs changes the app's instances, as pm2 would after a crash.
func (a *fakeApp) setProcs(f func([]hooks.Process)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(a.procs)
}
func (a *fakeApp) Stop(ctx context.Context, app string) ([]hooks.Process, error) {
	st, _ := a.state.Load()
	a.ev.add(fmt.Sprintf("stop %s (state: step=%s stopped=%v)", app, st.Step, st.Stopped != nil))
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.stopErr != nil {
		return nil, a.stopErr
	}
	before := a.procs
	for i := range a.procs {
		delete(a.born, a.procs[i].PID) // that process is gone
		a.procs[i].Status, a.procs[i].PID = hooks.StatusStopped, 0
	}
	return before, nil
}
func (a *fakeApp) Start(ctx context.Context, app string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ev.add("start " + app)
	if a.startErr != nil {
		return a.startErr
	}
	for i := range a.procs {
		if a.procs[i].Status != hooks.StatusOnline {
			a.procs[i].Status, a.procs[i].PID, a.procs[i].Started = hooks.StatusOnline, os.Getpid()+i, a.wallNow()
			a.bear(os.Getpid() + i)
		}
	}
	return nil
}
func (a *fakeApp) StartFrom(ctx context.Context, app, source string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ev.add("start " + app + " from " + source)
	a.procs = []hooks.Process{{Name: app, PID: os.Getpid(), Status: hooks.StatusOnline, Started: a.wallNow(), MinUptime: testMinUptime}}
	a.bear(os.Getpid())
	a.unknown = false
	return nil
}

// crash plays pm2 restarting instance i after a crash: a new pid, the
// restart counter up, a new pm_uptime.
func (a *fakeApp) crash(i int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := &a.procs[i]
	p.PID++
	p.Restarts++
	p.Started = a.wallNow()
	a.bear(p.PID)
}

// Proc plays the kernel: a pid some instance runs is alive, born when born
// says; any other pid has exited.
func (a *fakeApp) Proc(pid int) (hooks.ProcInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range a.procs {
		if p.PID != pid || pid == 0 || p.Status != hooks.StatusOnline {
			continue
		}
		b, ok := a.born[pid]
		if !ok {
			b = p.Started
			if b.IsZero() {
				b = time.Now()
			}
			if a.born == nil {
				a.born = map[int]time.Time{}
			}
			a.born[pid] = b
		}
		return hooks.ProcInfo{Start: uint64(b.UnixNano()), Uptime: time.Since(b)}, nil
	}
	return hooks.ProcInfo{}, fmt.Errorf("pid %d: %w", pid, hooks.ErrProcessGone)
}

// fakeHealth answers probes from a script; the last answer repeats.
type fakeHealth struct {
	mu      sync.Mutex
	answers []healthcheck.Result
	n       int
	// onProbe runs before each answer (e.g. to make the app crash).
	onProbe func(n int)
	// dynamic, if set, answers instead of the script.
	dynamic func() healthcheck.Result
}

func (h *fakeHealth) Probe(ctx context.Context) (healthcheck.Result, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.n++
	if h.onProbe != nil {
		h.onProbe(h.n)
	}
	if h.dynamic != nil {
		return h.dynamic(), nil
	}
	return h.answers[min(h.n, len(h.answers))-1], nil
}

func (h *fakeHealth) String() string { return "http://localhost:443/health-check" }

func (h *fakeHealth) probes() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.n
}

func healthy() healthcheck.Result { return healthcheck.Result{Status: healthcheck.Success, Code: 200} }
func unhealthy(code int) healthcheck.Result {
	return healthcheck.Result{Status: healthcheck.Failure, Code: code, Reason: fmt.Sprintf("status %d", code)}
}

type fakeUnits struct{ ev *events }

func (u *fakeUnits) Stop(ctx context.Context, unit string) error {
	u.ev.add("systemctl stop " + unit)
	return nil
}
func (u *fakeUnits) Start(ctx context.Context, unit string) error {
	u.ev.add("systemctl start " + unit)
	return nil
}

// fakeCommands records each command; each fails with err, if set.
type fakeCommands struct {
	ev  *events
	err error
}

func (c *fakeCommands) Run(ctx context.Context, argv []string) error {
	c.ev.add(fmt.Sprintf("run %v", argv))
	return c.err
}

// conn builds a non-loopback connection; busy ones have a pending request.
func conn(busy bool, idle time.Duration) firewall.Conn {
	c := firewall.Conn{Local: netip.MustParseAddrPort("192.0.2.1:443"), Remote: netip.MustParseAddrPort("192.0.2.2:40000"),
		LastDataSent: idle, LastDataRecv: idle, HasInfo: true}
	if busy {
		c.LastDataSent, c.LastDataRecv = time.Second, 10*time.Millisecond
	}
	return c
}

type testEnv struct {
	cfg    Config
	ev     *events
	fw     *fakeFirewall
	conns  *fakeConns
	app    *fakeApp
	health *fakeHealth
	pkgs   *fakePackages
	// crashAt makes the agent panic right after recording this step, as a
	// SIGKILL there would stop it.
	crashAt string
	state   *StateStore
	lock    *PhaseLock
	boot    string
	// rotation, if set, is the load balancer's side.
	rotation Rotation
	// cmdErr, if set, fails every steps.pre_commands/exit_commands run.
	cmdErr error
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	cfg := DefaultConfig()
	cfg.App.Name = "web"
	cfg.Drain.Interval = Duration(time.Millisecond)
	cfg.Drain.Idle = Duration(100 * time.Millisecond)
	cfg.Drain.Timeout = Duration(300 * time.Millisecond)
	dir := t.TempDir()
	ev := &events{}
	st := NewStateStore(dir)
	return &testEnv{
		cfg: cfg, ev: ev, state: st, lock: NewPhaseLock(dir), boot: "boot-1",
		fw:     &fakeFirewall{ev: ev, state: st},
		conns:  &fakeConns{snaps: [][]firewall.Conn{{}}},
		app:    &fakeApp{ev: ev, state: st, procs: []hooks.Process{{Name: "web", ID: 0, PID: os.Getpid(), Status: hooks.StatusOnline, MinUptime: testMinUptime}}},
		health: &fakeHealth{answers: []healthcheck.Result{healthy()}},
	}
}

func (e *testEnv) agent(t *testing.T) *Agent {
	a := New(e.cfg, Deps{
		Log: zaptest.NewLogger(t), Firewall: e.fw, Conns: e.conns, App: e.app, AppUser: "node",
		Health: e.health, HealthName: "health-check http://localhost:443/health-check",
		HealthPolicy: healthcheck.Policy{Interval: time.Millisecond, Deadline: 500 * time.Millisecond, Successes: e.cfg.Health.Successes},
		Units:        &fakeUnits{ev: e.ev}, Commands: &fakeCommands{ev: e.ev, err: e.cmdErr},
		State: e.state, Lock: e.lock, BootID: func() (string, error) { return e.boot, nil },
	})
	if e.pkgs != nil {
		a.d.Packages = e.pkgs
	}
	if e.rotation != nil {
		a.d.Rotation = e.rotation
	}
	a.d.AfterSave = func(step string) {
		if e.crashAt != "" && step == e.crashAt {
			panic("killed after recording " + step)
		}
	}
	a.listenWait = 200 * time.Millisecond
	a.stableEvery, a.pidEvery = 5*time.Millisecond, time.Millisecond
	return a
}

// testMinUptime is the fake app's pm2 min_uptime: a short stability window
// for the tests that are not about it.
const testMinUptime = 10 * time.Millisecond

var errBoom = errors.New("boom")

// syncBuffer is testkit's, under the name the tests use.
type syncBuffer = testkit.SyncBuffer
