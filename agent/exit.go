package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// Exit returns the node to service once the app is healthy, whatever ran
// before: pre, a failed pre, a reboot, no reboot, or nothing at all.
func (a *Agent) Exit(ctx context.Context, opt RunOptions) *Report {
	return a.runPhase(ctx, "exit", opt, a.exit)
}

// stillOut marks an exit failure that leaves the node out of service.
func stillOut(err error) error {
	return nodeLeft(nodeStillOut, err)
}

func (a *Agent) exit(ctx context.Context, r *phaseRun) error {
	rep := r.rep
	t := time.Now()
	fw, err := a.d.Firewall.Status(ctx)
	if err != nil {
		rep.addStep("check", ResultFailed, time.Since(t), "")
		return fmt.Errorf("reading the firewall: %w", err)
	}
	blocked := fw.Present()
	fwState := map[bool]string{true: "blocked", false: "not blocked"}[blocked]
	if r.rebooted() {
		fwState += fmt.Sprintf(" (node rebooted since %s)", orNone(r.st.Phase))
	}
	cycle := "no patch cycle open"
	if r.st.Open {
		cycle = fmt.Sprintf("cycle %s open (last: %s %s at step %s)", r.st.CycleID, r.st.Phase, r.st.Status, r.st.Step)
	}
	rep.addStep("check", ResultOK, time.Since(t), fmt.Sprintf("%s; firewall %s", cycle, fwState))

	if r.opt.Force != nil {
		return a.exitForce(ctx, r, fw) // force.go
	}
	if !r.st.Open {
		return a.exitNoCycle(ctx, r, blocked)
	}
	if r.opt.DryRun {
		a.exitPlan(r, blocked)
		return nil
	}

	a.begin(r)
	// Outside clients must not reach an app nobody has checked: after a
	// reboot (or another tool's flush) the rules are gone while the cycle is
	// open, so they go back first. Not for a cycle whose pre stopped before
	// the block (at lb-out): nothing was stopped or changed, and the LB,
	// which may not have taken the node out, would meet refusals.
	if !fw.Blocked() && r.st.Blocks() {
		err := a.step(r, "reblock", func() (stepOut, error) {
			if err := a.d.Firewall.Block(ctx); err != nil {
				return stepOut{}, fmt.Errorf("re-applying the block: %w", err)
			}
			rep.Reblocked = true
			return passed("the cycle is open and the rules were gone: block re-applied before any check")
		})
		if err != nil {
			return a.exitFailed(ctx, r, err)
		}
	}
	// A post killed mid-update left a half-updated tree: its snapshot goes
	// back before the app starts (undopost.go), or the node stays out.
	if err := a.undoInterruptedPost(ctx, r); err != nil {
		return err
	}
	var ids []int
	err = a.step(r, "start", func() (stepOut, error) {
		started, got, err := a.startApp(ctx)
		if err != nil {
			return stepOut{}, err
		}
		ids = got
		if started != "" && started != "already online" {
			rep.Summary = append(rep.Summary, started)
		}
		return passed(started)
	})
	if err != nil {
		return a.exitUnhealthy(ctx, r, err)
	}
	err = a.step(r, "health", func() (stepOut, error) {
		so, err := a.waitStable(ctx, ids)
		out := so.Health
		rep.Health = healthSummary(out, err)
		if err != nil {
			return stepOut{}, err
		}
		healthy := fmt.Sprintf("healthy after %d attempt(s) in %s", out.Attempts, out.Elapsed.Round(10*time.Millisecond))
		rep.Summary = append(rep.Summary, healthy)
		return passed(healthy + " over loopback; " + so.Stable)
	})
	if err != nil {
		return a.exitUnhealthy(ctx, r, err)
	}
	if err := a.unblockAndRestore(ctx, r); err != nil {
		return err
	}
	a.closeCycle(r, StatusOK, "")
	return nil
}

// exitPlan is a dry run's plan of exit with a cycle open.
func (a *Agent) exitPlan(r *phaseRun, blocked bool) {
	rep, app := r.rep, a.cfg.App.Name
	rep.Result = ResultDryRun
	if !blocked && r.st.Blocks() {
		rep.Plan = append(rep.Plan, "re-apply the block first (the cycle is open but the rules are gone):")
		rep.Plan = append(rep.Plan, a.d.Firewall.Plan()...)
	}
	rep.Plan = append(rep.Plan, a.undoPostPlan(r.st)...)
	rep.Plan = append(rep.Plan,
		fmt.Sprintf("pm2 start %s, through the pm2 daemon of user %s, unless it is online (from %s with the pm2 CLI as that user if pm2 no longer knows it)", app, a.d.AppUser, orNone(a.cfg.App.Ecosystem)),
		fmt.Sprintf("wait until %s passes %d time(s) in a row (at most %s), the app staying online without restarts", a.d.HealthName, a.cfg.Health.Successes, a.cfg.Health.Deadline),
		fmt.Sprintf("remove chain %s and its jump from INPUT (%s)", firewall.Chain, famShort(a.d.Firewall.Families())))
	for _, u := range a.cfg.Steps.StopUnits {
		rep.Plan = append(rep.Plan, "systemctl start "+u)
	}
	for _, c := range a.cfg.Steps.ExitCommands {
		rep.Plan = append(rep.Plan, fmt.Sprintf("run %q", c))
	}
	if a.d.Rotation != nil {
		rep.Plan = append(rep.Plan, "lb-in: "+a.cfg.LB.plan(false))
	}
}

// exitUnhealthy is exit's answer to an app that did not start or pass its
// check: this cycle's dependency update rolled back if that is what broke
// it (exit.rollback), else exit.on_failure.
func (a *Agent) exitUnhealthy(ctx context.Context, r *phaseRun, cause error) error {
	if err, done := a.tryRollback(ctx, r, cause); done {
		return err
	}
	return a.exitFailed(ctx, r, cause)
}

func healthSummary(o healthcheck.Outcome, err error) *HealthSummary {
	return &HealthSummary{Healthy: err == nil, Attempts: o.Attempts, Seconds: o.Elapsed.Seconds(), LastLatency: o.Last.Latency.Seconds()}
}

// exitNoCycle handles exit when pre never opened a cycle (nothing needed
// patching) or the cycle was closed: it changes nothing but a leftover block
// of ours, removed only once the app is healthy.
func (a *Agent) exitNoCycle(ctx context.Context, r *phaseRun, blocked bool) error {
	rep := r.rep
	if r.opt.DryRun {
		rep.Result = ResultDryRun
		rep.Plan = append(rep.Plan, fmt.Sprintf("check %s once the app is up", a.d.HealthName))
		if blocked {
			rep.Plan = append(rep.Plan, "remove the leftover block of ours (no cycle is open) once healthy")
		}
		return nil
	}
	// Nothing was started here: the health check alone says whether the
	// app serves (no stability watch, no pm2 call).
	t := time.Now()
	out, err := healthcheck.WaitHealthy(ctx, a.d.Health, a.d.HealthPolicy, nil)
	rep.Health = healthSummary(out, err)
	if err != nil {
		rep.addStep("health", ResultFailed, time.Since(t), "")
		if blocked {
			return stillOut(fmt.Errorf("a leftover block of ours stays (no cycle open): %w", err))
		}
		return fmt.Errorf("no patch cycle open, nothing changed, but the app is unhealthy: %w", err)
	}
	rep.addStep("health", ResultOK, time.Since(t), fmt.Sprintf("healthy after %d attempt(s)", out.Attempts))
	// The block goes before the put back, as in a cycle's exit: a load
	// balancer that checks the app's port would never see a blocked node
	// healthy, and one told it is ready would send it refused requests.
	if blocked {
		t = time.Now()
		if err := a.d.Firewall.Unblock(ctx); err != nil {
			rep.addStep("unblock", ResultFailed, time.Since(t), "")
			return stillOut(fmt.Errorf("removing a leftover block: %w", err))
		}
		rep.addStep("unblock", ResultOK, time.Since(t), "leftover block of ours removed (no cycle was open)")
		rep.Summary = append(rep.Summary, "app healthy, leftover block removed")
	}
	if err := a.putBackLeftover(ctx, r); err != nil {
		return err
	}
	if len(rep.Summary) == 0 {
		rep.Summary = append(rep.Summary, "nothing to do: no patch cycle open, app healthy")
	}
	return nil
}

// putBackLeftover, with no cycle open and the app healthy, puts the node
// back in the load balancer's rotation. A record the last cycle could not
// put back (its exit failed at lb-in) is put back as lb-in does, waiting
// for the LB, and dropped from the state file once it is. A backend that
// keeps records, with none, has nothing of ours to put back (an operator's
// maintenance of the server stays); the readiness endpoint's signal is set
// without waiting: nothing keeps the node out.
func (a *Agent) putBackLeftover(ctx context.Context, r *phaseRun) error {
	if a.d.Rotation == nil {
		return nil
	}
	if _, ok := a.d.Rotation.(JournaledRotation); !ok {
		a.rotation(r.st).SetOut(false)
		return nil
	}
	if !r.st.LBPending() {
		return nil
	}
	t := time.Now()
	out, err := a.putBack(ctx, r)
	if err != nil {
		r.rep.addStep("lb-in", ResultFailed, time.Since(t), "")
		return fmt.Errorf("no patch cycle open, app healthy, but the last cycle's load balancer record is still not put back (kept in the state file): %w", err)
	}
	r.rep.addStep("lb-in", cmp.Or(out.result, ResultOK), time.Since(t), "the last cycle's record: "+out.detail)
	r.rep.Summary = append(r.rep.Summary, "from the last cycle's record")
	r.st.LB = nil
	if err := a.save(&r.st, r.st.Step); err != nil {
		return fmt.Errorf("the last cycle's load balancer record is put back, but dropping it from the state file failed (the next exit puts it back again, harmlessly): %w", err)
	}
	return nil
}

// startApp starts the app unless it is online, says what it did, and
// returns the app's pm2 instance ids.
func (a *Agent) startApp(ctx context.Context) (string, []int, error) {
	app := a.cfg.App.Name
	procs, err := a.d.App.Processes(ctx, app)
	switch {
	case errors.Is(err, hooks.ErrUnknownApp):
		if a.cfg.App.Ecosystem == "" {
			return "", nil, fmt.Errorf("%w, and app.ecosystem is not set to start it from", err)
		}
		if err := a.d.App.StartFrom(ctx, app, a.cfg.App.Ecosystem); err != nil {
			return "", nil, err
		}
		return fmt.Sprintf("started %s from %s (pm2 no longer knew it)", app, a.cfg.App.Ecosystem), nil, nil
	case err != nil:
		return "", nil, err
	}
	ids := make([]int, len(procs))
	for i, p := range procs {
		ids[i] = p.ID
	}
	online, _ := onlinePIDs(procs)
	if online == len(procs) {
		return "already online", ids, nil
	}
	if err := a.d.App.Start(ctx, app); err != nil {
		return "", nil, err
	}
	return "started " + app, ids, nil
}

// unblockAndRestore returns the node to service and starts what pre stopped.
func (a *Agent) unblockAndRestore(ctx context.Context, r *phaseRun) error {
	err := a.step(r, "unblock", func() (stepOut, error) {
		if err := a.d.Firewall.Unblock(ctx); err != nil {
			return stepOut{}, fmt.Errorf("unblocking: %w", err)
		}
		fams := famShort(a.d.Firewall.Families())
		r.rep.Summary = append(r.rep.Summary, fmt.Sprintf("unblocked %s/tcp %s", portList(a.cfg.Traffic.Ports), fams))
		return passed(fmt.Sprintf("chain and jump removed (%s), verified", fams))
	})
	if err != nil {
		return a.exitFailed(ctx, r, err)
	}
	// The node is unblocked: what pre stopped comes back, then the load
	// balancer takes it again even when a unit or a command failed, or a
	// node in service would stay out of rotation with its cycle closed.
	extrasErr := a.restoreExtras(ctx, r)
	err = a.lbIn(ctx, r)
	switch {
	case extrasErr != nil && err != nil:
		err = fmt.Errorf("%w; and %w", extrasErr, err)
	case extrasErr != nil:
		err = extrasErr
	}
	if err != nil {
		err = nodeLeft(nodeBackBut, err)
		a.closeCycle(r, StatusFailed, err.Error())
	}
	return err
}

// lbIn puts the node back in the load balancer's rotation, last, and waits
// until every checker of the LB has seen the app pass its threshold of
// times in a row: exit ends (and SSM moves on to the next node) only when
// the LB routes to this one again. The node is unblocked whatever the LB
// does, so a failure here closes the cycle as failed, not out of service.
func (a *Agent) lbIn(ctx context.Context, r *phaseRun) error {
	if a.d.Rotation == nil {
		return nil
	}
	err := a.step(r, "lb-in", func() (stepOut, error) { return a.putBack(ctx, r) })
	if err != nil {
		// The record stays for the next exit to put back.
		return fmt.Errorf("unblocked, but the load balancer did not confirm it routes to the node: %w", err)
	}
	// Put back: nothing left for a later exit, however the cycle ends (a
	// rollback that made the app healthy again closes it failed).
	r.st.LB = nil
	return nil
}

// putBack puts the node back in the load balancer's rotation and waits
// until the LB routes to it: lb-in's work, also that of an exit that puts
// back what the last cycle could not.
func (a *Agent) putBack(ctx context.Context, r *phaseRun) (stepOut, error) {
	c := a.cfg.LB
	a.progress("lb-in: putting the node back in the load balancer's rotation and waiting until it routes to it (at most %s)", c.wait(false))
	w, err := a.rotation(r.st).PutBack(ctx, c.wait(false).D())
	if err != nil {
		return stepOut{}, err
	}
	if w.NotIn {
		r.rep.warn("nothing was put back in the load balancer's rotation (%s)", w.By)
		r.rep.Summary = append(r.rep.Summary, fmt.Sprintf("in no LB rotation (%s)", w.By))
		return stepOut{result: "warn", detail: lbNotIn}, nil
	}
	if w.NoChecker {
		r.rep.warn("no load balancer checker reached the readiness endpoint in %s: nothing confirms the LB routes to the node again", 2*c.Interval.D())
		return stepOut{result: "warn", detail: "no checker seen"}, nil
	}
	r.rep.Summary = append(r.rep.Summary, fmt.Sprintf("back in LB rotation (%s)", w.By))
	if len(w.Checkers) > 0 {
		return passed(fmt.Sprintf("%s %v saw it pass %d time(s) in a row, after %s", w.By, w.Checkers, c.HealthyThreshold, w.Took.Round(10*time.Millisecond)))
	}
	return passed(fmt.Sprintf("%s, after %s", w.By, w.Took.Round(10*time.Millisecond)))
}

// restoreExtras starts the units pre stopped and runs the exit commands, in
// the configured order; the node is already back in service.
func (a *Agent) restoreExtras(ctx context.Context, r *phaseRun) error {
	if len(a.cfg.Steps.StopUnits) == 0 && len(a.cfg.Steps.ExitCommands) == 0 {
		return nil
	}
	return a.step(r, "restore", func() (stepOut, error) {
		for _, u := range a.cfg.Steps.StopUnits {
			if err := a.d.Units.Start(ctx, u); err != nil {
				return stepOut{}, err
			}
		}
		for _, c := range a.cfg.Steps.ExitCommands {
			if err := a.d.Commands.Run(ctx, c); err != nil {
				return stepOut{}, err
			}
		}
		return passed(fmt.Sprintf("%d unit(s) started, %d command(s) run", len(a.cfg.Steps.StopUnits), len(a.cfg.Steps.ExitCommands)))
	})
}

// exitFailed applies exit.on_failure: keep the node blocked (default), or
// unblock it anyway as the tutorial does.
func (a *Agent) exitFailed(ctx context.Context, r *phaseRun, cause error) error {
	if a.cfg.Exit.OnFailure != "unblock" {
		a.failed(r, cause)
		return stillOut(cause)
	}
	if err := a.d.Firewall.Unblock(ctx); err != nil {
		err = errors.Join(cause, fmt.Errorf("unblocking anyway (exit.on_failure: unblock): %w", err))
		a.failed(r, err)
		return stillOut(err)
	}
	if a.d.Rotation != nil {
		a.rotation(r.st).SetOut(false) // the endpoint answers as the (unhealthy) app
	}
	r.rep.warn("exit.on_failure is unblock: the node is back in service although %v", cause)
	err := nodeLeft("back in service UNHEALTHY (exit.on_failure: unblock)", cause)
	a.closeCycle(r, StatusFailed, err.Error())
	return err
}

// closeCycle records the end of the cycle: the node is in service.
func (a *Agent) closeCycle(r *phaseRun, status, msg string) {
	r.st.Open, r.st.Status, r.st.Error = false, status, msg
	// r.st.LB stays unless lb-in put it back (lbIn drops it): a cycle that
	// ended before or in lb-in (a RegisterTargets refused, a forced exit)
	// keeps what the LB backend must put back; the next exit, healthy,
	// puts it back; the next pre starts a record of its own.
	r.st.Block, r.st.Stopped = nil, nil
	r.st.ClosedAt = time.Now().UTC()
	if err := a.save(&r.st, "done"); err != nil {
		// The node is in service whatever the disk says: the daemon must
		// not re-block it, and the verdict says what a reboot would do.
		a.d.State.Remember(r.st, err)
		r.unrecorded = err
		a.log.Error("recording the end of the cycle", zap.Error(err))
		cause := err
		var pe *os.PathError
		if errors.As(err, &pe) {
			cause = pe.Err
		}
		r.rep.Unrecorded = fmt.Sprintf("the end of the cycle was NOT recorded in %s (%v): a reboot before it can be written re-blocks the node, and the next exit returns it", a.d.State.Path, cause)
	}
}
