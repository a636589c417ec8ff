package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/hooks"
)

// defaultListenWait bounds the wait for the app's port to be released after
// pm2 reports the app stopped.
const defaultListenWait = 5 * time.Second

// Pre takes the node out of service: block new connections, drain the
// established ones, stop the app. Every side effect is recorded in the state
// file before it happens. A failure after the block leaves the node blocked
// with a record of it, for exit to restore.
func (a *Agent) Pre(ctx context.Context, opt RunOptions) *Report {
	return a.runPhase(ctx, "pre", opt, a.pre)
}

func (a *Agent) pre(ctx context.Context, r *phaseRun) error {
	pids, err := a.preCheck(ctx, r)
	if err != nil || r.opt.DryRun {
		return err
	}
	lbRecord, err := a.recordRotation(ctx, r)
	if err != nil {
		return err
	}
	fams := a.d.Firewall.Families()
	a.begin(r)
	r.st.LB = lbRecord
	err = a.preSteps(ctx, r, fams, pids)
	switch {
	case err == nil:
		return nil
	case isIntent(err) && r.st.Step == a.firstStep():
		return fmt.Errorf("nothing was blocked: %w", err)
	}
	a.failed(r, err)
	if r.st.Step == "lb-out" {
		return fmt.Errorf("%w (the node stays out of the load balancer's rotation, not blocked; `patchagent exit` puts it back once the app is healthy)", err)
	}
	return fmt.Errorf("%w (the node stays blocked; `patchagent exit` returns it to service once the app is healthy)", err)
}

// firstStep is pre's first side effect: out of the load balancer's
// rotation when there is one, else the block.
func (a *Agent) firstStep() string {
	if a.d.Rotation != nil {
		return "lb-out"
	}
	return "block"
}

// lbOut takes the node out of the load balancer's rotation and waits until
// every checker of the LB was told so its threshold of times in a row:
// from then on the LB sends nothing new, and the block refuses nobody it
// routes. With no checker seen, nothing confirms it: a warning, and the
// drain's min_wait is the only wait.
func (a *Agent) lbOut(ctx context.Context, r *phaseRun) (stepOut, error) {
	c := a.cfg.LB
	a.progress("lb-out: taking the node out of the load balancer's rotation and waiting until it has (at most %s)", c.Deadline)
	w, err := a.rotation(r.st).TakeOut(ctx, c.Deadline.D())
	if err != nil {
		return stepOut{}, fmt.Errorf("taking the node out of the load balancer's rotation: %w", err)
	}
	if w.NotIn {
		msg := fmt.Sprintf("the node is in no load balancer rotation to take it out of (%s): nothing was taken out", w.By)
		r.rep.warn("%s", msg)
		r.st.Warnings = append(r.st.Warnings, msg)
		r.rep.Summary = append(r.rep.Summary, fmt.Sprintf("in no LB rotation (%s)", w.By))
		return stepOut{result: "warn", detail: lbNotIn}, nil
	}
	if w.NoChecker {
		msg := fmt.Sprintf("no load balancer checker reached the readiness endpoint in %s (two lb.interval): nothing confirms the LB took the node out; drain.min_wait %s is the only wait before the block counts", 2*c.Interval.D(), a.cfg.Drain.MinWait)
		r.rep.warn("%s", msg)
		r.st.Warnings = append(r.st.Warnings, msg)
		return stepOut{result: "warn", detail: "no checker seen"}, nil
	}
	r.rep.Summary = append(r.rep.Summary, fmt.Sprintf("out of LB rotation (%s)", w.By))
	if len(w.Checkers) > 0 {
		return passed(fmt.Sprintf("%s %v told 503 %d time(s) in a row, after %s", w.By, w.Checkers, c.UnhealthyThreshold, w.Took.Round(10*time.Millisecond)))
	}
	return passed(fmt.Sprintf("%s, after %s", w.By, w.Took.Round(10*time.Millisecond)))
}

// recordRotation asks the load balancer backend, if it keeps a record,
// what its take-out will change (read-only), for the state file: the
// lb-out step writes it there before changing anything. A pre run again
// in an open cycle keeps the cycle's record: the node may be out already,
// and only that record says what to put back. A new cycle's record
// carries what the last one failed to put back.
func (a *Agent) recordRotation(ctx context.Context, r *phaseRun) (json.RawMessage, error) {
	j, ok := a.d.Rotation.(JournaledRotation)
	if !ok {
		return nil, nil
	}
	if r.st.Open && r.st.LBPending() {
		return r.st.LB, nil
	}
	// A closed cycle keeps a record only when it could not put it all
	// back: the new one carries it.
	rec, err := j.Record(ctx, r.st.LB)
	if err != nil {
		return nil, fmt.Errorf("nothing was changed: finding what to take out of the load balancer: %w", err)
	}
	return rec, nil
}

// preCheck is pre's read-only check, so that a bad app name or a dead pm2
// daemon fails before the node is taken out of service; a dry run then
// plans, the whole plan even when the check failed (its step marked failed,
// the verdict says why and the dry run exits as pre would). It returns the pids of the app's
// instances.
func (a *Agent) preCheck(ctx context.Context, r *phaseRun) ([]int, error) {
	t := time.Now()
	detail, pids, err := a.preRead(ctx)
	result := ResultOK
	if err != nil {
		result = ResultFailed
	}
	r.rep.addStep("check", result, time.Since(t), detail)
	if r.opt.DryRun {
		a.prePlan(r.rep, pids)
	}
	return pids, err
}

// preRead reads what pre checks: the app's instances in pm2 and the
// firewall. It returns the check's detail and the instances' pids.
func (a *Agent) preRead(ctx context.Context) (string, []int, error) {
	app := a.cfg.App.Name
	procs, err := a.d.App.Processes(ctx, app)
	if err != nil {
		err = fmt.Errorf("nothing was blocked: %w", err)
		if errors.Is(err, hooks.ErrUnknownApp) {
			return "", nil, configError(err)
		}
		return "", nil, err
	}
	online, pids := onlinePIDs(procs)
	fw, err := a.d.Firewall.Status(ctx)
	if err != nil {
		return "", pids, fmt.Errorf("nothing was blocked: reading the firewall: %w", err)
	}
	fwState := "not blocked"
	if fw.Blocked() {
		fwState = "already blocked"
	} else if fw.Partial() {
		fwState = "partly blocked"
	}
	return fmt.Sprintf("%s: %d/%d instance(s) online (pm2 of user %s); firewall %s", app, online, len(procs), a.d.AppUser, fwState), pids, nil
}

// prePlan is a dry run's plan of pre: every step it would take. pids are
// the app's, nil when pm2 could not list them.
func (a *Agent) prePlan(rep *Report, pids []int) {
	app := a.cfg.App.Name
	rep.Result = ResultDryRun
	if a.d.Rotation != nil {
		rep.Plan = append(rep.Plan, "lb-out: "+a.cfg.LB.plan(true))
	}
	rep.Plan = append(rep.Plan, a.d.Firewall.Plan()...)
	rep.Plan = append(rep.Plan, fmt.Sprintf("drain: wait until no connection to port(s) %s from outside loopback is busy and every one is idle for %s (%s for a keep-alive one that answered a request; at least %s after the block, at most %s)",
		portList(a.cfg.Traffic.Ports), a.cfg.Drain.Idle, a.cfg.Drain.KeepAliveIdle, a.cfg.Drain.MinWait, a.cfg.Drain.Timeout))
	gone := "the app's pid(s) (unknown: pm2 did not list them)"
	if pids != nil {
		gone = fmt.Sprintf("pid(s) %v", pids)
	}
	rep.Plan = append(rep.Plan, fmt.Sprintf("pm2 stop %s, through the pm2 daemon of user %s, then check %s are gone and port(s) %s are no longer listened on",
		app, a.d.AppUser, gone, portList(a.cfg.Traffic.Ports)))
	for _, u := range a.cfg.Steps.StopUnits {
		rep.Plan = append(rep.Plan, "systemctl stop "+u)
	}
	for _, c := range a.cfg.Steps.PreCommands {
		rep.Plan = append(rep.Plan, fmt.Sprintf("run %q", c))
	}
}

// preSteps are pre's side effects, each a step: block, drain, stop, the
// configured extras, done.
func (a *Agent) preSteps(ctx context.Context, r *phaseRun, fams []firewall.Family, pids []int) error {
	app, rep, st := a.cfg.App.Name, r.rep, &r.st
	if a.d.Rotation != nil {
		if err := a.step(r, "lb-out", func() (stepOut, error) { return a.lbOut(ctx, r) }); err != nil {
			return err
		}
	}
	var blockedAt time.Time
	// The block's intent, saved by its step: from here on the cycle is
	// one whose block the boot and the daemon's watch put back. A pre that
	// stopped at lb-out left the node unblocked, and so it stays.
	if st.Block == nil {
		st.Block = &BlockRecord{Chain: firewall.Chain, Ports: ports16(a.cfg.Traffic.Ports), Action: a.cfg.Traffic.Action,
			Families: fams, BootID: r.boot, Since: time.Now().UTC()}
	}
	err := a.step(r, "block", func() (stepOut, error) {
		a.progress("block: refusing new connections to %s/tcp from outside loopback (%s, %s)", portList(a.cfg.Traffic.Ports), famShort(fams), a.cfg.Traffic.Action)
		if err := a.d.Firewall.Block(ctx); err != nil {
			return stepOut{}, fmt.Errorf("blocking: %w", err)
		}
		blockedAt = a.d.Now() // the drain's schedule runs on the agent's clock
		blocked := fmt.Sprintf("blocked %s/tcp %s", portList(a.cfg.Traffic.Ports), famShort(fams))
		rep.Summary = append(rep.Summary, blocked)
		return passed(fmt.Sprintf("%s in chain %s (%s)", blocked, firewall.Chain, a.cfg.Traffic.Action))
	})
	if err != nil {
		return err
	}
	if err := a.step(r, "drain", func() (stepOut, error) { return a.drainStep(ctx, r, blockedAt) }); err != nil {
		return err
	}
	if st.Stopped == nil || st.Stopped.App != app || len(pids) > 0 {
		st.Stopped = &StopRecord{App: app, User: a.d.AppUser, WasOnline: pids, At: time.Now().UTC()}
	}
	err = a.step(r, "stop", func() (stepOut, error) {
		a.progress("stop: pm2 stop %s, through the pm2 daemon of user %s", app, a.d.AppUser)
		if _, err := a.d.App.Stop(ctx, app); err != nil {
			return stepOut{}, err
		}
		if err := a.waitPortsReleased(ctx); err != nil {
			return stepOut{}, fmt.Errorf("pm2 reports %s stopped, but %w", app, err)
		}
		rep.Summary = append(rep.Summary, "stopped "+app)
		return passed(fmt.Sprintf("%s stopped (pid(s) %v gone, port(s) %s released)", app, pids, portList(a.cfg.Traffic.Ports)))
	})
	if err != nil {
		return err
	}
	// The tutorial's other scenarios: stop a metrics agent, leave a cluster.
	if len(a.cfg.Steps.StopUnits) > 0 || len(a.cfg.Steps.PreCommands) > 0 {
		if err := a.step(r, "extras", func() (stepOut, error) { return a.preExtras(ctx) }); err != nil {
			return err
		}
	}
	st.Status = StatusOK
	return a.saveRun(r, "done")
}

// drainStep waits for the connections the block left (drain.go) and says
// how it ended; a time-out is a warning, not a failure.
func (a *Agent) drainStep(ctx context.Context, r *phaseRun, blockedAt time.Time) (stepOut, error) {
	rep := r.rep
	dr, err := a.drain(ctx, blockedAt)
	rep.Drain = &dr
	if err != nil {
		return stepOut{}, err
	}
	if dr.TimedOut {
		msg := fmt.Sprintf("drain timed out after %s with %d connection(s) still busy (%d with a request in flight, %d open): stopping the app cuts them",
			a.cfg.Drain.Timeout, dr.Active, dr.Busy, dr.Remaining)
		rep.warn("%s", msg)
		r.st.Warnings = append(r.st.Warnings, msg)
		rep.Summary = append(rep.Summary, fmt.Sprintf("drain timed out with %d busy", dr.Active))
		return stepOut{result: "warn", dur: dr.Waited, detail: fmt.Sprintf("%d busy of %d open at the timeout", dr.Active, dr.Remaining)}, nil
	}
	rep.Summary = append(rep.Summary, fmt.Sprintf("drained %d connection(s)", dr.Seen))
	return stepOut{dur: dr.Waited, detail: fmt.Sprintf("%d connection(s) seen, %d idle left, %d polls", dr.Seen, dr.Remaining, dr.Polls)}, nil
}

// preExtras stops steps.stop_units and runs steps.pre_commands, in order.
func (a *Agent) preExtras(ctx context.Context) (stepOut, error) {
	for _, u := range a.cfg.Steps.StopUnits {
		if err := a.d.Units.Stop(ctx, u); err != nil {
			return stepOut{}, err
		}
	}
	for _, c := range a.cfg.Steps.PreCommands {
		if err := a.d.Commands.Run(ctx, c); err != nil {
			return stepOut{}, err
		}
	}
	return passed(fmt.Sprintf("%d unit(s) stopped, %d command(s) run", len(a.cfg.Steps.StopUnits), len(a.cfg.Steps.PreCommands)))
}

// waitPortsReleased waits until nothing listens on the app's ports.
func (a *Agent) waitPortsReleased(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.listenWait)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ls, err := a.d.Conns.Listening(ctx, ports16(a.cfg.Traffic.Ports))
		if err != nil {
			return fmt.Errorf("reading listeners: %w", err)
		}
		if len(ls) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			var where []string
			for _, l := range ls {
				where = append(where, fmt.Sprintf("%s (uid %d)", l.Local, l.UID))
			}
			return fmt.Errorf("after %s something still listens on %s", a.listenWait, strings.Join(where, ", "))
		case <-tick.C:
		}
	}
}

func onlinePIDs(procs []hooks.Process) (online int, pids []int) {
	pids = []int{}
	for _, p := range procs {
		if p.Status == hooks.StatusOnline {
			online++
		}
		if p.PID > 0 {
			pids = append(pids, p.PID)
		}
	}
	return online, pids
}

func portList(ps []int) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

// famShort renders families as "v4+v6".
func famShort(fs []firewall.Family) string {
	s := make([]string, len(fs))
	for i, f := range fs {
		s[i] = strings.Replace(string(f), "ipv", "v", 1)
	}
	return strings.Join(s, "+")
}
