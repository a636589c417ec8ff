package agent

import (
	"time"

	"github.com/patchagent/patchagent/hooks"
)

// Budget is the longest phase can take with cfg by patchagent's own bounds
// (every wait of the phase has one), before time for copies (snapshot,
// restore) and the daemon hand-over: what the SSM documents' timeoutSeconds
// must exceed, with a margin (deploy/ssm checks each document against it).
// It is the one place these bounds are added up.
func Budget(phase string, cfg Config) (time.Duration, bool) {
	lbWait := cfg.LB.wait(phase == "pre").D() // the wait for the load balancer, if any
	switch phase {
	case "pre":
		// The lock, the block (iptables' own lock wait), the drain, pm2's
		// stop and the wait for the ports to close.
		return PhaseLockWait + lbWait + cfg.Traffic.LockWait.D() + cfg.Drain.Timeout.D() +
			hooks.DefaultPM2CallTimeout + hooks.DefaultPM2StopWait + defaultListenWait, true
	case "post":
		return PhaseLockWait + cfg.Post.NPM.Timeout.D(), true
	case "exit":
		// start, health wait; rollback: restart, second health wait; unblock.
		return PhaseLockWait + 2*hooks.DefaultPM2CallTimeout + 2*cfg.Health.Deadline.D() + cfg.Traffic.LockWait.D() + lbWait, true
	}
	return 0, false
}
