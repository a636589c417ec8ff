package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/firewall/lb"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// Rotation is the node's place in a load balancer's rotation
// (lb.Readiness).
type Rotation interface {
	// TakeOut (PutBack) changes the signal and waits, up to deadline,
	// until the LB has acted on it.
	TakeOut(ctx context.Context, deadline time.Duration) (lb.Wait, error)
	PutBack(ctx context.Context, deadline time.Duration) (lb.Wait, error)
	// SetOut changes the signal without waiting (the boot, the break-glass).
	SetOut(out bool)
}

// JournaledRotation is a Rotation whose take-out changes what only it can
// say how to undo (awslb.TargetGroups: the instance's target group
// registrations, their ports included; lb.HAProxies: the admin state each
// server was in). pre writes Record's answer into
// the state file before TakeOut; every put back (exit, the break-glass,
// a restarted daemon) first hands it back with Restore.
type JournaledRotation interface {
	Rotation
	// carried is a record the last cycle could not put back (nil for
	// none), for the new record to include.
	Record(ctx context.Context, carried json.RawMessage) (json.RawMessage, error)
	Restore(rec json.RawMessage) error
}

// Firewall is the block the phases install and remove (firewall.Firewall).
type Firewall interface {
	Families() []firewall.Family
	Plan() []string
	Block(ctx context.Context) error
	Unblock(ctx context.Context) error
	Status(ctx context.Context) (firewall.Status, error)
}

// AppManager starts and stops the app's processes (hooks.PM2).
type AppManager interface {
	Processes(ctx context.Context, app string) ([]hooks.Process, error)
	Stop(ctx context.Context, app string) ([]hooks.Process, error)
	Start(ctx context.Context, app string) error
	StartFrom(ctx context.Context, app, source string) error
	// Proc is the kernel's record of process pid (exit's crash watch); its
	// error wraps hooks.ErrProcessGone once the process has exited.
	Proc(pid int) (hooks.ProcInfo, error)
}

// Units stops and starts systemd units (hooks.Units).
type Units interface {
	Stop(ctx context.Context, unit string) error
	Start(ctx context.Context, unit string) error
}

// Commands runs the operator's argv lists (hooks.Commands).
type Commands interface {
	Run(ctx context.Context, argv []string) error
}

var (
	_ Firewall   = (*firewall.Firewall)(nil)
	_ AppManager = (*hooks.PM2)(nil)
	_ Units      = (*hooks.Units)(nil)
	_ Commands   = (*hooks.Commands)(nil)

	_ JournaledRotation = lb.HAProxies(nil)
)

// Deps are the seams a phase works through.
type Deps struct {
	Log      *zap.Logger
	Firewall Firewall
	Conns    firewall.ConnSource
	App      AppManager
	// AppUser names whose pm2 runs the app, for messages and plans.
	AppUser string
	// Health is the app's health check, HealthPolicy how long to wait for
	// it, HealthName how messages name it.
	Health       healthcheck.Prober
	HealthPolicy healthcheck.Policy
	HealthName   string
	Units        Units
	Commands     Commands
	// Packages updates the app's dependencies (nil when app.dir is unset).
	Packages Packages
	// Rotation is the load balancer's side (nil when lb.health_listen is
	// unset): pre takes the node out of it before the block, exit puts it
	// back after the unblock.
	Rotation Rotation
	// Metrics, if set, records every phase run.
	Metrics *Metrics
	State   *StateStore
	Lock    *PhaseLock
	// LockWait is how long a phase waits for another to finish (default 0).
	LockWait time.Duration
	// BootID returns the current boot id.
	BootID func() (string, error)
	// Now is the clock (default time.Now).
	Now func() time.Time
	// After waits on the same clock (default time.After): the drain's
	// schedule runs on Now and After, so a test can step through it.
	After func(time.Duration) <-chan time.Time
	// Progress receives live progress lines (stderr for the CLI).
	Progress io.Writer
	// AfterSave, if set, runs after each intent is recorded, before the
	// side effect: the crash tests kill the process there.
	AfterSave func(step string)
}

// Agent runs the phases of a patch cycle on this node.
type Agent struct {
	cfg Config
	d   Deps
	log *zap.Logger
	// listenWait bounds the wait for the app's ports to be released.
	listenWait time.Duration
	// stableEvery is how often exit asks pm2 about the app while it waits
	// (each instance's pid, restart counter and state: one RPC), pidEvery
	// how often it asks the kernel whether each pid pm2 listed still runs
	// (one read of /proc/<pid>/stat each). See stable.go.
	stableEvery, pidEvery time.Duration
	// wall is the wall clock that pm2's pm_uptime (its own Date.now()) is
	// compared with (default time.Now, without its monotonic reading): a
	// seam for the tests that step it.
	wall func() time.Time
}

// New returns an Agent; every field of d but LockWait must be set, except
// Now, After and Progress which default to time.Now, time.After and
// io.Discard.
func New(cfg Config, d Deps) *Agent {
	if d.After == nil {
		d.After = time.After
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Progress == nil {
		d.Progress = io.Discard
	}
	return &Agent{cfg: cfg, d: d, log: d.Log.Named("agent"), listenWait: defaultListenWait,
		stableEvery: 250 * time.Millisecond, pidEvery: 20 * time.Millisecond, wall: wallClock}
}

// RunOptions modify one phase run.
type RunOptions struct {
	// DryRun prints the plan and changes nothing.
	DryRun bool
	// Force (exit only) is the break-glass: the node back in service
	// without the health check, the cycle closed "forced" (force.go).
	Force *ForceOptions
	// NoLockWait: if another phase holds the lock, fail at once instead of
	// waiting for it (the daemon's own exits: decided on a state that the
	// phase holding the lock is about to change).
	NoLockWait bool
	// BootReblocked (reconcile only): BootReblock put the block back just
	// before, the agent not built yet; the reconcile reports and counts it.
	BootReblocked bool
	// Progress, if set, receives this run's live progress lines (a hook's
	// stderr, through the daemon's socket); else Deps.Progress does.
	Progress io.Writer
}

// PhaseLockWait is how long a hook's phase waits for another phase to
// finish before it gives up (exit 3): long enough for the slowest pre to
// end (SSM's on-exit document may start while the daemon still drains a
// pre whose CLI SSM gave up on), short of every document's timeout. The
// SSM documents' budget test reads it.
const PhaseLockWait = 2 * time.Minute

// PhaseError carries the exit code a phase failure maps to.
type PhaseError struct {
	Code int
	Err  error
}

func (e *PhaseError) Error() string { return e.Err.Error() }
func (e *PhaseError) Unwrap() error { return e.Err }

// configError marks a failure caused by the configuration (exit 2).
func configError(err error) error { return &PhaseError{Code: ExitUsage, Err: err} }

func exitCode(err error) int {
	var pe *PhaseError
	if errors.As(err, &pe) {
		return pe.Code
	}
	if errors.Is(err, ErrLocked) {
		return ExitLocked
	}
	return ExitFailed
}

// progress writes one live progress line.
func (a *Agent) progress(format string, args ...any) {
	fmt.Fprintf(a.d.Progress, format+"\n", args...)
}

// save records st with the time and boot id; a phase never goes on to a
// side effect whose intent could not be recorded.
func (a *Agent) save(st *State, step string) error {
	st.Step = step
	st.UpdatedAt = a.d.Now().UTC()
	if err := a.d.State.Save(*st); err != nil {
		return &intentError{step: step, err: err}
	}
	if a.d.AfterSave != nil {
		a.d.AfterSave(step)
	}
	return nil
}

func newCycleID(now time.Time) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return now.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
}

func ports16(ps []int) []uint16 {
	out := make([]uint16, len(ps))
	for i, p := range ps {
		out[i] = uint16(p)
	}
	return out
}

// Phases are the phases a hook (or the daemon at boot, reconcile) runs.
var Phases = []string{"pre", "post", "exit", "reconcile"}

// RunPhase runs the named phase (one of Phases).
func (a *Agent) RunPhase(ctx context.Context, phase string, opt RunOptions) *Report {
	if opt.Progress != nil {
		b := *a
		b.d.Progress = opt.Progress
		a = &b
	}
	switch phase {
	case "pre":
		return a.Pre(ctx, opt)
	case "post":
		return a.Post(ctx, opt)
	case "exit":
		return a.Exit(ctx, opt)
	case "reconcile":
		return a.Reconcile(ctx, opt)
	}
	return FailedReport(phase, 0, configError(fmt.Errorf("unknown phase %q", phase)))
}

// FailedReport is the report of a phase that failed as a whole after d (it
// could not start, or its run was lost), with err's exit code: a
// configuration error's 2, a held lock's, else 1.
func FailedReport(phase string, d time.Duration, err error) *Report {
	r := &Report{Phase: phase, Steps: []StepReport{}}
	r.finish(d, err, exitCode(err))
	return r
}
