package agent

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
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
// (StateStore.Remember): an Agent rebuilt from an edited config with the
// same state dir.
func (a *Agent) AdoptState(old *Agent) { a.d.State = old.d.State }

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
	if err != nil || !st.Open {
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
