package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
)

// HookOptions is what a hook command (patchagent pre, post, exit or
// reconcile) gives RunHook besides the configuration.
type HookOptions struct {
	DryRun bool
	// Force (exit only) is the break-glass exit, Reason the operator's
	// (see force.go).
	Force  bool
	Reason string
	Log    *zap.Logger
	// Progress gets the live progress lines (the command's stderr).
	Progress io.Writer
	// AfterSave, if set, runs the phase in this process even when a daemon
	// answers, and is called after each recorded intent (Build's
	// afterSave: the crash tests kill the process there).
	AfterSave func(step string)
	// Version labels the metrics written for node_exporter.
	Version string
	// ConfigPath is the config file cfg was loaded from: the daemon
	// refuses to run the phase with another one.
	ConfigPath string
}

// RunHook runs phase for a hook command. When a daemon answers on
// cfg.Daemon.Socket the daemon runs it, so that a SIGKILL of the command
// (an SSM timeout) does not stop the phase. With no daemon the phase runs
// in this process, and its metrics go to node_exporter's textfile
// collector (a node without one just has no such directory).
func RunHook(ctx context.Context, cfg agent.Config, phase string, o HookOptions) *agent.Report {
	return runHook(ctx, cfg, phase, o, agent.Build)
}

// builder is Build's signature: runHook builds the agent of a phase run in
// this process with it.
type builder func(cfg agent.Config, log *zap.Logger, progress io.Writer, afterSave func(string), m *agent.Metrics) (*agent.Agent, error)

func runHook(ctx context.Context, cfg agent.Config, phase string, o HookOptions, build builder) *agent.Report {
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	if o.AfterSave == nil {
		conf := o.ConfigPath
		if conf != "" {
			if abs, err := filepath.Abs(conf); err == nil {
				conf = abs
			}
		}
		rep, err := Call(ctx, cfg.Daemon.Socket, Request{Phase: phase, DryRun: o.DryRun, Force: o.Force, Reason: o.Reason, Config: conf}, o.Progress)
		switch {
		case err == nil:
			return rep
		case errors.Is(err, ErrNoDaemon):
			fmt.Fprintf(o.Progress, "patchagent %s: no daemon answering on %s: running the phase in this process\n", phase, cfg.Daemon.Socket)
		case ctx.Err() != nil:
			return agent.FailedReport(phase, 0, fmt.Errorf("interrupted (%w); the phase goes on in the daemon (see patchagent status)", ctx.Err()))
		case strings.Contains(err.Error(), ErrOtherConfig.Error()):
			// The daemon would run the phase with another config: that
			// is the operator's to settle, not this process's to run.
			return agent.FailedReport(phase, 0, &agent.PhaseError{Code: agent.ExitUsage, Err: err})
		default:
			return agent.FailedReport(phase, 0, err)
		}
	}
	var reblocked string
	bootReblocked := false
	if phase == "reconcile" && !o.DryRun {
		// The boot step's block first, from the state file and iptables
		// alone (BootReblock): Build below can fail for its own reasons.
		v, did, err := agent.BootReblock(ctx, cfg, o.Log)
		if err != nil {
			v = "failed: " + err.Error()
		}
		reblocked, bootReblocked = "boot re-block "+v, did
		fmt.Fprintf(o.Progress, "patchagent reconcile: %s\n", reblocked)
	}
	reg, metrics := agent.NewTextfileRegistry(o.Version)
	a, err := build(cfg, o.Log, o.Progress, o.AfterSave, metrics)
	if err != nil {
		if reblocked != "" {
			err = fmt.Errorf("%s; then: %w", reblocked, err)
		}
		return agent.FailedReport(phase, 0, err)
	}
	opt := agent.RunOptions{DryRun: o.DryRun, BootReblocked: bootReblocked}
	if o.Force {
		opt.Force = &agent.ForceOptions{Reason: o.Reason, Caller: agent.SelfCaller()}
	}
	rep := a.RunPhase(ctx, phase, opt)
	if !o.DryRun {
		if err := agent.WriteTextfile(cfg.Daemon.TextfileDir, reg); err != nil {
			o.Log.Info("metrics not written for node_exporter", zap.Error(err))
		}
	}
	return rep
}
