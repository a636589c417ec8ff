package agent

import (
	"context"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// slack is how late exit may unblock past the window here: polls of a few
// ms, under the race detector on a shared 2-core machine (350 ms was
// exceeded there by 150 ms while other tests ran). The windows below are
// long enough that what is asserted stays apart from the bug it guards
// against by more than it.
const slack = 600 * time.Millisecond

// exitTimed runs exit with a and returns its report and how long it took.
func exitTimed(t *testing.T, a *Agent) (*Report, time.Duration) {
	t.Helper()
	t0 := time.Now()
	rep := a.Exit(context.Background(), RunOptions{})
	return rep, time.Since(t0)
}

func unblocked(e *testEnv) bool {
	for _, ev := range e.ev.all() {
		if ev == "unblock" {
			return true
		}
	}
	return false
}

func TestStabilityWindowIsTheLongerOfPM2sMinUptimeAndExitMinUptime(t *testing.T) {
	for _, tt := range []struct {
		name           string
		pm2, exitCfg   time.Duration // pm2_env.min_uptime (0: absent), exit.min_uptime
		window         time.Duration
		src, wantShown string
	}{
		{"pm2 min_uptime", 400 * time.Millisecond, 0, 400 * time.Millisecond, "pm2 min_uptime", "of 0.4s (pm2 min_uptime)"},
		{"pm2's default when the app sets none", 0, 0, time.Second, "pm2's default min_uptime", "of 1s (pm2's default min_uptime)"},
		{"exit.min_uptime longer", 150 * time.Millisecond, 500 * time.Millisecond, 500 * time.Millisecond, "exit.min_uptime", "of 0.5s (exit.min_uptime)"},
		{"pm2 min_uptime longer", 500 * time.Millisecond, 150 * time.Millisecond, 500 * time.Millisecond, "pm2 min_uptime", "of 0.5s (pm2 min_uptime)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.cfg.Exit.MinUptime = Duration(tt.exitCfg)
			e.app.procs[0].MinUptime = tt.pm2
			afterPre(t, e)
			a := e.agent(t)
			a.d.HealthPolicy.Deadline = 5 * time.Second
			var progress syncBuffer
			a.d.Progress = &progress
			rep, took := exitTimed(t, a)
			if rep.ExitCode != 0 {
				t.Fatal(rep.Text())
			}
			// exit started the app: it is held until the app has been up
			// the whole window, and not much longer.
			if took < tt.window || took > tt.window+slack {
				t.Errorf("exit took %s, want the window %s (at most %s more)", took, tt.window, slack)
			}
			if !strings.Contains(progress.String(), "stable: up ") || !strings.Contains(progress.String(), tt.wantShown) {
				t.Errorf("progress does not show the window and its source %q:\n%s", tt.wantShown, progress.String())
			}
			if !strings.Contains(rep.Text(), "; stable: up ") || !strings.Contains(rep.Text(), tt.wantShown) {
				t.Errorf("report does not show the window:\n%s", rep.Text())
			}
		})
	}
}

func TestExitFailsOnARestartAnywhereInsideTheWindow(t *testing.T) {
	// The health check passes at once; the app crashes (pm2 restarts it)
	// at some point inside its 2s window. Wherever it falls, exit fails at
	// once (not at the end of the window) with the node still blocked.
	const window = 2 * time.Second
	for _, tt := range []struct {
		name      string
		crashAt   time.Duration // after exit's start
		listsOnly bool          // no fast poll: seen through pm2's list alone
	}{
		{"early", 100 * time.Millisecond, false},
		{"as today's 200ms settle ends", 300 * time.Millisecond, false},
		{"late", 1200 * time.Millisecond, false},
		{"seen by pm2's list only", 300 * time.Millisecond, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.app.procs[0].MinUptime = window
			afterPre(t, e)
			a := e.agent(t)
			a.d.HealthPolicy.Deadline = 5 * time.Second
			if tt.listsOnly {
				a.pidEvery = time.Hour
			}
			timer := time.AfterFunc(tt.crashAt, func() { e.app.crash(0) })
			defer timer.Stop()
			rep, took := exitTimed(t, a)
			if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "node still out of service: web restarted ") ||
				!strings.Contains(rep.Verdict(), "after its health check passed, inside its stability window of 2s (pm2 min_uptime)") {
				t.Fatalf("exit %d: %s", rep.ExitCode, rep.Text())
			}
			if unblocked(e) || !e.fw.blocked {
				t.Fatalf("the node was returned: %v", e.ev.all())
			}
			if took > tt.crashAt+slack {
				t.Errorf("the crash at %s was found only after %s", tt.crashAt, took)
			}
			if st, _ := e.state.Load(); !st.Open || st.Step != "health" {
				t.Errorf("state: %+v", st)
			}
		})
	}
	t.Run("one restart before the check passes, one after", func(t *testing.T) {
		e := newTestEnv(t)
		e.app.procs[0].MinUptime = window
		afterPre(t, e)
		a := e.agent(t)
		a.d.HealthPolicy.Deadline = 5 * time.Second
		var passing atomic.Bool
		e.health.dynamic = func() healthcheck.Result {
			if passing.Load() {
				return healthy()
			}
			return unhealthy(0)
		}
		// A slow first start that crashes once before it answers (allowed:
		// one restart), then a start that answers and crashes inside its
		// window.
		t1 := time.AfterFunc(100*time.Millisecond, func() { e.app.crash(0) })
		t2 := time.AfterFunc(200*time.Millisecond, func() { passing.Store(true) })
		t3 := time.AfterFunc(500*time.Millisecond, func() { e.app.crash(0) })
		defer t1.Stop()
		defer t2.Stop()
		defer t3.Stop()
		rep, _ := exitTimed(t, a)
		if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "restarted ") || unblocked(e) {
			t.Fatalf("exit %d %v: %s", rep.ExitCode, e.ev.all(), rep.Text())
		}
	})
	t.Run("one restart before the check passes, unhealthy at the window's end", func(t *testing.T) {
		// The instance that answered may not be the one that then stays
		// up: after a restart, the health check is asked again at the end.
		e := newTestEnv(t)
		e.app.procs[0].MinUptime = window
		afterPre(t, e)
		a := e.agent(t)
		a.d.HealthPolicy.Deadline = 5 * time.Second
		var state atomic.Int32 // 0 refused, 1 healthy, 2 status 500
		e.health.dynamic = func() healthcheck.Result {
			switch state.Load() {
			case 1:
				return healthy()
			case 2:
				return unhealthy(500)
			}
			return unhealthy(0)
		}
		t1 := time.AfterFunc(100*time.Millisecond, func() { e.app.crash(0) })
		t2 := time.AfterFunc(150*time.Millisecond, func() { state.Store(1) })
		t3 := time.AfterFunc(300*time.Millisecond, func() { state.Store(2) })
		defer t1.Stop()
		defer t2.Stop()
		defer t3.Stop()
		rep, _ := exitTimed(t, a)
		if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "web restarted 1 time(s) before its health check passed, and at the end of its stability window health-check") ||
			!strings.Contains(rep.Verdict(), "status 500") || unblocked(e) {
			t.Fatalf("exit %d %v: %s", rep.ExitCode, e.ev.all(), rep.Text())
		}
	})
}

func TestExitHoldsOnlyTheYoungestInstanceForTheRestOfItsWindow(t *testing.T) {
	// An instance pm2 resurrected at boot, long before, is stable already:
	// no wait. One just started is held for its whole window.
	const window = 1500 * time.Millisecond
	for _, tt := range []struct {
		name     string
		up       []time.Duration // each instance's age when exit starts; 0: exit starts it
		min, max time.Duration
	}{
		{"up an hour: passes at once", []time.Duration{time.Hour}, 0, slack},
		{"started by exit: the whole window", []time.Duration{0}, window, window + slack},
		{"up 1s: the rest of the window", []time.Duration{time.Second}, window - time.Second, window - time.Second + slack},
		{"cluster: one old instance, one new", []time.Duration{time.Hour, 0}, window, window + slack},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			afterPre(t, e)
			e.app.procs = nil
			for i, up := range tt.up {
				p := hooks.Process{Name: "web", ID: i, Status: hooks.StatusStopped, MinUptime: window}
				if up > 0 {
					p.Status, p.PID, p.Started = hooks.StatusOnline, os.Getpid()+i, time.Now().Add(-up)
				}
				e.app.procs = append(e.app.procs, p)
			}
			a := e.agent(t)
			a.d.HealthPolicy.Deadline = 5 * time.Second
			rep, took := exitTimed(t, a)
			if rep.ExitCode != 0 {
				t.Fatal(rep.Text())
			}
			if took < tt.min || took > tt.max {
				t.Errorf("exit took %s, want within [%s, %s]", took, tt.min, tt.max)
			}
		})
	}
}

func TestExitWindowIsNotMovedByWallClockSteps(t *testing.T) {
	// pm2 stamps pm_uptime with its wall clock; a step of that clock
	// (NTP at boot, an operator) neither skips nor stretches the window:
	// the uptime is credited once, capped by the kernel's, and grows only
	// by monotonic time.
	const window = 500 * time.Millisecond
	for _, tt := range []struct {
		name string
		step time.Duration
		at   time.Duration // after exit's start; 0: before exit first sees the pid
	}{
		{"no step", 0, 150 * time.Millisecond},
		{"an hour forward mid-window", time.Hour, 150 * time.Millisecond},
		{"an hour back mid-window", -time.Hour, 150 * time.Millisecond},
		{"an hour forward before exit sees the app", time.Hour, 0},
		{"an hour back before exit sees the app", -time.Hour, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.app.procs[0].MinUptime = window
			var offset atomic.Int64
			wall := func() time.Time { return time.Now().Add(time.Duration(offset.Load())).Round(0) }
			e.app.wall = wall
			afterPre(t, e)
			a := e.agent(t)
			a.d.HealthPolicy.Deadline = 5 * time.Second
			a.wall = wall
			if tt.at == 0 {
				// pm2 started the app just now, stamped by the old clock;
				// the clock steps before exit looks.
				if err := e.app.Start(context.Background(), "web"); err != nil {
					t.Fatal(err)
				}
				offset.Store(int64(tt.step))
			} else {
				timer := time.AfterFunc(tt.at, func() { offset.Store(int64(tt.step)) })
				defer timer.Stop()
			}
			rep, took := exitTimed(t, a)
			if rep.ExitCode != 0 {
				t.Fatal(rep.Text())
			}
			if took < window || took > window+slack {
				t.Errorf("exit took %s: the window is %s (at most %s more) whatever the wall clock does", took, window, slack)
			}
		})
	}
}

func TestExitFailsAtOnceWhenTheWindowCannotFitTheDeadline(t *testing.T) {
	// Every wait keeps a deadline: health.deadline bounds the health check
	// and the window together.
	e := newTestEnv(t)
	e.app.procs[0].MinUptime = 5 * time.Second
	afterPre(t, e)
	a := e.agent(t) // health deadline 500ms
	rep, took := exitTimed(t, a)
	if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "node still out of service: web cannot be stable before health.deadline 500ms: up 0s of 5s (pm2 min_uptime)") {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Text())
	}
	if took > slack || unblocked(e) {
		t.Fatalf("exit took %s, events %v", took, e.ev.all())
	}
}
