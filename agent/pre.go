package agent

import (
	"context"
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
	app, rep, opt := a.cfg.App.Name, r.rep, r.opt
	// check: read-only, so that a bad app name or a dead pm2 daemon fails
	// before the node is taken out of service.
	t := time.Now()
	procs, err := a.d.App.Processes(ctx, app)
	if err != nil {
		rep.addStep("check", ResultFailed, time.Since(t), "")
		err = fmt.Errorf("nothing was blocked: %w", err)
		if errors.Is(err, hooks.ErrUnknownApp) {
			return configError(err)
		}
		return err
	}
	fw, err := a.d.Firewall.Status(ctx)
	if err != nil {
		rep.addStep("check", ResultFailed, time.Since(t), "")
		return fmt.Errorf("nothing was blocked: reading the firewall: %w", err)
	}
	online, pids := onlinePIDs(procs)
	fwState := "not blocked"
	if fw.Blocked() {
		fwState = "already blocked"
	} else if fw.Partial() {
		fwState = "partly blocked"
	}
	rep.addStep("check", ResultOK, time.Since(t), fmt.Sprintf("%s: %d/%d instance(s) online (pm2 of user %s); firewall %s",
		app, online, len(procs), a.d.AppUser, fwState))

	if opt.DryRun {
		rep.Result = ResultDryRun
		rep.Plan = append(rep.Plan, a.d.Firewall.Plan()...)
		rep.Plan = append(rep.Plan, fmt.Sprintf("drain: wait until no connection to port(s) %s from outside loopback is busy and every one is idle for %s (%s for a keep-alive one that answered a request; at least %s after the block, at most %s)",
			portList(a.cfg.Traffic.Ports), a.cfg.Drain.Idle, a.cfg.Drain.KeepAliveIdle, a.cfg.Drain.MinWait, a.cfg.Drain.Timeout))
		rep.Plan = append(rep.Plan, fmt.Sprintf("pm2 stop %s, through the pm2 daemon of user %s, then check pid(s) %v are gone and port(s) %s are no longer listened on",
			app, a.d.AppUser, pids, portList(a.cfg.Traffic.Ports)))
		for _, u := range a.cfg.Steps.StopUnits {
			rep.Plan = append(rep.Plan, "systemctl stop "+u)
		}
		for _, c := range a.cfg.Steps.PreCommands {
			rep.Plan = append(rep.Plan, fmt.Sprintf("run %q", c))
		}
		return nil
	}

	fams := a.d.Firewall.Families()
	a.begin(r)
	r.st.Block = &BlockRecord{Chain: firewall.Chain, Ports: ports16(a.cfg.Traffic.Ports), Action: a.cfg.Traffic.Action,
		Families: fams, BootID: r.boot, Since: time.Now().UTC()}
	if err := a.save(&r.st, "block"); err != nil {
		return fmt.Errorf("nothing was blocked: %w", err)
	}
	st := &r.st
	fail := func(err error) error {
		a.failed(r, err)
		return fmt.Errorf("%w (the node stays blocked; `patchagent exit` returns it to service once the app is healthy)", err)
	}

	// block
	t = time.Now()
	a.progress("block: refusing new connections to %s/tcp from outside loopback (%s, %s)", portList(a.cfg.Traffic.Ports), famShort(fams), a.cfg.Traffic.Action)
	if err := a.d.Firewall.Block(ctx); err != nil {
		rep.addStep("block", ResultFailed, time.Since(t), "")
		return fail(fmt.Errorf("blocking: %w", err))
	}
	blockedAt := time.Now()
	blocked := fmt.Sprintf("blocked %s/tcp %s", portList(a.cfg.Traffic.Ports), famShort(fams))
	rep.addStep("block", ResultOK, time.Since(t), fmt.Sprintf("%s in chain %s (%s)", blocked, firewall.Chain, a.cfg.Traffic.Action))
	rep.Summary = append(rep.Summary, blocked)

	// drain
	if err := a.save(st, "drain"); err != nil {
		return fail(err)
	}
	dr, err := a.drain(ctx, blockedAt)
	rep.Drain = &dr
	if err != nil {
		rep.addStep("drain", ResultFailed, time.Since(blockedAt), "")
		return fail(err)
	}
	if dr.TimedOut {
		msg := fmt.Sprintf("drain timed out after %s with %d connection(s) still busy (%d with a request in flight, %d open): stopping the app cuts them",
			a.cfg.Drain.Timeout, dr.Active, dr.Busy, dr.Remaining)
		rep.warn("%s", msg)
		st.Warnings = append(st.Warnings, msg)
		rep.addStep("drain", "warn", dr.Waited, fmt.Sprintf("%d busy of %d open at the timeout", dr.Active, dr.Remaining))
		rep.Summary = append(rep.Summary, fmt.Sprintf("drain timed out with %d busy", dr.Active))
	} else {
		rep.addStep("drain", ResultOK, dr.Waited, fmt.Sprintf("%d connection(s) seen, %d idle left, %d polls", dr.Seen, dr.Remaining, dr.Polls))
		rep.Summary = append(rep.Summary, fmt.Sprintf("drained %d connection(s)", dr.Seen))
	}

	// stop
	if st.Stopped == nil || st.Stopped.App != app || len(pids) > 0 {
		st.Stopped = &StopRecord{App: app, User: a.d.AppUser, WasOnline: pids, At: time.Now().UTC()}
	}
	if err := a.save(st, "stop"); err != nil {
		return fail(err)
	}
	t = time.Now()
	a.progress("stop: pm2 stop %s, through the pm2 daemon of user %s", app, a.d.AppUser)
	if _, err := a.d.App.Stop(ctx, app); err != nil {
		rep.addStep("stop", ResultFailed, time.Since(t), "")
		return fail(err)
	}
	if err := a.waitPortsReleased(ctx); err != nil {
		rep.addStep("stop", ResultFailed, time.Since(t), "")
		return fail(fmt.Errorf("pm2 reports %s stopped, but %w", app, err))
	}
	rep.addStep("stop", ResultOK, time.Since(t), fmt.Sprintf("%s stopped (pid(s) %v gone, port(s) %s released)", app, pids, portList(a.cfg.Traffic.Ports)))
	rep.Summary = append(rep.Summary, "stopped "+app)

	// The tutorial's other scenarios: stop a metrics agent, leave a cluster.
	if len(a.cfg.Steps.StopUnits) > 0 || len(a.cfg.Steps.PreCommands) > 0 {
		if err := a.save(st, "extras"); err != nil {
			return fail(err)
		}
		t = time.Now()
		for _, u := range a.cfg.Steps.StopUnits {
			if err := a.d.Units.Stop(ctx, u); err != nil {
				rep.addStep("extras", ResultFailed, time.Since(t), "")
				return fail(err)
			}
		}
		for _, c := range a.cfg.Steps.PreCommands {
			if err := a.d.Commands.Run(ctx, c); err != nil {
				rep.addStep("extras", ResultFailed, time.Since(t), "")
				return fail(err)
			}
		}
		rep.addStep("extras", ResultOK, time.Since(t), fmt.Sprintf("%d unit(s) stopped, %d command(s) run", len(a.cfg.Steps.StopUnits), len(a.cfg.Steps.PreCommands)))
	}

	st.Status = StatusOK
	if err := a.save(st, "done"); err != nil {
		return fail(err)
	}
	return nil
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
