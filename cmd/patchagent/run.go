package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/patchagent/patchagent/agent"
)

const usage = `usage: patchagent <command> [flags]

Hook commands (called by the SSM patch hook documents):
  pre           block new connections, drain, stop the app
  post          snapshot and update the app's dependencies (npm update)
  exit          start the app, wait until healthy, unblock
                (exit --force: the break-glass, see below)

Boot step (run before the app's pm2 service, e.g. from a oneshot unit):
  reconcile     re-apply the block if a patch cycle is open and the rules are gone

Other commands:
  daemon        the service: runs the phases the hook commands hand it over
                /run/patchagent/patchagent.sock, re-blocks an open cycle at
                boot, watches the block, serves /metrics (--config)
  status        show the patch cycle, the block as the kernel has it, the app and
                each phase's last result (--config, --output text|json)
  check-config  validate the config and print the effective values
  version       print the version

Flags of pre, post, exit and reconcile (run by the daemon when one answers,
else in this process, which then says so on stderr):
  --config FILE        config file (default /etc/patchagent/config.yaml)
  --output text|json   text: verdict on the first line; json: one object
  --dry-run            print the plan, change nothing
  --log-level LEVEL    debug, info, warn or error (default info)

Break-glass, flags of exit only:
  --force              return the node to service NOW, without the health
                       check: remove the block, close the open cycle (result
                       forced; the daemon does not block again), start what
                       pre stopped (the app, steps.stop_units) and run
                       steps.exit_commands. Exits 1, first line "patchagent
                       exit: FORCED, ...". Logged with who ran it. Does not
                       undo an interrupted post. If patchagent itself is
                       broken: the iptables commands in patchagent(8).
  --reason TEXT        with --force: why (one line, logged and recorded)

Exit codes: 0 ok, 1 the phase failed (or was forced), 2 usage or config
error, 3 another phase holds the lock.
`

// run is the whole CLI; it returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return agent.ExitUsage
	}
	cmd, rest := args[0], args[1:]
	if slices.Contains(agent.Phases, cmd) {
		return runPhase(ctx, cmd, rest, stdout, stderr)
	}
	switch cmd {
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "daemon":
		return runDaemon(ctx, rest, stderr)
	case "check-config":
		return runCheckConfig(rest, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "patchagent %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return agent.ExitOK
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return agent.ExitOK
	}
	fmt.Fprintf(stderr, "patchagent: unknown command %q\n\n%s", cmd, usage)
	return agent.ExitUsage
}

// newFlags is the flag set of `patchagent <command>`, with the --config
// flag every command has.
func newFlags(command string, stderr io.Writer) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet("patchagent "+command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, fs.String("config", agent.DefaultConfigPath, "config file")
}

type phaseFlags struct {
	config, output, logLevel, reason string
	dryRun, force                    bool
}

func parsePhaseFlags(name string, args []string, stderr io.Writer) (phaseFlags, error) {
	var f phaseFlags
	fs, config := newFlags(name, stderr)
	fs.StringVar(&f.output, "output", "text", "output format: text or json")
	fs.BoolVar(&f.dryRun, "dry-run", false, "print the plan and change nothing")
	fs.StringVar(&f.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	if name == "exit" {
		fs.BoolVar(&f.force, "force", false, "break-glass: back in service now, without the health check; closes the cycle (exit 1)")
		fs.StringVar(&f.reason, "reason", "", "with --force: why (logged and recorded)")
	}
	if err := fs.Parse(args); err != nil {
		return f, err
	}
	f.config = *config
	if fs.NArg() > 0 {
		return f, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.output != "text" && f.output != "json" {
		return f, fmt.Errorf("--output %q: want text or json", f.output)
	}
	if f.reason != "" && !f.force {
		return f, errors.New("--reason goes with --force")
	}
	if err := agent.CheckReason(f.reason); err != nil {
		return f, fmt.Errorf("--%w", err)
	}
	return f, nil
}

func runPhase(ctx context.Context, phase string, args []string, stdout, stderr io.Writer) int {
	f, err := parsePhaseFlags(phase, args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent %s: %v\n", phase, err)
		return agent.ExitUsage
	}
	log, err := newLogger(f.logLevel, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent %s: %v\n", phase, err)
		return agent.ExitUsage
	}
	defer func() { _ = log.Sync() }()
	cfg, err := agent.LoadConfig(f.config)
	if err != nil {
		return report(stdout, f.output, agent.FailedReport(phase, 0, err))
	}
	rep := agent.RunHook(ctx, cfg, phase, agent.HookOptions{
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

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("status", stderr)
	output := fs.String("output", "text", "output format: text or json")
	if err := fs.Parse(args); err != nil {
		return agent.ExitUsage
	}
	if fs.NArg() > 0 || (*output != "text" && *output != "json") {
		fmt.Fprintf(stderr, "patchagent status: want [--config FILE] [--output text|json]\n")
		return agent.ExitUsage
	}
	cfg, err := agent.LoadConfig(*path)
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
	if *output == "json" {
		b, _ := json.Marshal(st)
		stdout.Write(append(b, '\n'))
	} else {
		io.WriteString(stdout, st.Text())
	}
	return agent.ExitOK
}

func runCheckConfig(args []string, stdout, stderr io.Writer) int {
	fs, path := newFlags("check-config", stderr)
	if err := fs.Parse(args); err != nil {
		return agent.ExitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "patchagent check-config: unexpected argument %q\n", fs.Arg(0))
		return agent.ExitUsage
	}
	cfg, err := agent.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "patchagent check-config: %v\n", err)
		return agent.ExitUsage
	}
	fmt.Fprintf(stdout, "# %s is valid; effective configuration:\n", *path)
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
