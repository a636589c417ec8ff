package hooks

import (
	"context"
	"fmt"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Systemctl is where systemctl lives on the distributions patchagent supports.
const Systemctl = "/usr/bin/systemctl"

// SafePath is the PATH given to programs patchagent runs as root (SSM's own).
const SafePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

// Units stops and starts systemd units (the tutorial's "stop a metrics agent
// before patching and start it again after") with systemctl.
type Units struct {
	log     *zap.Logger
	run     Runner
	bin     string
	timeout time.Duration
}

// NewUnits returns Units running bin (default Systemctl); each call has its
// own deadline (default 90s, systemd's default stop timeout).
func NewUnits(log *zap.Logger, run Runner, bin string, timeout time.Duration) *Units {
	if bin == "" {
		bin = Systemctl
	}
	if timeout <= 0 {
		timeout = 90 * time.Second
	}
	return &Units{log: log.Named("units"), run: run, bin: bin, timeout: timeout}
}

// unitArgs is the argv that applies verb (stop, start) to unit.
func unitArgs(verb, unit string) []string { return []string{verb, "--no-ask-password", "--", unit} }

// Stop stops unit.
func (u *Units) Stop(ctx context.Context, unit string) error {
	if _, err := u.call(ctx, "stop", unit); err != nil {
		return fmt.Errorf("stopping unit %s: %w", unit, err)
	}
	u.log.Info("unit stopped", zap.String("unit", unit))
	return nil
}

// Start starts unit.
func (u *Units) Start(ctx context.Context, unit string) error {
	if _, err := u.call(ctx, "start", unit); err != nil {
		return fmt.Errorf("starting unit %s: %w", unit, err)
	}
	u.log.Info("unit started", zap.String("unit", unit))
	return nil
}

func (u *Units) call(ctx context.Context, verb, unit string) (Result, error) {
	if unit == "" || strings.HasPrefix(unit, "-") {
		return Result{ExitCode: -1}, fmt.Errorf("unit name %q refused", unit)
	}
	ctx, cancel := context.WithTimeout(ctx, u.timeout)
	defer cancel()
	return u.run.Run(ctx, Cmd{Name: u.bin, Args: unitArgs(verb, unit), Env: []string{"PATH=" + SafePath}, Dir: "/"})
}

// Commands runs the operator's argv lists (the tutorial's "detach from a
// cluster"), as root, with SafePath and nothing else in the environment,
// each with its own deadline; never through a shell.
type Commands struct {
	log     *zap.Logger
	run     Runner
	timeout time.Duration
}

// NewCommands returns Commands whose calls each get timeout (default 5m).
func NewCommands(log *zap.Logger, run Runner, timeout time.Duration) *Commands {
	if timeout <= 0 {
		timeout = 5 * time.Minute
	}
	return &Commands{log: log.Named("commands"), run: run, timeout: timeout}
}

// Run runs argv and returns an error naming it, with its stderr tail, if it
// fails or outlives its deadline.
func (c *Commands) Run(ctx context.Context, argv []string) error {
	if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
		return fmt.Errorf("command %q refused: the program must be an absolute path", argv)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	start := time.Now()
	if _, err := c.run.Run(ctx, Cmd{Name: argv[0], Args: argv[1:], Env: []string{"PATH=" + SafePath}, Dir: "/"}); err != nil {
		return fmt.Errorf("running %s: %w", strings.Join(argv, " "), err)
	}
	c.log.Info("command ran", zap.Strings("argv", argv), zap.Duration("took", time.Since(start)))
	return nil
}
