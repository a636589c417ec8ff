package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/firewall"
)

// events is the order of side effects and notifications.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) { e.mu.Lock(); e.log = append(e.log, s); e.mu.Unlock() }
func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.log)
}

// recNotifier records sd_notify messages, also into the events log so their
// order against side effects can be checked.
type recNotifier struct {
	mu   sync.Mutex
	ev   *events
	msgs []string
}

func (n *recNotifier) Notify(s string) error {
	n.mu.Lock()
	n.msgs = append(n.msgs, s)
	n.mu.Unlock()
	n.ev.add("notify " + s)
	return nil
}

func (n *recNotifier) count(prefix string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, m := range n.msgs {
		if strings.HasPrefix(m, prefix) {
			c++
		}
	}
	return c
}

// daemonFW is a firewall safe for the daemon's goroutines; with hang set,
// Status blocks (ignoring its context, as go-iptables does) until closed.
type daemonFW struct {
	mu       sync.Mutex
	ev       *events
	blocked  bool
	blocks   int
	blockErr error
	hang     chan struct{}
	hung     chan struct{} // closed when a Status call hangs
}

func (f *daemonFW) Families() []firewall.Family { return []firewall.Family{firewall.IPv4} }
func (f *daemonFW) Plan() []string              { return []string{"iptables -N PATCHAGENT-BLOCK"} }
func (f *daemonFW) Block(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ev.add("block")
	if f.blockErr != nil {
		return f.blockErr
	}
	f.blocked = true
	f.blocks++
	return nil
}
func (f *daemonFW) Unblock(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ev.add("unblock")
	f.blocked = false
	return nil
}
func (f *daemonFW) Status(ctx context.Context) (firewall.Status, error) {
	f.mu.Lock()
	hang, hung := f.hang, f.hung
	f.mu.Unlock()
	if hang != nil {
		select {
		case <-hung:
		default:
			close(hung)
		}
		<-hang
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fs := firewall.FamilyStatus{}
	if f.blocked {
		fs = firewall.FamilyStatus{Chain: true, Jumps: 1, JumpFirst: true, RulesOK: true}
	}
	return firewall.Status{Families: map[firewall.Family]firewall.FamilyStatus{firewall.IPv4: fs}}, nil
}
func (f *daemonFW) set(blocked bool) { f.mu.Lock(); f.blocked = blocked; f.mu.Unlock() }
func (f *daemonFW) get() (blocked bool, blocks int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.blocked, f.blocks
}

// fakeServer plays the control socket: a phase may be running; Wait
// returns when it ends (end closed) or ctx is done.
type fakeServer struct {
	mu       sync.Mutex
	phase    string
	since    time.Time // when the phase started (zero: now)
	end      chan struct{}
	phaseCtx context.Context
	shutdown bool
	// ctxLiveAtEnd: the phase context was still live when Wait saw the
	// phase end.
	ctxLiveAtEnd bool
}

func (s *fakeServer) Running() (string, time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	since := s.since
	if since.IsZero() {
		since = time.Now()
	}
	return s.phase, since, s.phase != ""
}
func (s *fakeServer) Wait(ctx context.Context) error {
	s.mu.Lock()
	end, pctx := s.end, s.phaseCtx
	s.mu.Unlock()
	if end == nil {
		return nil
	}
	select {
	case <-end:
		s.mu.Lock()
		s.ctxLiveAtEnd = pctx.Err() == nil
		s.mu.Unlock()
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
func (s *fakeServer) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.shutdown = true
	s.mu.Unlock()
	return nil
}
func (s *fakeServer) SetPhaseContext(ctx context.Context) {
	s.mu.Lock()
	s.phaseCtx = ctx
	s.mu.Unlock()
}
func (s *fakeServer) setPhase(p string) { s.mu.Lock(); s.phase = p; s.mu.Unlock() }

// fakeCycle is the patch cycle as the loop sees it: a recorded state, the
// firewall, and what its decisions do (Reassert re-blocks an open cycle;
// Exit closes the cycle and unblocks when healthy; Reconcile blocks an
// open cycle), each recorded.
type fakeCycle struct {
	t   *testing.T
	cfg agent.Config
	m   *agent.Metrics
	fw  *daemonFW
	ev  *events
	now func() time.Time

	mu         sync.Mutex
	st         agent.State
	stErr      error
	healthy    bool
	exits      []agent.RunOptions
	reconciles []agent.RunOptions
	reasserts  int
	reconcile  func() *agent.Report // nil: block an open cycle, ok
}

func (c *fakeCycle) Config() agent.Config    { return c.cfg }
func (c *fakeCycle) Metrics() *agent.Metrics { return c.m }
func (c *fakeCycle) Log() *zap.Logger        { return zaptest.NewLogger(c.t) }
func (c *fakeCycle) Now() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}
func (c *fakeCycle) State() (agent.State, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st, c.stErr
}
func (c *fakeCycle) setState(st agent.State) { c.mu.Lock(); c.st = st; c.mu.Unlock() }
func (c *fakeCycle) FirewallStatus(ctx context.Context) (firewall.Status, error) {
	return c.fw.Status(ctx)
}
func (c *fakeCycle) Reassert(ctx context.Context) (bool, error) {
	c.mu.Lock()
	open := c.st.Open
	c.reasserts++
	c.mu.Unlock()
	if b, _ := c.fw.get(); !open || b {
		return false, nil
	}
	return true, c.fw.Block(ctx)
}
func (c *fakeCycle) Reconcile(ctx context.Context, opt agent.RunOptions) *agent.Report {
	c.mu.Lock()
	c.reconciles = append(c.reconciles, opt)
	c.mu.Unlock()
	if c.reconcile != nil {
		return c.reconcile()
	}
	st, _ := c.State()
	if b, _ := c.fw.get(); st.Open && !b {
		_ = c.fw.Block(ctx)
	}
	return &agent.Report{Phase: "reconcile", Result: agent.ResultOK}
}
func (c *fakeCycle) Exit(ctx context.Context, opt agent.RunOptions) *agent.Report {
	c.mu.Lock()
	c.exits = append(c.exits, opt)
	healthy := c.healthy
	c.st.Phase, c.st.Attempts, c.st.UpdatedAt = "exit", c.st.Attempts+1, c.Now()
	if healthy {
		c.st.Open, c.st.Status = false, agent.StatusOK
	}
	c.mu.Unlock()
	if !healthy {
		return &agent.Report{Phase: "exit", Result: agent.ResultFailed, ExitCode: agent.ExitFailed, Error: "unhealthy"}
	}
	_ = c.fw.Unblock(ctx)
	return &agent.Report{Phase: "exit", Result: agent.ResultOK}
}
func (c *fakeCycle) exitCount() int { c.mu.Lock(); defer c.mu.Unlock(); return len(c.exits) }

type daemonRig struct {
	c   *fakeCycle
	ev  *events
	fw  *daemonFW
	srv *fakeServer
	n   *recNotifier
	m   *agent.Metrics
	o   Options
}

func newDaemonRig(t *testing.T) *daemonRig {
	ev := &events{}
	cfg := agent.DefaultConfig()
	cfg.Daemon.MaxOutOfService = agent.Duration(time.Hour)
	fw := &daemonFW{ev: ev}
	m := agent.NewMetrics(prometheus.NewRegistry(), "test")
	return &daemonRig{
		c:  &fakeCycle{t: t, cfg: cfg, m: m, fw: fw, ev: ev, healthy: true},
		ev: ev, fw: fw, srv: &fakeServer{}, n: &recNotifier{ev: ev}, m: m,
		o: Options{Tick: 10 * time.Millisecond, StopTimeout: 3 * time.Second, Watchdog: time.Second},
	}
}

// start runs the daemon until the returned stop is called (or the test
// ends); stop returns how long Run took to return, and its error.
func (r *daemonRig) start(t *testing.T) (stop func() (time.Duration, error)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan error, 1)
	go func() { ch <- Run(ctx, r.c, r.srv, r.n, r.o) }()
	var once sync.Once
	var err error
	var took time.Duration
	stop = func() (time.Duration, error) {
		once.Do(func() {
			t0 := time.Now()
			cancel()
			select {
			case err = <-ch:
			case <-time.After(10 * time.Second):
				t.Fatal("Run did not return")
			}
			took = time.Since(t0)
		})
		return took, err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// openCycle records a cycle pre left open, last active at updated.
func openCycle(r *daemonRig, boot string, updated time.Time) {
	r.c.setState(agent.State{CycleID: "c1", Open: true, BootID: boot, Phase: "pre", Status: agent.StatusOK, Step: "stop",
		Block:          &agent.BlockRecord{Chain: "PATCHAGENT-BLOCK", Ports: []uint16{443}, BootID: boot, Since: updated},
		CycleStartedAt: updated, PhaseStartedAt: updated, UpdatedAt: updated})
}

func TestDaemonBootReblocksBeforeReady(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(r, "boot-0", time.Now()) // rebooted: rules gone
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	evs := r.ev.all()
	iBlock := slices.Index(evs, "block")
	iReady := slices.IndexFunc(evs, func(s string) bool { return strings.HasPrefix(s, "notify READY=1") })
	if iBlock < 0 || iBlock > iReady {
		t.Fatalf("block must come before READY=1: %q", evs)
	}
	if want := "notify READY=1\nSTATUS=cycle c1 open, blocked"; evs[iReady] != want {
		t.Fatalf("ready message %q, want %q", evs[iReady], want)
	}
}

func TestDaemonBootReconcileFailureIsNotReady(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(r, "boot-0", time.Now())
	r.c.reconcile = func() *agent.Report {
		return &agent.Report{Phase: "reconcile", Result: agent.ResultFailed, ExitCode: agent.ExitFailed, Error: "boom"}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := Run(ctx, r.c, r.srv, r.n, r.o)
	if err == nil || !strings.Contains(err.Error(), "boom") || ctx.Err() != nil {
		t.Fatalf("want the reconciliation's error at once, got %v", err)
	}
	if r.n.count("READY=1") != 0 {
		t.Fatal("READY=1 sent although the block could not be re-applied")
	}
}

// TestDaemonBootLeavesALockedStateToItsPhase: the boot reconciliation does
// not wait for the phase lock: held by a hook's phase run in its own
// process (longer, maybe, than the boot may take), the daemon comes up
// anyway instead of exiting into a restart, and leaves the state to that
// phase.
func TestDaemonBootLeavesALockedStateToItsPhase(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(r, "boot-1", time.Now())
	r.c.reconcile = func() *agent.Report {
		return &agent.Report{Phase: "reconcile", Result: agent.ResultFailed, ExitCode: agent.ExitLocked, Error: "another patchagent phase is running (held by pid 42 running exit)"}
	}
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	if len(r.c.reconciles) == 0 || !r.c.reconciles[0].NoLockWait {
		t.Fatalf("the boot reconciliation waited for the lock: %+v", r.c.reconciles)
	}
}

// TestDaemonBootWithAnUnreadableStateComesUp: E2 of issue 13. The boot
// re-block kept our block as it was; the daemon reports READY and says
// the state file is unreadable, without reconciling.
func TestDaemonBootWithAnUnreadableStateComesUp(t *testing.T) {
	r := newDaemonRig(t)
	r.c.stErr = agent.ErrStateUnreadable
	r.c.reconcile = func() *agent.Report {
		t.Error("reconciled with an unreadable state")
		return &agent.Report{Phase: "reconcile", Result: agent.ResultOK}
	}
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1\nSTATUS=state file unreadable") == 1 })
}

func TestDaemonRemovesLeftoverBlockOnceHealthy(t *testing.T) {
	r := newDaemonRig(t)
	r.fw.set(true) // no cycle open
	r.start(t)
	eventually(t, "leftover block removed", func() bool { b, _ := r.fw.get(); return !b })
	r.c.mu.Lock()
	opts := slices.Clone(r.c.exits)
	r.c.mu.Unlock()
	if len(opts) != 1 || !opts[0].NoLockWait {
		t.Fatalf("exits %+v, want one, not waiting for the lock", opts)
	}
	eventually(t, "idle status", func() bool { return r.n.count("STATUS=idle") == 1 })
}

func TestDaemonReappliesBlockRemovedByHand(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(r, "boot-1", time.Now())
	r.fw.set(true)
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })

	// A phase of the socket is at work: the firewall is its business.
	r.srv.setPhase("exit")
	eventually(t, "running status", func() bool { return r.n.count("STATUS=running exit") == 1 })
	r.fw.set(false)
	time.Sleep(100 * time.Millisecond)
	r.c.mu.Lock()
	during := r.c.reasserts
	r.c.mu.Unlock()
	if _, n := r.fw.get(); n != 0 || during != 0 {
		t.Fatalf("block re-applied %d times (%d asked) while a phase was at work", n, during)
	}
	r.srv.setPhase("")
	eventually(t, "block re-applied", func() bool { b, _ := r.fw.get(); return b })
	eventually(t, "status says so", func() bool { return r.n.count("STATUS=cycle c1 open, blocked (re-applied)") == 1 })
	time.Sleep(50 * time.Millisecond)
	if _, n := r.fw.get(); n != 1 {
		t.Fatalf("blocked %d times, want 1", n)
	}
}

func TestDaemonDeadmanAutoRecoverHealthy(t *testing.T) {
	r := newDaemonRig(t)
	r.c.cfg.Daemon.MaxOutOfService = agent.Duration(50 * time.Millisecond)
	r.c.cfg.Daemon.AutoRecover = true
	openCycle(r, "boot-1", time.Now().Add(-time.Hour))
	r.fw.set(true)
	r.start(t)
	eventually(t, "node back in service", func() bool {
		st, _ := r.c.State()
		b, _ := r.fw.get()
		return !b && !st.Open
	})
	if got := testutil.ToFloat64(r.m.Deadman); got != 1 {
		t.Fatalf("patchagent_deadman_triggered_total %v, want 1", got)
	}
	eventually(t, "idle status", func() bool { return r.n.count("STATUS=idle") == 1 })
}

func TestDaemonDeadmanAutoRecoverUnhealthyRetries(t *testing.T) {
	r := newDaemonRig(t)
	r.c.cfg.Daemon.MaxOutOfService = agent.Duration(40 * time.Millisecond)
	r.c.cfg.Daemon.AutoRecover = true
	r.c.healthy = false
	openCycle(r, "boot-1", time.Now().Add(-time.Hour))
	r.fw.set(true)
	r.start(t)
	// A failed try, then another every max_out_of_service/4.
	eventually(t, "two exit attempts", func() bool { return r.c.exitCount() >= 2 })
	st, _ := r.c.State()
	if b, _ := r.fw.get(); !b || !st.Open {
		t.Fatalf("unhealthy app returned to service: blocked=%v state %+v", b, st)
	}
	if got := testutil.ToFloat64(r.m.Deadman); got != 1 {
		t.Fatalf("patchagent_deadman_triggered_total %v, want 1 per cycle", got)
	}
}

func TestDaemonDeadmanWithoutAutoRecoverOnlyReports(t *testing.T) {
	r := newDaemonRig(t)
	r.c.cfg.Daemon.MaxOutOfService = agent.Duration(20 * time.Millisecond)
	openCycle(r, "boot-1", time.Now().Add(-time.Hour))
	r.fw.set(true)
	r.start(t)
	eventually(t, "dead-man", func() bool { return testutil.ToFloat64(r.m.Deadman) == 1 })
	time.Sleep(150 * time.Millisecond)
	if got := testutil.ToFloat64(r.m.Deadman); got != 1 {
		t.Fatalf("patchagent_deadman_triggered_total %v, want 1", got)
	}
	if r.c.exitCount() != 0 {
		t.Fatal("exit ran without auto_recover")
	}
	if r.n.count("STATUS=cycle c1 open, blocked, out of service longer than max_out_of_service") != 1 {
		t.Fatalf("status: %q", r.n.msgs)
	}
}

func TestDaemonWatchdogOnlyAfterCompletedIterations(t *testing.T) {
	r := newDaemonRig(t)
	r.start(t)
	eventually(t, "watchdog pings", func() bool { return r.n.count("WATCHDOG=1") >= 5 })

	hang, hung := make(chan struct{}), make(chan struct{})
	r.fw.mu.Lock()
	r.fw.hang, r.fw.hung = hang, hung
	r.fw.mu.Unlock()
	select {
	case <-hung:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop never read the firewall")
	}
	before := r.n.count("WATCHDOG=1")
	time.Sleep(150 * time.Millisecond) // 15 ticks
	if got := r.n.count("WATCHDOG=1"); got != before {
		t.Fatalf("%d watchdog pings while an iteration hung", got-before)
	}
	r.fw.mu.Lock()
	r.fw.hang = nil
	r.fw.mu.Unlock()
	close(hang)
	eventually(t, "pings again", func() bool { return r.n.count("WATCHDOG=1") >= before+3 })
	// STATUS= only on change: READY carried "idle", nothing changed since.
	if n := r.n.count("STATUS="); n != 0 {
		t.Fatalf("%d STATUS= messages without a change", n)
	}
}

func TestDaemonStatusFollowsThePhase(t *testing.T) {
	r := newDaemonRig(t)
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1\nSTATUS=idle") == 1 })
	r.srv.setPhase("pre")
	r.c.setState(agent.State{CycleID: "c2", Open: true, Phase: "pre", Status: agent.StatusRunning, Step: "drain", UpdatedAt: time.Now()})
	eventually(t, "running status", func() bool { return r.n.count("STATUS=running pre (step drain)") == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := r.n.count("STATUS=running pre (step drain)"); n != 1 {
		t.Fatalf("STATUS= sent %d times: %q", n, r.n.msgs)
	}
}

func TestDaemonStopAbandonsAPhaseAfterStopTimeout(t *testing.T) {
	r := newDaemonRig(t)
	r.o.StopTimeout = 300 * time.Millisecond
	r.srv.end = make(chan struct{}) // never ends
	r.srv.setPhase("pre")
	stop := r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	took, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	if took > r.o.StopTimeout+200*time.Millisecond || took < r.o.StopTimeout/2 {
		t.Fatalf("returned after %s, StopTimeout %s", took, r.o.StopTimeout)
	}
	if r.n.count("STOPPING=1") != 1 || !r.srv.shutdown {
		t.Fatalf("STOPPING=1 sent %d times, shutdown %v", r.n.count("STOPPING=1"), r.srv.shutdown)
	}
	if r.srv.phaseCtx.Err() == nil {
		t.Fatal("the phase context was not cancelled")
	}
}

func TestDaemonStopWaitsForAPhaseThatEnds(t *testing.T) {
	r := newDaemonRig(t)
	r.srv.end = make(chan struct{})
	r.srv.setPhase("exit")
	stop := r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	time.AfterFunc(100*time.Millisecond, func() { close(r.srv.end) })
	took, err := stop()
	if err != nil || took > 2*time.Second {
		t.Fatalf("%v after %s", err, took)
	}
	r.srv.mu.Lock()
	defer r.srv.mu.Unlock()
	if !r.srv.ctxLiveAtEnd {
		t.Fatal("the phase was cancelled before it could end")
	}
	if r.srv.phaseCtx.Err() == nil {
		t.Fatal("phase context left live after return")
	}
}

func TestDaemonReadyWithoutWatchdogSendsNoPings(t *testing.T) {
	r := newDaemonRig(t)
	r.o.Watchdog = 0
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	time.Sleep(50 * time.Millisecond)
	if n := r.n.count("WATCHDOG=1"); n != 0 {
		t.Fatalf("%d pings with the watchdog off", n)
	}
}

// TestDaemonReportsHowLongAPhaseRuns: E21 of issue 13. A phase that hangs
// keeps the loop and its watchdog alive; patchagent_phase_running_seconds
// grows with it (and PatchagentPhaseHung fires past the SSM timeout).
func TestDaemonReportsHowLongAPhaseRuns(t *testing.T) {
	r := newDaemonRig(t)
	r.srv.mu.Lock()
	r.srv.phase, r.srv.since = "pre", time.Now().Add(-10*time.Minute)
	r.srv.mu.Unlock()
	r.start(t)
	running := func(p string) float64 { return testutil.ToFloat64(r.m.PhaseRunning.WithLabelValues(p)) }
	eventually(t, "pre's age reported", func() bool { return running("pre") >= 600 })
	if running("post") != 0 || running("exit") != 0 {
		t.Errorf("other phases: post %v, exit %v; want 0", running("post"), running("exit"))
	}
	r.srv.setPhase("")
	eventually(t, "back to 0 once no phase runs", func() bool { return running("pre") == 0 })
}

// TestDaemonDeadmanIgnoresClockSteps: row 20 of issue 13. The wall clock
// jumps 3 h ahead (an NTP step, a wrong RTC corrected) while a cycle is
// open and active a moment ago: the dead-man timer (max 1 h) does not fire,
// since idle time is counted on the monotonic clock once the daemon has
// seen the state.
func TestDaemonDeadmanIgnoresClockSteps(t *testing.T) {
	r := newDaemonRig(t)
	var mu sync.Mutex
	step := time.Duration(0)
	openCycle(r, "boot-1", time.Now())
	r.fw.set(true)
	r.c.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return time.Now().Round(0).Add(step) }
	r.start(t)
	time.Sleep(100 * time.Millisecond) // some ticks: the state seen
	mu.Lock()
	step = 3 * time.Hour
	mu.Unlock()
	time.Sleep(200 * time.Millisecond)
	if got := testutil.ToFloat64(r.m.Deadman); got != 0 {
		t.Fatalf("the dead-man timer fired on a clock step (%v)", got)
	}
}

// TestDaemonRetriesAFailedReassert: a block that cannot be put back is
// logged (once per distinct error) and retried at every tick.
func TestDaemonRetriesAFailedReassert(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(r, "boot-1", time.Now())
	r.fw.set(true)
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	r.fw.mu.Lock()
	r.fw.blockErr = errors.New("iptables: lock held")
	r.fw.blocked = false
	r.fw.mu.Unlock()
	eventually(t, "several tries", func() bool { r.c.mu.Lock(); defer r.c.mu.Unlock(); return r.c.reasserts >= 3 })
	r.fw.mu.Lock()
	r.fw.blockErr = nil
	r.fw.mu.Unlock()
	eventually(t, "block back", func() bool { b, _ := r.fw.get(); return b })
}
