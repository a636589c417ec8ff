package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/daemon"
)

type phaseOptions struct {
	config, output, logLevel, reason string
	dryRun, force                    bool
}

func parsePhaseFlags(o opts) (phaseOptions, error) {
	f := phaseOptions{config: o.value("config"), output: o.value("output"), logLevel: o.value("log-level"), dryRun: o.on("dry-run")}
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
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		return usageError(stderr, c, err)
	}
	defer func() { _ = log.Sync() }()
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
	cfg, err := agent.LoadConfig(o.value("config"))
	if err != nil {
		fmt.Fprintf(stderr, "patchagent status: %v\n", err)
		return agent.ExitUsage
	}
	log, _ := newLogger("warn", stderr)
	a, err := agent.Build(cfg, log, io.Discard, nil, nil)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent status: %v\n", err)
		return agent.ExitFailed
	}
	st, err := a.Status(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent status: %v\n", err)
		return agent.ExitFailed
	}
	if output == "json" {
		b, _ := json.Marshal(st)
		stdout.Write(append(b, '\n'))
	} else {
		io.WriteString(stdout, st.Text())
	}
	return agent.ExitOK
}

func runCheckConfig(_ context.Context, _ *command, o opts, stdout, stderr io.Writer) int {
	path := o.value("config")
	cfg, err := agent.LoadConfig(path)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent check-config: %v\n", err)
		return agent.ExitUsage
	}
	fmt.Fprintf(stdout, "# %s is valid; effective configuration:\n", path)
	stdout.Write(cfg.YAML())
	return agent.ExitOK
}

// newLogger logs to stderr: JSON under systemd's journal, readable text
// otherwise (the SSM console shows stderr as it is).
func newLogger(level string, stderr io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if os.Getenv("JOURNAL_STREAM") != "" {
		enc = zapcore.NewJSONEncoder(encCfg)
	} else {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(stderr), lvl)), nil
}
