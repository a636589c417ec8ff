package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/daemon"
)

type phaseOptions struct {
	config, output, logLevel, logFormat, reason string
	dryRun, force                               bool
}

func parsePhaseFlags(o opts) (phaseOptions, error) {
	f := phaseOptions{config: o.value("config"), output: o.value("output"), logLevel: o.value("log-level"),
		logFormat: o.value("log-format"), dryRun: o.on("dry-run")}
	if _, ok := o.flags["force"]; ok { // only exit has the break-glass
		f.force, f.reason = o.on("force"), o.value("reason")
	}
	if err := checkOutput(f.output); err != nil {
		return f, err
	}
	if f.reason != "" && !f.force {
		return f, errors.New("--reason goes with --force")
	}
	if err := agent.CheckReason(f.reason); err != nil {
		return f, fmt.Errorf("--%w", err)
	}
	return f, nil
}

func checkOutput(output string) error {
	if output != "text" && output != "json" {
		return fmt.Errorf("--output %q: want text or json", output)
	}
	return nil
}

// runPhase is pre, post, exit and reconcile.
func runPhase(ctx context.Context, c *command, o opts, stdout, stderr io.Writer) int {
	phase := c.name
	f, err := parsePhaseFlags(o)
	if err != nil {
		return usageError(stderr, c, err)
	}
	log, err := newLogger(f.logLevel, f.logFormat, stderr)
	if err != nil {
		return usageError(stderr, c, err)
	}
	defer func() { _ = log.Sync() }()
	if !o.root {
		return report(stdout, f.output, agent.FailedReport(phase, 0, &agent.PhaseError{Code: agent.ExitUsage, Err: errNotRoot(phase)}))
	}
	cfg, err := agent.LoadConfig(f.config)
	if err != nil {
		return report(stdout, f.output, agent.FailedReport(phase, 0, err))
	}
	rep := daemon.RunHook(ctx, cfg, phase, daemon.HookOptions{
		DryRun: f.dryRun, Force: f.force, Reason: f.reason, Log: log, Progress: stderr, AfterSave: crashAfter(os.Getenv(crashEnv)), Version: version,
		ConfigPath: f.config,
	})
	return report(stdout, f.output, rep)
}

// errNotRoot is why a phase run without root does nothing: it could not
// do what it needs root for, and would fail on the way.
func errNotRoot(phase string) error {
	return fmt.Errorf("not run as root: %s needs root (iptables, the state file, the app's pm2, the daemon's socket), "+
		"--dry-run too; nothing was changed: run it with sudo", phase)
}

// crashEnv names the crash-test hook: PATCHAGENT_TEST_CRASH_AFTER=<step>
// makes the phase SIGKILL itself right after recording the intent of step,
// as an SSM timeout would kill it. Only the crash tests set it.
const crashEnv = "PATCHAGENT_TEST_CRASH_AFTER"

func crashAfter(step string) func(string) {
	if step == "" {
		return nil
	}
	return func(s string) {
		if s == step {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		}
	}
}

func report(w io.Writer, format string, r *agent.Report) int {
	if format == "json" {
		w.Write(r.JSON())
	} else {
		io.WriteString(w, r.Text())
	}
	return r.ExitCode
}

func runStatus(ctx context.Context, c *command, o opts, stdout, stderr io.Writer) int {
	output := o.value("output")
	if err := checkOutput(output); err != nil {
		return usageError(stderr, c, err)
	}
	log, err := newLogger("warn", o.value("log-format"), stderr)
	if err != nil {
		return usageError(stderr, c, err)
	}
	defer func() { _ = log.Sync() }()
	cfg, err := agent.LoadConfig(o.value("config"))
	if err != nil {
		fmt.Fprintf(stderr, "patchagent status: %v\n", err)
		return agent.ExitUsage
	}
	st := agent.BuildStatus(cfg, log, o.root).Status(ctx)
	if output == "json" {
		b, _ := json.Marshal(st)
		stdout.Write(append(b, '\n'))
	} else {
		io.WriteString(stdout, st.Text())
	}
	return statusCode(st.Service, o.on("check"))
}

// statusCode is status's exit code: 3 when the node's state is unknown (not
// root, the state file unreadable), else 0; with check, 1 when the node is
// out of service or a patch cycle is open.
func statusCode(service string, check bool) int {
	switch {
	case service == agent.ServiceUnknown:
		return agent.ExitUnknown
	case check && service == agent.ServiceOut:
		return agent.ExitFailed
	}
	return agent.ExitOK
}
