package daemon

import (
	"context"
	"fmt"
	"io"
	"reflect"
	"sync"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
)

// Live is the daemon's Agent, rebuilt from the daemon's config file when
// that file is edited (issue 13, R7): on SIGHUP (systemctl reload) and
// before each new cycle's pre, so that an edit between cycles is what the
// next cycle runs, not the config the daemon happened to start with. A
// file that does not load, or a rebuild that fails, keeps the running
// Agent and says why; the socket, the metrics address, the state dir and
// the watch interval are bound at start and need a restart.
type Live struct {
	path  string
	log   *zap.Logger
	build func(agent.Config) (*agent.Agent, error)
	load  func(path string) (agent.Config, error) // LoadConfig
	m     *agent.Metrics

	reload sync.Mutex // one reload at a time
	mu     sync.Mutex
	a      *agent.Agent
}

// NewLive returns the Live of a, built from the config loaded from path;
// build makes the Agent of an edited config (Build with the daemon's
// logger, metrics and no progress writer).
func NewLive(path string, a *agent.Agent, log *zap.Logger, build func(agent.Config) (*agent.Agent, error)) *Live {
	return &Live{path: path, log: log.Named("config"), build: build, load: agent.LoadConfig, m: a.Metrics(), a: a}
}

// Agent is the current Agent.
func (l *Live) Agent() *agent.Agent {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.a
}

// Cycle is the current Agent as the loop's Cycle (Options.Cycle).
func (l *Live) Cycle() Cycle { return l.Agent() }

// Reload re-reads the config file and, if it changed, swaps in an Agent
// built from it, under the phase lock (no phase runs in the old Agent
// while it is swapped out). changed is false when the file says what the
// running config says; on error the running Agent stays.
func (l *Live) Reload(ctx context.Context, why string) (changed bool, err error) {
	l.reload.Lock()
	defer l.reload.Unlock()
	defer func() {
		if l.m != nil {
			l.m.ObserveReload(err == nil)
		}
		switch {
		case err != nil:
			l.log.Error("config not reloaded: the daemon keeps the config it runs", zap.String("why", why), zap.String("path", l.path), zap.Error(err))
		case changed:
			l.log.Info("config reloaded", zap.String("why", why), zap.String("path", l.path))
		}
	}()
	cfg, err := l.load(l.path)
	if err != nil {
		return false, err
	}
	old := l.Agent()
	if reflect.DeepEqual(cfg, old.Config()) {
		return false, nil
	}
	if err := restartOnly(old.Config(), cfg); err != nil {
		return false, err
	}
	release, err := old.Lock(ctx, "reload")
	if err != nil {
		return false, fmt.Errorf("waiting for the running phase: %w", err)
	}
	defer release()
	a, err := l.build(cfg)
	if err != nil {
		return false, fmt.Errorf("building the agent of the edited config: %w", err)
	}
	// The same state dir (restartOnly): the store, with a state it could
	// not write (StateStore.Remember), carries over.
	a.AdoptState(old)
	l.mu.Lock()
	l.a = a
	l.mu.Unlock()
	return true, nil
}

// restartOnly refuses an edit of what the daemon binds at start.
func restartOnly(old, cfg agent.Config) error {
	var changed []string
	if old.Daemon.Socket != cfg.Daemon.Socket {
		changed = append(changed, "daemon.socket")
	}
	if old.Daemon.MetricsListen != cfg.Daemon.MetricsListen {
		changed = append(changed, "daemon.metrics_listen")
	}
	if old.Daemon.StateDir != cfg.Daemon.StateDir {
		changed = append(changed, "daemon.state_dir")
	}
	if old.Daemon.WatchInterval != cfg.Daemon.WatchInterval {
		changed = append(changed, "daemon.watch_interval")
	}
	if !reflect.DeepEqual(old.LB, cfg.LB) {
		changed = append(changed, "lb")
	}
	if len(changed) > 0 {
		return fmt.Errorf("%v changed: the daemon binds them at start; run systemctl restart patchagent", changed)
	}
	return nil
}

// RunPhase runs a hook's phase in the current Agent. A pre that opens a
// new cycle first picks up an edited config file; one that does not load
// is refused (exit 2, nothing done) rather than run with the old one.
func (l *Live) RunPhase(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
	if phase == "pre" && !opt.DryRun {
		if st, err := l.Agent().State(); err == nil && !st.Open {
			if _, err := l.Reload(ctx, "new cycle"); err != nil {
				return agent.FailedReport(phase, 0, &agent.PhaseError{Code: agent.ExitUsage, Err: fmt.Errorf("nothing was changed: the daemon's config file %s was edited and cannot be used (%w); fix it, or restore the one it runs", l.path, err)})
			}
		}
	}
	opt.Progress = progress
	return l.Agent().RunPhase(ctx, phase, opt)
}
