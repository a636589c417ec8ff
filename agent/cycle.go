package agent

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/firewall/lb"
)

// What the daemon (agent/daemon) asks of the patch cycle between phases:
// these methods are the cycle's side of its loop.

// Config is the configuration the Agent runs.
func (a *Agent) Config() Config { return a.cfg }

// Metrics is where the Agent records (nil if none).
func (a *Agent) Metrics() *Metrics { return a.d.Metrics }

// Log is the Agent's logger.
func (a *Agent) Log() *zap.Logger { return a.d.Log }

// Now is the Agent's clock.
func (a *Agent) Now() time.Time { return a.d.Now() }

// State is the recorded state (what the store knows, StateStore.Load).
func (a *Agent) State() (State, error) { return a.d.State.Load() }

// FirewallStatus is the block as the kernel has it.
func (a *Agent) FirewallStatus(ctx context.Context) (firewall.Status, error) {
	return a.d.Firewall.Status(ctx)
}

// Lock takes the phase lock for holder, waiting as long as a hook's phase
// would (Deps.LockWait).
func (a *Agent) Lock(ctx context.Context, holder string) (release func(), err error) {
	return a.d.Lock.Acquire(ctx, holder, a.d.LockWait)
}

// AdoptState makes a use old's state store, with what it keeps unwritten
// (StateStore.Remember), and old's load balancer signal, with what its
// checkers were told: an Agent rebuilt from an edited config with the same
// state dir and lb section.
func (a *Agent) AdoptState(old *Agent) {
	a.d.State = old.d.State
	if a.d.Rotation != nil && old.d.Rotation != nil {
		a.d.Rotation = old.d.Rotation
	}
}

// Readiness is the load balancer's readiness endpoint (nil without
// lb.health_listen), for the daemon to serve.
func (a *Agent) Readiness() http.Handler {
	h, _ := a.d.Rotation.(http.Handler)
	return h
}

// ReadinessStats is what the readiness endpoint has done (false without
// one), for its metrics.
func (a *Agent) ReadinessStats() (lb.Stats, bool) {
	r, ok := a.d.Rotation.(*lb.Readiness)
	if !ok {
		return lb.Stats{}, false
	}
	return r.Stats(), true
}

// Reassert puts the block of the open cycle back if it is gone (a firewall
// reload, iptables -F). It takes the phase lock without waiting and checks
// again under it: a phase at work (from the socket or a CLI run without the
// daemon) owns the firewall, and one that just closed the cycle must not
// find its node blocked again. It reports whether it re-applied the block.
func (a *Agent) Reassert(ctx context.Context) (bool, error) {
	release, err := a.d.Lock.Acquire(ctx, "watch", 0)
	if errors.Is(err, ErrLocked) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer release()
	st, err := a.d.State.Load()
	if err != nil || !st.Blocks() {
		return false, err
	}
	fw, err := a.d.Firewall.Status(ctx)
	if err != nil || fw.Blocked() {
		return false, err
	}
	a.log.Warn("block gone while a patch cycle is open: re-applying it",
		zap.String("cycle", st.CycleID), zap.String("phase", st.Phase), zap.String("step", st.Step), zap.Bool("partial", fw.Partial()))
	if err := a.d.Firewall.Block(ctx); err != nil {
		return false, err
	}
	if m := a.d.Metrics; m != nil {
		m.ObserveReassert()
		m.ObserveBlock(true)
	}
	a.log.Warn("block re-applied", zap.String("cycle", st.CycleID))
	return true, nil
}

// HoldRotation puts the load balancer signal where the recorded state
// says it is: out while a cycle is open (a daemon starting mid-cycle, after
// a reboot, must not tell the LB the node is ready), else as the app.
func (a *Agent) HoldRotation() {
	if a.d.Rotation == nil {
		return
	}
	st, err := a.d.State.Load()
	a.rotation(st).SetOut(err != nil || st.Open)
}

// rotation is the load balancer backend, given what st recorded of the
// take-out if it keeps a record (JournaledRotation).
func (a *Agent) rotation(st State) Rotation {
	if j, ok := a.d.Rotation.(JournaledRotation); ok && st.LBPending() {
		if err := j.Restore(st.LB); err != nil {
			a.log.Error("the load balancer record in the state file is unreadable: nothing can be put back from it", zap.Error(err))
		}
	}
	return a.d.Rotation
}
