package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// exit puts the node back only when the app is healthy and stable: every
// instance has been up, without a restart, for the stability window, the
// longer of pm2's own min_uptime for the app (pm2 calls an exit before it
// an unstable restart; 1000 ms when the app sets none) and exit.min_uptime.
// An app that crashes 300 ms after its start, having answered its health
// check in between, is caught, and so is a crash anywhere inside the window:
// before the check passes it is a restart (two make a crash loop), after it
// the wait fails at once. health.deadline bounds the check and the window
// together; an instance up longer than the window already (pm2 resurrected
// it at boot) adds no wait.
//
// How a restart is seen. pm2's process list (the getMonitorData RPC, what
// `pm2 jlist` prints) says, per instance, its pid, its restart counter
// (restart_time, one more at every restart, crash or command) and its
// state; it is asked every stableEvery (250 ms): it costs pm2 a pidusage
// sweep of every process it runs, too much for a fast poll. Between two
// lists the kernel is asked, every pidEvery (20 ms), whether each pid pm2
// listed still runs, and still is the process pm2 started (same starttime in
// /proc/<pid>/stat, so a reused pid is not taken for the old process): a
// crash is seen within pidEvery of the exit itself, before pm2 has even
// restarted the app. That costs one read of /proc per instance, root's own
// procfs. pm2's pid files are not read at all: their names come from the
// app's name after pm2's own mangling (web_app -> web-app-0.pid) or from
// the app's definition (pid_file, anywhere the app user likes), they are
// the app user's files (a symlink or FIFO there is that user's to plant),
// and pm2 writes them after the fact; the list's pid and the kernel's record
// need none of that. A restart too quick for the fast poll still moves
// restart_time, which every list compares; the wait ends with one more list.
// And when the app restarted before its check passed (allowed once), the
// instance that answered may be the one that then exited: the check is
// asked once more at the end of the window.
//
// How uptime is counted. pm_uptime is pm2's wall clock at the start, and a
// step of the wall clock (NTP at boot, an operator) would stretch or skip
// the window. So when exit first sees an instance's pid it credits it with
// the smaller of its uptime by the wall clock (now - pm_uptime) and by the
// kernel (CLOCK_BOOTTIME against the process's starttime), never negative,
// and from then on adds only monotonic time (time.Since) while the pid
// stays the same. A wall clock stepped forward before that first sight
// credits no more than the kernel says; one stepped backward credits less
// (exit then waits longer, never shorter); a step after it changes nothing.

// crashLoopRestarts is how many restarts during exit's wait make the app
// crash-looping: one restart may be a slow start racing a port; two are not.
const crashLoopRestarts = 2

// wallClock is the wall clock only: pm2's pm_uptime is one, and a step of it
// must show in both sides of a comparison, not be cancelled by Go's
// monotonic reading.
func wallClock() time.Time { return time.Now().Round(0) }

// window is the stability window and where it comes from.
type window struct {
	d   time.Duration
	src string
}

func (w window) String() string { return fmt.Sprintf("%s (%s)", secs(w.d), w.src) }

// stableOutcome is what exit's wait found.
type stableOutcome struct {
	Health healthcheck.Outcome
	// Stable tells how the window was met: "stable: up 1s of 1s (pm2's
	// default min_uptime)".
	Stable string
}

// waitHealthyAndStable is waitStable for callers that need only the health
// check's outcome.
func (a *Agent) waitHealthyAndStable(ctx context.Context, ids []int) (healthcheck.Outcome, error) {
	o, err := a.waitStable(ctx, ids)
	return o.Health, err
}

// waitStable probes the health check until it passes while watching the
// app's instances ids (nil: every instance), then holds the node until each
// has been up for the stability window, the watch going on. Two restarts,
// one after the health check passed, an instance errored or stopped, or
// health.deadline (which bounds the whole, the window included) end it with
// an error at once.
func (a *Agent) waitStable(parent context.Context, ids []int) (stableOutcome, error) {
	var o stableOutcome
	budget := a.d.HealthPolicy.Deadline
	if budget <= 0 {
		budget = healthcheck.DefaultDeadline
	}
	dctx, dcancel := context.WithTimeout(parent, budget)
	defer dcancel()
	deadline, _ := dctx.Deadline()
	ctx, cancel := context.WithCancelCause(dctx)
	defer cancel(nil)

	w := &watch{a: a, app: a.cfg.App.Name, cancel: cancel, start: time.Now(), budget: budget}
	if err := w.begin(ctx, ids); err != nil {
		return o, err
	}
	done := make(chan struct{})
	go func() { defer close(done); w.run(ctx) }()
	stop := func() { cancel(nil); <-done }

	out, err := healthcheck.WaitHealthy(ctx, a.d.Health, a.d.HealthPolicy, func(n int, res healthcheck.Result) {
		if res.Status != healthcheck.Success && (n == 1 || n%10 == 0) {
			a.progress("health: attempt %d: %s", n, res.Reason)
		}
	})
	o.Health = out
	if err != nil {
		stop()
		if f := w.failure(); f != nil {
			return o, f
		}
		return o, err
	}
	w.passed()
	o.Stable, err = w.wait(ctx, deadline)
	stop()
	if f := w.failure(); f != nil {
		return o, f
	}
	return o, err
}

// instance is one pm2 instance as the watch follows it.
type instance struct {
	id     int
	status string
	// pid is the running process watched, 0 while none is known; start
	// its starttime (the kernel's), credit its uptime when exit first saw
	// it and seen when that was (a monotonic reading).
	pid    int
	start  uint64
	credit time.Duration
	seen   time.Time
	// base is restart_time when the watch began, restarts its latest
	// value; deaths counts the pids seen exit (or replaced) since.
	base, restarts, deaths int
	// stoppedLists counts consecutive lists that showed it stopped.
	stoppedLists int
}

func (in *instance) up(now time.Time) time.Duration {
	if in.pid == 0 {
		return 0
	}
	return in.credit + now.Sub(in.seen)
}

// changes is how many times the instance restarted during the watch: pm2's
// counter, or the exits seen, whichever saw more (each restart moves both,
// but one may not have caught up yet).
func (in *instance) changes() int { return max(in.deaths, in.restarts-in.base) }

// watch follows the app's instances during exit's wait: see the comment
// at the top of this file.
type watch struct {
	a      *Agent
	app    string
	cancel context.CancelCauseFunc
	start  time.Time
	budget time.Duration

	mu        sync.Mutex
	insts     []*instance
	win       window
	afterPass time.Time // when the health check passed; zero before
	counted   int       // restarts already judged
	// beforePass is how many restarts were counted when the check passed.
	beforePass int
	relist     bool  // a pid exited: ask pm2 at the next fast tick
	err        error // the first failure
}

// begin lists the app and starts following its instances ids (nil: all).
func (w *watch) begin(ctx context.Context, ids []int) error {
	procs, err := w.a.d.App.Processes(ctx, w.app)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, p := range procs {
		if ids != nil && !slices.Contains(ids, p.ID) {
			continue
		}
		w.insts = append(w.insts, &instance{id: p.ID, base: p.Restarts, restarts: p.Restarts})
	}
	if len(w.insts) == 0 {
		return fmt.Errorf("%w %q: none of pm_id(s) %v listed any more", hooks.ErrUnknownApp, w.app, ids)
	}
	w.observe(procs)
	return nil
}

// run is the watch's loop, until ctx ends or it fails.
func (w *watch) run(ctx context.Context) {
	fast := time.NewTicker(w.a.pidEvery)
	defer fast.Stop()
	slow := time.NewTicker(w.a.stableEvery)
	defer slow.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-fast.C:
			if w.checkPIDs() {
				w.list(ctx)
			}
		case <-slow.C:
			w.list(ctx)
		}
		if w.failure() != nil {
			return
		}
	}
}

// list asks pm2 about the app and takes in what it says; it reports
// whether it could (not when ctx ended first).
func (w *watch) list(ctx context.Context) bool {
	procs, err := w.a.d.App.Processes(ctx, w.app)
	if ctx.Err() != nil {
		return false
	}
	if err != nil {
		w.fail(fmt.Errorf("watching %s: %w", w.app, err))
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.relist = false
	w.observe(procs)
	return true
}

// observe takes in a pm2 list; w.mu is held.
func (w *watch) observe(procs []hooks.Process) {
	byID := make(map[int]hooks.Process, len(procs))
	for _, p := range procs {
		byID[p.ID] = p
	}
	w.win = w.window(procs)
	for _, in := range w.insts {
		p, ok := byID[in.id]
		if !ok {
			w.failLocked(fmt.Errorf("%s: pm2 no longer lists pm_id %d", w.app, in.id))
			return
		}
		in.status = p.Status
		switch p.Status {
		case hooks.StatusErrored:
			w.failLocked(fmt.Errorf("%s is %s in pm2 (restart counter %d)", w.app, p.Status, p.Restarts))
			return
		case hooks.StatusStopped:
			// Between a crash and its restart pm2 shows the instance
			// stopped for a moment; twice in a row it means it.
			if in.stoppedLists++; in.stoppedLists >= 2 {
				w.failLocked(fmt.Errorf("%s is %s in pm2 (restart counter %d)", w.app, p.Status, p.Restarts))
				return
			}
		default:
			in.stoppedLists = 0
		}
		if p.Restarts < in.restarts {
			// Reset (pm2 reset): keep what was counted.
			in.base -= in.restarts - p.Restarts
		}
		in.restarts = p.Restarts
		why := ""
		if p.PID > 0 && p.PID != in.pid {
			if in.pid != 0 {
				// Replaced before the fast poll saw it exit.
				in.deaths++
				why = fmt.Sprintf("pm2 lists pid %d for pm_id %d instead of pid %d, up %s", p.PID, in.id, in.pid, secs(in.up(time.Now())))
			}
			w.track(in, p)
		}
		if why == "" && in.changes() > 0 {
			why = fmt.Sprintf("pm2's restart counter for pm_id %d went from %d to %d", in.id, in.base, in.restarts)
		}
		w.judge(why)
		if w.err != nil {
			return
		}
	}
}

// track starts watching p's pid for in: its credit is the smaller of its
// uptime by pm2's wall clock and by the kernel, never negative. A pid that
// has exited already is not tracked: pm2's next list has the next one, and
// the restart shows in restart_time. w.mu is held.
func (w *watch) track(in *instance, p hooks.Process) {
	info, err := w.a.d.App.Proc(p.PID)
	if err != nil {
		in.pid = 0
		return
	}
	credit := info.Uptime
	if !p.Started.IsZero() {
		credit = min(credit, w.a.wall().Sub(p.Started))
	}
	in.pid, in.start, in.credit, in.seen = p.PID, info.Start, max(credit, 0), time.Now()
}

// checkPIDs asks the kernel whether every pid watched still runs, and
// reports whether one has exited (pm2 is then asked at once for the next).
func (w *watch) checkPIDs() (exited bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := time.Now()
	for _, in := range w.insts {
		if in.pid == 0 {
			continue
		}
		info, err := w.a.d.App.Proc(in.pid)
		if err == nil && info.Start == in.start {
			continue
		}
		why := fmt.Sprintf("pid %d (pm_id %d) exited after %s up", in.pid, in.id, secs(in.up(now)))
		in.deaths++
		in.pid = 0
		exited = true
		if w.judge(why); w.err != nil {
			break
		}
	}
	if exited {
		w.relist = true
	}
	return w.relist
}

// judge fails the watch on a new restart after the health check passed, or
// on the second one before; why says what showed the last one. w.mu is
// held.
func (w *watch) judge(why string) {
	n := 0
	for _, in := range w.insts {
		n += in.changes()
	}
	if n <= w.counted || w.err != nil {
		return
	}
	w.counted = n
	switch {
	case !w.afterPass.IsZero():
		w.failLocked(fmt.Errorf("%s restarted %s after its health check passed, inside its stability window of %s: %s",
			w.app, secs(time.Since(w.afterPass)), w.win, why))
	case n >= crashLoopRestarts:
		w.failLocked(fmt.Errorf("%s is crash-looping: its pid changed %d time(s) in %s (pm2 restarting it)",
			w.app, n, time.Since(w.start).Round(100*time.Millisecond)))
	}
}

// window is the stability window for pm2's list: the longest min_uptime of
// the instances (pm2's default where none is set), or exit.min_uptime if
// longer; it never shrinks during the wait. w.mu is held.
func (w *watch) window(procs []hooks.Process) window {
	win := w.win
	for _, p := range procs {
		if !slices.ContainsFunc(w.insts, func(in *instance) bool { return in.id == p.ID }) {
			continue
		}
		d, src := p.MinUptime, "pm2 min_uptime"
		if d <= 0 {
			d, src = hooks.PM2DefaultMinUptime, "pm2's default min_uptime"
		}
		if d > win.d {
			win = window{d, src}
		}
	}
	if m := w.a.cfg.Exit.MinUptime.D(); m > win.d {
		win = window{m, "exit.min_uptime"}
	}
	return win
}

// passed marks the health check passed: any restart from now on fails.
func (w *watch) passed() {
	w.mu.Lock()
	w.afterPass, w.beforePass = time.Now(), w.counted
	w.mu.Unlock()
}

// left is how much longer the youngest instance must stay up, and its
// uptime; ready is false while an instance has no running pid known.
func (w *watch) left(now time.Time) (left, youngest time.Duration, ready bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	ready = true
	for i, in := range w.insts {
		up := in.up(now)
		if in.pid == 0 || in.status != hooks.StatusOnline {
			ready = false
		}
		if i == 0 || up < youngest {
			youngest = up
		}
	}
	return w.win.d - youngest, youngest, ready
}

// wait holds on after the health check passed until every instance has
// been up for the window (the watch failing meanwhile ends it), then asks
// pm2 once more. It fails at once when the window cannot be reached before
// deadline.
func (w *watch) wait(ctx context.Context, deadline time.Time) (string, error) {
	shown := time.Time{}
	for {
		now := time.Now()
		left, up, ready := w.left(now)
		w.mu.Lock()
		win := w.win
		w.mu.Unlock()
		if ready && left <= 0 {
			if verdict, done, err := w.last(ctx, win); done || err != nil {
				return verdict, err
			}
			continue
		}
		if ready && now.Add(left).After(deadline) {
			return "", fmt.Errorf("%s cannot be stable before health.deadline %s: up %s of %s", w.app, w.budget, secs(up), win)
		}
		if shown.IsZero() || now.Sub(shown) >= time.Second {
			w.a.progress("stable: up %s of %s", secs(up), win)
			shown = now
		}
		pause := w.a.stableEvery // until pm2 lists the instance that is down
		if ready {
			pause = min(left, time.Second) // a progress line a second
		}
		if err := w.sleep(ctx, pause, up, win); err != nil {
			return "", err
		}
	}
}

// last is the end of the window: the last word is pm2's (nothing
// restarted between two polls), then the health check again if the app
// restarted before it passed. done is false when pm2's answer shows the
// window is not over after all.
func (w *watch) last(ctx context.Context, win window) (verdict string, done bool, err error) {
	ok := w.list(ctx)
	if f := w.failure(); f != nil {
		return "", true, f
	}
	if !ok {
		return "", true, fmt.Errorf("%s: the last look at pm2 before the unblock was cut short: %w", w.app, ctx.Err())
	}
	l, up, ready := w.left(time.Now())
	if !ready || l > 0 {
		return "", false, nil
	}
	if err := w.recheck(ctx); err != nil {
		return "", true, err
	}
	return fmt.Sprintf("stable: up %s of %s", secs(up), win), true, nil
}

// sleep pauses the wait for d; the watch's failure, or ctx's end (the
// health deadline), ends it with the reason.
func (w *watch) sleep(ctx context.Context, d, up time.Duration, win window) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		if f := w.failure(); f != nil {
			return f
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("%s not stable within health.deadline %s: up %s of %s", w.app, w.budget, secs(up), win)
		}
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// recheck probes the health check once more when the app restarted before
// it passed: the instance that answered may be the one that exited, so the
// one that has now been up for its window answers too.
func (w *watch) recheck(ctx context.Context) error {
	w.mu.Lock()
	n := w.beforePass
	w.mu.Unlock()
	if n == 0 {
		return nil
	}
	res, err := w.a.d.Health.Probe(ctx)
	if err == nil && res.Status != healthcheck.Success {
		err = errors.New(res.Reason)
	}
	if err != nil {
		return fmt.Errorf("%s restarted %d time(s) before its health check passed, and at the end of its stability window %s fails: %w", w.app, n, w.a.d.HealthName, err)
	}
	return nil
}

func (w *watch) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.failLocked(err)
}

// failLocked records the first failure and ends the wait; w.mu is held.
func (w *watch) failLocked(err error) {
	if w.err == nil {
		w.err = err
		w.cancel(err)
	}
}

func (w *watch) failure() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// secs renders d for the window's messages: "0.4s", "1s", "2m30s".
func secs(d time.Duration) string {
	if d < time.Minute {
		s := strconv.FormatFloat(d.Round(100*time.Millisecond).Seconds(), 'f', 1, 64)
		return strings.TrimSuffix(s, ".0") + "s"
	}
	s := d.Round(time.Second).String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}
