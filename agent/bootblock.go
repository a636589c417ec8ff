package agent

import (
	"context"
	"errors"
	"fmt"

	"go.uber.org/zap"
)

// BootReblock is the boot re-block at its smallest (issue 13, R3): it needs
// the state file and iptables, nothing else. The daemon and `patchagent
// reconcile` run it first, before the metrics listener, the app user's
// lookup (an LDAP or SSSD user is unknown that early: the daemon starts
// before the network), pm2's discovery, the CA file or anything else that
// can fail for its own reasons: those failures are reported afterwards, and
// by then an open cycle's block is back. It writes nothing of its own (the
// state dir may be full or read-only). It decides under the phase lock,
// without waiting for it: the daemon also starts while a hook runs a phase
// in its own process (the daemon restarted, or down when the hook began),
// and an exit that has just unblocked must not have its node blocked again
// behind its back; that phase owns the block, and the daemon's watch acts
// once it is done. At a real boot nobody holds the lock. A lock that cannot
// be opened at all does not stop it: the block comes first.
// The full reconcile still runs once the agent is built.
// reblocked says whether it put the block back: the reconcile that follows
// reports and counts it as its own (RunOptions.BootReblocked).
func BootReblock(ctx context.Context, cfg Config, log *zap.Logger) (verdict string, reblocked bool, err error) {
	fw, err := newFirewall(cfg, log)
	if err != nil {
		return "", false, err
	}
	return bootReblockLocked(ctx, fw, cfg.Daemon.StateDir, log)
}

// bootReblockLocked is bootReblock under the phase lock of dir, if free.
func bootReblockLocked(ctx context.Context, fw Firewall, dir string, log *zap.Logger) (string, bool, error) {
	release, err := NewPhaseLock(dir).Acquire(ctx, "boot re-block", 0)
	switch {
	case errors.Is(err, ErrLocked):
		return fmt.Sprintf("nothing done: %v; it owns the block", err), false, nil
	case err != nil:
		log.Warn("boot re-block without the phase lock", zap.Error(err))
	default:
		defer release()
	}
	return bootReblock(ctx, fw, NewStateStore(dir))
}

// bootReblock decides from the state and the kernel: an open cycle whose
// rules are gone gets its block back. A state file that cannot be read
// leaves the firewall as it is: a block of ours stays (the node stays out
// of service, and the verdict says why), none is added (whether a cycle is
// open is unknown; the phases refuse to run until the operator looks).
func bootReblock(ctx context.Context, fw Firewall, store *StateStore) (string, bool, error) {
	st, lerr := store.Load()
	if lerr != nil && !errors.Is(lerr, ErrStateUnreadable) {
		return "", false, lerr
	}
	kernel, err := fw.Status(ctx)
	if err != nil {
		return "", false, fmt.Errorf("reading the firewall: %w", err)
	}
	switch {
	case lerr != nil && kernel.Present():
		return fmt.Sprintf("block of ours kept: %v", lerr), false, nil
	case lerr != nil:
		return "", false, fmt.Errorf("no block of ours, and whether a cycle is open is unknown: %w", lerr)
	case !st.Open:
		return "nothing to do: no patch cycle open", false, nil
	case kernel.Blocked():
		return fmt.Sprintf("block in place: cycle %s is open", st.CycleID), false, nil
	case !st.Blocks():
		return fmt.Sprintf("nothing to do: cycle %s is open but its pre stopped before the block", st.CycleID), false, nil
	}
	if err := fw.Block(ctx); err != nil {
		return "", false, fmt.Errorf("re-applying the block of cycle %s: %w", st.CycleID, err)
	}
	return fmt.Sprintf("block re-applied: cycle %s is open", st.CycleID), true, nil
}
