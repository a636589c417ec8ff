package agent

import (
	"context"
	"fmt"
	"time"
)

// Reconcile is the boot-time step, ordered before the app's pm2 service:
// while a patch cycle is open the node must not take outside traffic, but a
// reboot took every iptables rule with it and pm2 is about to bring the app
// back unchecked. So if a cycle is open and the block is not in place, it is
// re-applied. With no cycle open it changes nothing: a leftover block is
// removed by exit, after a health check the app cannot pass before it starts.
func (a *Agent) Reconcile(ctx context.Context, opt RunOptions) *Report {
	return a.runPhase(ctx, "reconcile", opt, a.reconcile)
}

func (a *Agent) reconcile(ctx context.Context, r *phaseRun) error {
	rep := r.rep
	t := time.Now()
	fw, err := a.d.Firewall.Status(ctx)
	if err != nil {
		rep.addStep("check", ResultFailed, time.Since(t), "")
		return fmt.Errorf("reading the firewall: %w", err)
	}
	if !r.st.Open {
		rep.addStep("check", ResultOK, time.Since(t), "no patch cycle open")
		rep.Summary = append(rep.Summary, "nothing to do: no patch cycle open")
		return nil
	}
	detail := fmt.Sprintf("cycle %s open (last: %s %s at step %s)", r.st.CycleID, r.st.Phase, r.st.Status, r.st.Step)
	if r.rebooted() {
		detail += ", node rebooted since"
	}
	rep.addStep("check", ResultOK, time.Since(t), detail)
	if !r.opt.DryRun {
		a.HoldRotation() // an open cycle keeps the node out of the LB's rotation too
	}
	if !r.st.Blocks() {
		rep.Summary = append(rep.Summary, "not blocked: the cycle's pre stopped before the block (out of the load balancer's rotation only)")
		return nil
	}
	if fw.Blocked() && !r.opt.BootReblocked {
		rep.Summary = append(rep.Summary, "block in place")
		return nil
	}
	if r.opt.DryRun {
		rep.Result = ResultDryRun
		rep.Plan = append(rep.Plan, a.d.Firewall.Plan()...)
		return nil
	}
	// Keep the phase that was interrupted: reconcile only restores its block.
	r.st.BootID = r.boot
	if err := a.save(&r.st, r.st.Step); err != nil {
		return err
	}
	t = time.Now()
	how := ""
	if fw.Blocked() {
		how = "before the agent was built (BootReblock)"
	} else if err := a.d.Firewall.Block(ctx); err != nil {
		rep.addStep("reblock", ResultFailed, time.Since(t), "")
		return fmt.Errorf("re-applying the block of cycle %s: %w", r.st.CycleID, err)
	}
	rep.addStep("reblock", ResultOK, time.Since(t), how)
	rep.Reblocked = true
	rep.Summary = append(rep.Summary, fmt.Sprintf("block re-applied (%s/tcp %s): cycle %s is open", portList(a.cfg.Traffic.Ports), famShort(a.d.Firewall.Families()), r.st.CycleID))
	return nil
}
