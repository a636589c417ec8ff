package daemon

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/internal/wait"
	"github.com/patchagent/patchagent/firewall"
)

// Daemon defaults and bounds.
const (
	defaultStopTimeout = 80 * time.Second // the unit's TimeoutStopSec is 90 s
	// daemonStepTimeout bounds each step of an iteration (go-iptables
	// ignores contexts: it is bounded by its own xtables lock wait).
	daemonStepTimeout = 30 * time.Second
	// bootTimeout bounds the boot reconciliation.
	bootTimeout = 60 * time.Second
	// leftoverEvery spaces the daemon's exits that remove a leftover block.
	leftoverEvery = time.Minute
	// stopGrace is the most of StopTimeout kept for abandoned phases to
	// record their failure once their context is cancelled.
	stopGrace = 5 * time.Second
)

// Options tune Run; zero values take the defaults.
type Options struct {
	// Tick is the main loop period (default daemon.watch_interval; at
	// most Watchdog/2); tests set it.
	Tick time.Duration
	// BootReblocked: BootReblock put the block back before the agent was
	// built; the boot reconcile reports and counts it.
	BootReblocked bool
	// StopTimeout is how long a stop waits for a running phase before
	// abandoning it (default 80s; the unit's TimeoutStopSec is 90s).
	StopTimeout time.Duration
	// Watchdog is systemd's watchdog interval from NewSystemdNotifier
	// (0: no WATCHDOG=1 pings).
	Watchdog time.Duration
	// Cycle, if set, is the cycle each iteration works with (Live.Cycle:
	// one rebuilt from an edited config); nil keeps Run's.
	Cycle func() Cycle
}

// Cycle is what the loop needs of the patch cycle (*agent.Agent): its
// decisions (Reassert, Reconcile, Exit) and what they read.
type Cycle interface {
	Config() agent.Config
	Metrics() *agent.Metrics
	Log() *zap.Logger
	Now() time.Time
	State() (agent.State, error)
	FirewallStatus(ctx context.Context) (firewall.Status, error)
	Reassert(ctx context.Context) (bool, error)
	Reconcile(ctx context.Context, opt agent.RunOptions) *agent.Report
	Exit(ctx context.Context, opt agent.RunOptions) *agent.Report
}

var _ Cycle = (*agent.Agent)(nil)

// phaseServer is what Run needs of the control socket's Server: the
// socket runs the phases, the daemon watches around them.
type phaseServer interface {
	// Running names the phase the socket is running, if any.
	Running() (phase string, since time.Time, ok bool)
	// Wait returns once no phase runs, or with ctx's error.
	Wait(ctx context.Context) error
	// Shutdown stops accepting requests.
	Shutdown(ctx context.Context) error
	// SetPhaseContext sets the context phases run under: cancelling it
	// abandons them.
	SetPhaseContext(ctx context.Context)
}

// Run is the service's main loop; it returns when ctx is done
// (SIGTERM) or the boot reconciliation failed.
//
//  1. Boot: Reconcile re-applies the block of an open cycle whose rules are
//     gone (reboot, flush) BEFORE READY=1, so pm2's service, ordered after
//     this unit, cannot bring the app online to outside traffic. If it
//     fails, Run returns the error without READY=1: the start fails
//     and systemd restarts the unit (Restart=on-failure), since a daemon
//     reported ready without the block of an open cycle would be worse.
//  2. READY=1 with a STATUS= line.
//  3. Every Tick: with a cycle open and no phase running, a block that is
//     gone (a firewalld/ufw reload, iptables -F) is re-applied and counted;
//     with no cycle open, a leftover block of ours is removed by exit (after
//     its health check) at most once a minute; the dead-man timer reports a
//     cycle idle longer than daemon.max_out_of_service once per cycle and,
//     with daemon.auto_recover, runs exit (which unblocks only a healthy
//     app), retried every max_out_of_service/4 while nobody else acts;
//     STATUS= when it changes; WATCHDOG=1 only once the iteration
//     completed, so a hung iptables or pm2 call gets the daemon restarted.
//  4. ctx done: STOPPING=1, srv.Shutdown, a wait of up to StopTimeout for
//     a running phase, then the phase context is cancelled to abandon it
//     (phases record their intent before each side effect).
//
// The caller runs srv.Serve; Run first sets srv's phase context. The
// daemon's own exits call a.Exit directly and take the same phase lock as
// the socket's phases. It keeps its metrics in the Agent's (Deps.Metrics;
// none kept if nil).
func Run(ctx context.Context, a Cycle, srv phaseServer, n Notifier, o Options) error {
	d := newDaemonLoop(a, srv, n, o)
	phaseCtx, abandon := context.WithCancel(context.WithoutCancel(ctx))
	defer abandon()
	d.phaseCtx = phaseCtx
	srv.SetPhaseContext(phaseCtx)

	if err := d.boot(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return d.stop(abandon)
	}
	d.status = d.initialStatus(ctx)
	d.notify(notifyReady + "\nSTATUS=" + d.status)
	d.log.Info("daemon ready", zap.Duration("tick", d.o.Tick), zap.Duration("watchdog", d.o.Watchdog), zap.String("status", d.status))

	t := time.NewTicker(d.o.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return d.stop(abandon)
		case <-t.C:
			d.iterate(ctx)
		}
	}
}

// daemonLoop is Run's state; only rec is shared with the daemon's
// own exit runs.
type daemonLoop struct {
	a        Cycle
	srv      phaseServer
	n        Notifier
	m        *agent.Metrics
	o        Options
	log      *zap.Logger
	phaseCtx context.Context
	step     time.Duration

	status       string
	lastLeftover time.Time
	dead         deadman
	errs         map[string]string // last error logged per source
	rec          recovery
}

// deadman is the dead-man timer's state for one cycle.
type deadman struct {
	cycle string
	fired bool
	// How long the cycle has been idle, on the monotonic clock (issue 13,
	// row 20: a clock step must neither fire the timer nor hold it off):
	// when the daemon first saw the state's UpdatedAt (updated), at seen
	// (time.Now, monotonic), the cycle had been idle idleAtSeen by the wall
	// clock, the only reading there is then (after a daemon restart); from
	// there on only monotonic time is added.
	updated    time.Time
	seen       time.Time
	idleAtSeen time.Duration
}

// idle is how long the cycle of st has had no phase activity.
func (m *deadman) idle(st agent.State, wallNow time.Time) time.Duration {
	if m.seen.IsZero() || !st.UpdatedAt.Equal(m.updated) {
		m.updated, m.seen = st.UpdatedAt, time.Now()
		m.idleAtSeen = max(0, wallNow.Sub(st.UpdatedAt))
	}
	return m.idleAtSeen + time.Since(m.seen)
}

// recovery is the daemon's own exit run (leftover block or auto_recover):
// one at a time, in the background so the loop keeps pinging the watchdog
// through exit's health wait.
type recovery struct {
	mu    sync.Mutex
	why   string    // non-empty while an exit runs
	ended time.Time // when the last one ended
	wg    sync.WaitGroup
}

func (r *recovery) state() (why string, ended time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.why, r.ended
}

func newDaemonLoop(a Cycle, srv phaseServer, n Notifier, o Options) *daemonLoop {
	if o.Tick <= 0 {
		o.Tick = a.Config().Daemon.WatchInterval.D() // positive: Validate
	}
	if o.Watchdog > 0 && o.Tick > o.Watchdog/2 {
		o.Tick = o.Watchdog / 2
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = defaultStopTimeout
	}
	step := daemonStepTimeout
	if o.Watchdog > 0 {
		step = min(step, o.Watchdog/2)
	}
	if n == nil {
		n = nopNotifier{}
	}
	m := a.Metrics()
	if m == nil {
		m = agent.NewMetrics(prometheus.NewRegistry(), "")
	}
	return &daemonLoop{a: a, srv: srv, n: n, m: m, o: o, step: step, log: a.Log().Named("daemon"), errs: map[string]string{}}
}

// boot runs the boot reconciliation.
func (d *daemonLoop) boot(ctx context.Context) error {
	// A state file that cannot be read: BootReblock (run before the agent
	// was built) kept a block of ours as it was; the daemon still comes up,
	// to report it (status, metrics), and the phases refuse to run.
	if _, err := d.a.State(); errors.Is(err, agent.ErrStateUnreadable) {
		d.log.Error("boot: the state file cannot be read: the block is left as it is, phases refuse to run until it is fixed", zap.Error(err))
		return nil
	}
	bctx, cancel := context.WithTimeout(ctx, bootTimeout)
	defer cancel()
	// Without waiting for the lock: a phase that holds it (a hook's, run in
	// its own process while the daemon was down) owns the state, and may
	// hold it longer than bootTimeout; the watch acts once it is done.
	rep := d.a.Reconcile(bctx, agent.RunOptions{BootReblocked: d.o.BootReblocked, NoLockWait: true})
	if rep.ExitCode == agent.ExitLocked {
		d.log.Info("boot reconciliation left to the phase running", zap.String("verdict", rep.Verdict()))
		return nil
	}
	if rep.ExitCode != 0 {
		if ctx.Err() != nil {
			return nil // stopped while booting: Run stops
		}
		d.log.Error("boot reconciliation failed: not reporting ready", zap.String("verdict", rep.Verdict()))
		return fmt.Errorf("reconciling at boot: %w", errors.New(rep.Error))
	}
	d.log.Info("boot reconciliation done", zap.String("verdict", rep.Verdict()), zap.Bool("reblocked", rep.Reblocked))
	return nil
}

// initialStatus is the STATUS= line sent with READY=1.
func (d *daemonLoop) initialStatus(ctx context.Context) string {
	st, err := d.a.State()
	if err != nil {
		return "state file unreadable"
	}
	sctx, cancel := context.WithTimeout(ctx, d.step)
	defer cancel()
	kernel := kernelUnknown
	if fw, err := d.a.FirewallStatus(sctx); err == nil {
		kernel = kernelWord(fw.Blocked(), fw.Partial())
		d.m.ObserveBlock(fw.Present())
	}
	return d.describe(st, "", false, "", kernel)
}

// iterate is one pass of the main loop; WATCHDOG=1 only at its end.
func (d *daemonLoop) iterate(ctx context.Context) {
	defer d.ping()
	if d.o.Cycle != nil {
		d.a = d.o.Cycle()
	}
	st, err := d.a.State()
	if d.logErr("state", "reading the state file", err) {
		d.setStatus("state file unreadable")
		return
	}
	phase, since, running := d.srv.Running()
	// A phase that hangs (an iptables or pm2 call past every bound, a
	// wedged disk) keeps this loop and its watchdog alive: its age, which
	// grows while it hangs, is what shows it (issue 13, E21).
	if running {
		d.m.ObservePhaseRunning(phase, d.a.Now().Sub(since))
	} else {
		d.m.ObservePhaseRunning("", 0)
	}
	why, _ := d.rec.state()
	kernel := kernelUnknown
	if !running && why == "" {
		kernel = d.watch(ctx, st)
		d.checkDeadman(st)
		why, _ = d.rec.state()
	}
	d.setStatus(d.describe(st, phase, running, why, kernel))
}

// Kernel views of the block for the status line.
const (
	kernelBlocked   = "blocked"
	kernelPartial   = "partially blocked"
	kernelNone      = "NOT blocked"
	kernelUnknown   = "firewall unreadable"
	kernelReapplied = "blocked (re-applied)"
)

func kernelWord(blocked, partial bool) string {
	switch {
	case blocked:
		return kernelBlocked
	case partial:
		return kernelPartial
	}
	return kernelNone
}

// watch reads the block: with a cycle open it must be in place (put back
// if not); with none, a block of ours is a leftover for exit to remove. It
// returns the kernel's view for the status line.
func (d *daemonLoop) watch(ctx context.Context, st agent.State) string {
	sctx, cancel := context.WithTimeout(ctx, d.step)
	defer cancel()
	fw, err := d.a.FirewallStatus(sctx)
	if d.logErr("firewall", "reading the firewall", err) {
		return kernelUnknown
	}
	ours := fw.Present()
	d.m.ObserveBlock(ours)
	switch {
	case st.Open && !fw.Blocked():
		if d.reassert(ctx) {
			return kernelReapplied
		}
	case !st.Open && ours:
		d.leftover()
	}
	return kernelWord(fw.Blocked(), fw.Partial())
}

// reassert puts the block of the open cycle back (the cycle decides,
// under the phase lock: Reassert).
func (d *daemonLoop) reassert(ctx context.Context) bool {
	sctx, cancel := context.WithTimeout(ctx, d.step)
	defer cancel()
	did, err := d.a.Reassert(sctx)
	if d.logErr("reblock", "re-applying the block", err) {
		return false
	}
	return did
}

// leftover runs exit, at most once a minute, to remove a block of ours
// with no cycle open; exit removes it only once the app is healthy.
func (d *daemonLoop) leftover() {
	now := d.a.Now()
	if !d.lastLeftover.IsZero() && now.Sub(d.lastLeftover) < leftoverEvery {
		return
	}
	d.lastLeftover = now
	d.log.Warn("leftover block with no patch cycle open: running exit to remove it once the app is healthy")
	d.runExit("leftover block")
}

// checkDeadman fires when a cycle is open with no phase activity for longer
// than daemon.max_out_of_service: once per cycle it logs and counts; with
// auto_recover it runs exit, again every max_out_of_service/4 while the
// last try failed and no one else acted since.
func (d *daemonLoop) checkDeadman(st agent.State) {
	maxOut := d.a.Config().Daemon.MaxOutOfService.D()
	if !st.Open || maxOut <= 0 {
		return
	}
	if d.dead.cycle != st.CycleID {
		d.dead = deadman{cycle: st.CycleID}
	}
	now := d.a.Now()
	idle := d.dead.idle(st, now)
	auto := d.a.Config().Daemon.AutoRecover
	if !d.dead.fired {
		if idle <= maxOut {
			return
		}
		d.dead.fired = true
		d.m.ObserveDeadman()
		d.log.Error("node out of service too long: a patch cycle is open with no phase activity",
			zap.String("cycle", st.CycleID), zap.String("phase", st.Phase), zap.String("step", st.Step), zap.String("status", st.Status),
			zap.Duration("idle", idle.Round(time.Second)), zap.Duration("max_out_of_service", maxOut), zap.Bool("auto_recover", auto))
		if auto {
			d.runExit("auto_recover")
		}
		return
	}
	if !auto {
		return
	}
	_, ended := d.rec.state()
	// Another phase since our last try: it restarts the wait.
	if st.UpdatedAt.After(ended) && idle <= maxOut {
		return
	}
	if !st.UpdatedAt.After(ended) && now.Sub(ended) < maxOut/4 {
		return
	}
	d.log.Warn("auto_recover: running exit again", zap.String("cycle", st.CycleID), zap.Time("last_try_ended", ended))
	d.runExit("auto_recover")
}

// runExit runs exit in the background under the phase context.
func (d *daemonLoop) runExit(why string) {
	d.rec.mu.Lock()
	d.rec.why = why
	d.rec.mu.Unlock()
	d.rec.wg.Add(1)
	a := d.a
	go func() {
		defer d.rec.wg.Done()
		// No wait for the lock: a phase holding it (a pre that just opened
		// a cycle) has made the reason for this exit stale.
		rep := a.Exit(d.phaseCtx, agent.RunOptions{NoLockWait: true})
		d.rec.mu.Lock()
		d.rec.why, d.rec.ended = "", a.Now()
		d.rec.mu.Unlock()
		if rep.ExitCode != 0 {
			d.log.Error("daemon's exit failed", zap.String("reason", why), zap.String("verdict", rep.Verdict()))
			return
		}
		d.log.Info("daemon's exit done", zap.String("reason", why), zap.String("verdict", rep.Verdict()))
	}()
}

// describe is the STATUS= line.
func (d *daemonLoop) describe(st agent.State, phase string, running bool, why, kernel string) string {
	switch {
	case running:
		return runningLine(phase, st)
	case why != "":
		return fmt.Sprintf("%s, started by the daemon: %s", runningLine("exit", st), why)
	case st.Open:
		s := fmt.Sprintf("cycle %s open, %s", st.CycleID, kernel)
		if d.dead.fired && d.dead.cycle == st.CycleID {
			s += ", out of service longer than max_out_of_service"
		}
		return s
	case kernel == kernelBlocked || kernel == kernelPartial:
		return "idle, leftover block of ours (no cycle open)"
	}
	return "idle"
}

func runningLine(phase string, st agent.State) string {
	if st.Phase == phase && st.Status == agent.StatusRunning && st.Step != "" {
		return fmt.Sprintf("running %s (step %s)", phase, st.Step)
	}
	return "running " + phase
}

// setStatus sends STATUS= when it changed.
func (d *daemonLoop) setStatus(s string) {
	if s == d.status {
		return
	}
	d.status = s
	d.notify("STATUS=" + s)
}

// ping tells systemd's watchdog the loop completed an iteration.
func (d *daemonLoop) ping() {
	if d.o.Watchdog > 0 {
		d.notify(notifyWatchdog)
	}
}

func (d *daemonLoop) notify(msg string) {
	d.logErr("notify", "notifying systemd", d.n.Notify(msg))
}

// logErr logs err unless the same error of source was the last logged;
// it reports whether err is set.
func (d *daemonLoop) logErr(source, msg string, err error) bool {
	if err == nil {
		delete(d.errs, source)
		return false
	}
	if d.errs[source] != err.Error() {
		d.errs[source] = err.Error()
		d.log.Error(msg, zap.Error(err))
	}
	return true
}

// stop is the SIGTERM path: STOPPING=1, no new requests, the running phase
// (the socket's or the daemon's exit) waited for, then abandoned.
func (d *daemonLoop) stop(abandon context.CancelFunc) error {
	d.notify(notifyStopping)
	grace := min(d.o.StopTimeout/10, stopGrace)
	d.log.Info("stopping", zap.Duration("stop_timeout", d.o.StopTimeout))
	wctx, cancel := context.WithTimeout(context.Background(), d.o.StopTimeout-grace)
	defer cancel()
	if err := d.srv.Shutdown(wctx); err != nil {
		d.log.Warn("shutting down the control socket", zap.Error(err))
	}
	if d.srv.Wait(wctx) == nil && wait.Group(wctx, &d.rec.wg) {
		abandon()
		d.log.Info("stopped")
		return nil
	}
	phase, since, _ := d.srv.Running()
	why, _ := d.rec.state()
	d.log.Warn("abandoning the running phase: its state was recorded before each side effect",
		zap.String("phase", phase), zap.Time("since", since), zap.String("daemon_exit", why))
	abandon()
	// A little time for the abandoned phase to record how it ended.
	gctx, gcancel := context.WithTimeout(context.Background(), grace)
	defer gcancel()
	_ = d.srv.Wait(gctx)
	wait.Group(gctx, &d.rec.wg)
	d.log.Info("stopped")
	return nil
}
