package daemon

import (
	"context"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
)

// Degraded-mode retry bounds.
const (
	degradedFirstRetry = time.Second
	degradedMaxRetry   = 30 * time.Second
)

// BuildOrWait builds the daemon's Agent, and while that fails (an app user
// that LDAP/SSSD does not know yet at boot, a CA file on a disk mounted
// later, pm2 not installed yet) keeps the daemon up, degraded, instead of
// exiting into systemd's start limit (issue 13, R3): the boot re-block ran
// before, and nothing here may undo it. Degraded, it reports READY=1 with
// a STATUS= line that says why (units ordered after it start; the hooks
// find no daemon and run their phase in their own process), keeps the
// watchdog fed, sets patchagent_daemon_degraded, and retries the build
// (1 s doubling to 30 s) until it works or ctx is done.
func BuildOrWait(ctx context.Context, build func() (*agent.Agent, error), n Notifier, watchdog time.Duration, log *zap.Logger, m *agent.Metrics) (*agent.Agent, error) {
	a, err := build()
	if err == nil {
		return a, nil
	}
	if n == nil {
		n = nopNotifier{}
	}
	ping := watchdog / 2
	if ping <= 0 {
		ping = degradedMaxRetry
	}
	m.ObserveDegraded(true)
	defer m.ObserveDegraded(false)
	status := func(err error) string {
		return "degraded, phases not served: " + strings.SplitN(err.Error(), "\n", 2)[0]
	}
	log.Error("daemon degraded: cannot build the agent, retrying", zap.Error(err))
	_ = n.Notify(notifyReady + "\nSTATUS=" + status(err))
	last := err.Error()
	wait := degradedFirstRetry
	next := time.Now().Add(wait)
	t := time.NewTicker(min(ping, degradedFirstRetry))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
		if watchdog > 0 {
			_ = n.Notify("WATCHDOG=1")
		}
		if time.Now().Before(next) {
			continue
		}
		if a, err = build(); err == nil {
			log.Info("daemon no longer degraded: agent built")
			return a, nil
		}
		if err.Error() != last {
			last = err.Error()
			log.Error("daemon degraded: cannot build the agent, retrying", zap.Error(err))
			_ = n.Notify("STATUS=" + status(err))
		}
		wait = min(2*wait, degradedMaxRetry)
		next = time.Now().Add(wait)
	}
}
