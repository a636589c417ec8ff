package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/daemon"
	"github.com/patchagent/patchagent/firewall/lb"
)

// runDaemon is `patchagent daemon`: the systemd service that owns the
// phases (the hook commands hand them over through the control socket),
// re-establishes the block at boot, watches it and serves /metrics.
func runDaemon(ctx context.Context, c *command, o opts, _, stderr io.Writer) int {
	path, level, format := o.value("config"), o.value("log-level"), o.value("log-format")
	// First: capture and unset NOTIFY_SOCKET before anything spawns a child.
	notifier, watchdog, err := daemon.NewSystemdNotifier()
	if err != nil {
		fmt.Fprintf(stderr, "patchagent daemon: %v\n", err)
		return agent.ExitFailed
	}
	// SIGHUP (systemctl reload) is ours from the start: Go's default ends
	// the process, which systemd counts as a clean exit and does not
	// restart, leaving nothing to watch an open cycle's block. Degraded, it
	// retries the build at once with the file as it now is; up, it reloads.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	log, err := newLogger(level, format, stderr)
	if err != nil {
		return usageError(stderr, c, err)
	}
	defer func() { _ = log.Sync() }()
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		log.Error("config refused", zap.Error(err))
		fmt.Fprintf(stderr, "patchagent daemon: %v\n", err)
		return agent.ExitUsage
	}
	// First the block of an open cycle, from the state file and iptables
	// alone: nothing that can fail below may keep it from coming back.
	verdict, reblocked, err := agent.BootReblock(ctx, cfg, log)
	if err != nil {
		log.Error("boot re-block", zap.Error(err))
	} else {
		log.Info("boot re-block", zap.String("verdict", verdict))
	}
	reg, metrics := agent.NewRegistry(version)
	hs := agent.NewMetricsServer(reg, agent.MetricsTimeouts{})
	go daemon.Serve(ctx, log, "metrics", cfg.Daemon.MetricsListen, hs, metrics.MetricsListenFailures)
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
	}()
	build := func(cfg agent.Config) (*agent.Agent, error) { return agent.Build(cfg, log, io.Discard, nil, metrics) }
	// What Build needs beyond the state file and iptables may not be there
	// yet at boot: the daemon stays up, degraded, and retries. Still not
	// there after daemon.node_wait with no cycle open, the node is
	// misconfigured: exit 2, which systemd does not restart.
	store := agent.NewStateStore(cfg.Daemon.StateDir)
	lastReassert := "" // the last error re-asserting the block, logged once
	a, err := daemon.BuildOrWait(ctx, daemon.Rebuilder(path, cfg, build), notifier, daemon.WaitOptions{
		Watchdog: watchdog,
		Limit:    time.Duration(cfg.Daemon.NodeWait),
		CycleOpen: func() (bool, error) {
			st, err := store.Load()
			return st.Open, err
		},
		Wake: hup,
		Reassert: func(ctx context.Context) {
			verdict, reblocked, err := agent.BootReblock(ctx, cfg, log)
			switch {
			case err != nil && err.Error() != lastReassert:
				log.Error("degraded: re-asserting the block", zap.Error(err))
			case reblocked:
				metrics.ObserveReassert()
				metrics.ObserveBlock(true)
				log.Warn("degraded: the block of the open cycle was gone: re-applied", zap.String("verdict", verdict))
			}
			lastReassert = ""
			if err != nil {
				lastReassert = err.Error()
			}
		},
		ReassertEvery: time.Duration(cfg.Daemon.WatchInterval),
	}, log, metrics)
	switch {
	case errors.Is(err, daemon.ErrNodeNotReady):
		log.Error("daemon stopped: the node is not ready for this config; `patchagent check-config` shows what it lacks", zap.Error(err))
		fmt.Fprintf(stderr, "patchagent daemon: %v\n", err)
		return agent.ExitUsage
	case err != nil:
		return agent.ExitOK // stopped while degraded
	}
	ln, err := daemon.ListenControl(cfg.Daemon.Socket)
	if err != nil {
		log.Error("control socket", zap.Error(err))
		return agent.ExitFailed
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	// An edited config is picked up on SIGHUP (systemctl reload) and before
	// each new cycle.
	live := daemon.NewLive(abs, a, log, build)
	// Behind a load balancer: its health check's endpoint, out of rotation
	// from the start while a cycle is open.
	if cfg.LB.HealthListen != "" {
		a.HoldRotation()
		agent.RegisterReadinessMetrics(reg, func() (lb.Stats, bool) { return live.Agent().ReadinessStats() })
		rs := daemon.NewReadinessServer(cfg.LB.Path, func() http.Handler { return live.Agent().Readiness() })
		go daemon.Serve(ctx, log, "readiness endpoint", cfg.LB.HealthListen, rs, nil)
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = rs.Shutdown(sctx)
		}()
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				_, _ = live.Reload(ctx, "SIGHUP")
			}
		}
	}()
	srv := daemon.NewServer(log, ln, live.RunPhase)
	srv.ServeConfig(abs)
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ctx) }()
	log.Info("daemon started", zap.String("socket", cfg.Daemon.Socket), zap.String("metrics", cfg.Daemon.MetricsListen), zap.Duration("watchdog", watchdog))
	if err := daemon.Run(ctx, a, srv, notifier, daemon.Options{Cycle: live.Cycle, Watchdog: watchdog, BootReblocked: reblocked}); err != nil {
		log.Error("daemon stopped", zap.Error(err))
		return agent.ExitFailed
	}
	if err := <-serveErr; err != nil && !errors.Is(err, context.Canceled) {
		log.Error("control socket stopped", zap.Error(err))
	}
	return agent.ExitOK
}
