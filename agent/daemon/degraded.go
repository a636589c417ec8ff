package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// ErrNodeNotReady is BuildOrWait's answer when the node still lacks what
// the config names once WaitOptions.Limit has passed with no cycle open:
// the daemon exits 2, which systemd does not restart
// (RestartPreventExitStatus=2), instead of flapping.
var ErrNodeNotReady = errors.New("the node is not ready for the agent")

// WaitOptions bound BuildOrWait.
type WaitOptions struct {
	// The unit's watchdog (WATCHDOG_USEC); 0 when it has none.
	Watchdog time.Duration
	// How long the node may lack what Build needs before BuildOrWait gives
	// up (daemon.node_wait); 0 waits until ctx ends.
	Limit time.Duration
	// Asked once Limit has passed, before each give-up: an open cycle (or
	// a state that cannot be read) keeps the daemon up, degraded, since
	// its hooks and its re-assert are what bring the node back. nil
	// counts as open.
	CycleOpen func() (bool, error)
	// A receive retries at once (SIGHUP: systemctl reload after fixing
	// the config); nil never does.
	Wake <-chan os.Signal
	// Reassert, every ReassertEvery while degraded, puts an open cycle's
	// block back (what the boot re-block does, from the state file and
	// iptables alone): nothing else watches it until the agent is built.
	Reassert      func(context.Context)
	ReassertEvery time.Duration
}

// Rebuilder is the degraded start's build: each try reads the config file
// at path as it now is, so the fix of a degraded daemon's config needs no
// restart, but refuses an edit of what the daemon bound at start from
// started (restartOnly), as a reload does.
func Rebuilder(path string, started agent.Config, build func(agent.Config) (*agent.Agent, error)) func() (*agent.Agent, error) {
	return func() (*agent.Agent, error) {
		cfg, err := agent.LoadConfig(path)
		if err != nil {
			return nil, err
		}
		if err := restartOnly(started, cfg); err != nil {
			return nil, err
		}
		return build(cfg)
	}
}

// BuildOrWait builds the daemon's Agent, and while that fails (an app user
// that LDAP/SSSD does not know yet at boot, a CA file on a disk mounted
// later, pm2 not installed yet) keeps the daemon up, degraded, instead of
// exiting into systemd's start limit (issue 13, R3): the boot re-block ran
// before, and nothing here may undo it. Degraded, it reports READY=1 with
// a STATUS= line that says why (units ordered after it start; the hooks
// find no daemon and run their phase in their own process), keeps the
// watchdog fed, sets patchagent_daemon_degraded, and retries the build
// (1 s doubling to 30 s) until it works or ctx is done.
//
// A node that still cannot build once o.Limit has passed is misconfigured
// rather than slow to boot (issue 17): with no cycle open BuildOrWait
// returns ErrNodeNotReady with the last reason; with one open it stays up
// and asks again at each retry.
func BuildOrWait(ctx context.Context, build func() (*agent.Agent, error), n Notifier, o WaitOptions, log *zap.Logger, m *agent.Metrics) (*agent.Agent, error) {
	a, err := build()
	if err == nil {
		return a, nil
	}
	if n == nil {
		n = nopNotifier{}
	}
	start := time.Now()
	ping := o.Watchdog / 2
	if ping <= 0 {
		ping = degradedMaxRetry
	}
	m.ObserveDegraded(true)
	defer m.ObserveDegraded(false)
	status := func(err error) string {
		return "degraded, phases not served: " + firstLine(err)
	}
	log.Error("daemon degraded: cannot build the agent, retrying", zap.Error(err), zap.Duration("node_wait", o.Limit))
	_ = n.Notify(notifyReady + "\nSTATUS=" + status(err))
	last := err.Error()
	wait := degradedFirstRetry
	next := time.Now().Add(wait)
	t := time.NewTicker(min(ping, degradedFirstRetry))
	defer t.Stop()
	held := false // past the limit, kept up by an open cycle
	reasserted := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		case sig := <-o.Wake:
			log.Info("daemon degraded: retrying the build now", zap.Stringer("signal", sig))
			wait, next = degradedFirstRetry/2, time.Now()
		}
		if o.Watchdog > 0 {
			_ = n.Notify("WATCHDOG=1")
		}
		if o.Reassert != nil && time.Since(reasserted) >= o.ReassertEvery {
			o.Reassert(ctx)
			reasserted = time.Now()
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
		if o.Limit > 0 && time.Since(start) >= o.Limit {
			open, serr := true, error(nil)
			if o.CycleOpen != nil {
				open, serr = o.CycleOpen()
			}
			if !open && serr == nil {
				err = fmt.Errorf("%w: still failing after daemon.node_wait %s: %w", ErrNodeNotReady, o.Limit, err)
				_ = n.Notify("STATUS=stopped: " + firstLine(err) + "; fix it, then systemctl restart patchagent")
				return nil, err
			}
			if !held {
				held = true
				log.Error("daemon.node_wait has passed, but a patch cycle may be open: staying up, degraded", zap.Duration("node_wait", o.Limit), zap.NamedError("state", serr))
			}
		}
		wait = min(2*wait, degradedMaxRetry)
		next = time.Now().Add(wait)
	}
}

// firstLine is err's first line, for a STATUS= line.
func firstLine(err error) string { return strings.SplitN(err.Error(), "\n", 2)[0] }
