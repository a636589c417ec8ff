package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
)

// The break-glass: `patchagent exit --force`. An operator who knows the app
// is fine (the health URL was wrong, the check cannot pass) has no other way
// to return the node while a cycle is open: a block removed by hand is put
// back by the daemon within a tick. The forced exit removes the block
// without any health check, closes the cycle with status "forced" (the
// daemon re-asserts only an open cycle's block, and the dead-man timer and
// the boot step watch only an open cycle), then puts back what pre changed
// besides the block: the app it stopped, the units it stopped, and runs the
// exit commands. It exits 1 with a first line that says so, and records who
// asked and why.

// MaxReasonLen bounds --reason, in bytes.
const MaxReasonLen = 200

// forceStepTimeout bounds each step the forced exit runs once the node is
// back (pm2, systemctl, a command): a hung one must not keep the verdict
// from the operator.
const forceStepTimeout = 30 * time.Second

// ForceOptions are a forced exit's: the operator's reason and who asked.
type ForceOptions struct {
	Reason string
	Caller Caller
}

// CheckReason refuses a --reason that would not fit on one line of a log
// or report: longer than MaxReasonLen, not UTF-8, or with control
// characters.
func CheckReason(s string) error {
	switch {
	case len(s) > MaxReasonLen:
		return fmt.Errorf("reason: %d bytes, at most %d", len(s), MaxReasonLen)
	case !utf8.ValidString(s):
		return errors.New("reason: not UTF-8")
	case strings.ContainsFunc(s, unicode.IsControl):
		return errors.New("reason: control characters (a newline, a tab) are not allowed")
	}
	return nil
}

// Caller is who asked for a phase run, as patchagent can tell: the process
// on the other end of the control socket as the daemon sees it
// (SO_PEERCRED), or this process when there is no daemon; from /proc, the
// audit login uid (the user who logged in, kept across sudo and su) and
// SUDO_USER.
type Caller struct {
	// Via: "control socket" (the peer's credentials as the daemon read
	// them) or "this process" (no daemon).
	Via       string  `json:"via"`
	PID       int     `json:"pid"`
	UID       uint32  `json:"uid"`
	User      string  `json:"user,omitempty"`
	LoginUID  *uint32 `json:"loginuid,omitempty"`
	LoginUser string  `json:"login_user,omitempty"`
	SudoUser  string  `json:"sudo_user,omitempty"`
}

// Ways a Caller is known.
const (
	ViaSocket = "control socket"
	ViaSelf   = "this process"
)

// procRoot is where CallerOf reads processes (tests point it elsewhere).
var procRoot = "/proc"

// CallerOf describes process pid, running as uid, known via via: its
// login uid and SUDO_USER are read from /proc (best effort: a process
// already gone leaves them out).
func CallerOf(via string, pid int, uid uint32) Caller {
	c := Caller{Via: via, PID: pid, UID: uid, User: userName(uid)}
	dir := filepath.Join(procRoot, strconv.Itoa(pid))
	if b, err := os.ReadFile(filepath.Join(dir, "loginuid")); err == nil {
		// 4294967295 ((uid_t)-1): no login (a service, a boot unit).
		if n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil && n != 1<<32-1 {
			l := uint32(n)
			c.LoginUID, c.LoginUser = &l, userName(l)
		}
	}
	if via == ViaSelf && pid == os.Getpid() {
		c.SudoUser = cleanName(os.Getenv("SUDO_USER"))
	} else {
		c.SudoUser = cleanName(environValue(filepath.Join(dir, "environ"), "SUDO_USER"))
	}
	return c
}

// SelfCaller is this process as the caller (a run without the daemon).
func SelfCaller() Caller { return CallerOf(ViaSelf, os.Getpid(), uint32(os.Getuid())) }

// environValue returns key's value in the NUL-separated environment file
// path (its first 64 KiB); nothing else of it is kept.
func environValue(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	n, _ := f.Read(buf)
	for _, kv := range strings.Split(string(buf[:n]), "\x00") {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

// cleanName keeps a user name printable and short: it is logged.
func cleanName(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) || r == ' ' }) || !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	return s
}

func userName(uid uint32) string {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return ""
	}
	return cleanName(u.Username)
}

// Who is the most telling name: SUDO_USER, else the login user, else the
// user.
func (c Caller) Who() string {
	switch {
	case c.SudoUser != "":
		return c.SudoUser
	case c.LoginUser != "":
		return c.LoginUser
	case c.LoginUID != nil:
		return "loginuid " + strconv.FormatUint(uint64(*c.LoginUID), 10)
	case c.User != "":
		return c.User
	}
	return "uid " + strconv.FormatUint(uint64(c.UID), 10)
}

// String is every detail: "uid 0 (root) pid 4242 via the control socket,
// loginuid 1000 (alice), SUDO_USER alice" (or "in this process (no
// daemon)").
func (c Caller) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "uid %d", c.UID)
	if c.User != "" {
		fmt.Fprintf(&b, " (%s)", c.User)
	}
	switch c.Via {
	case ViaSocket:
		fmt.Fprintf(&b, " pid %d via the control socket", c.PID)
	case ViaSelf:
		fmt.Fprintf(&b, " pid %d in this process (no daemon)", c.PID)
	default:
		fmt.Fprintf(&b, " pid %d via %s", c.PID, orNone(c.Via))
	}
	if c.LoginUID != nil {
		fmt.Fprintf(&b, ", loginuid %d", *c.LoginUID)
		if c.LoginUser != "" {
			fmt.Fprintf(&b, " (%s)", c.LoginUser)
		}
	} else {
		b.WriteString(", no loginuid")
	}
	if c.SudoUser != "" {
		fmt.Fprintf(&b, ", SUDO_USER %s", c.SudoUser)
	}
	return b.String()
}

// Fields are the caller for a log line.
func (c Caller) Fields() []zap.Field {
	fs := []zap.Field{zap.String("caller", c.Who()), zap.String("via", c.Via), zap.Int("caller_pid", c.PID), zap.Uint32("caller_uid", c.UID)}
	if c.LoginUID != nil {
		fs = append(fs, zap.Uint32("caller_loginuid", *c.LoginUID))
	}
	if c.SudoUser != "" {
		fs = append(fs, zap.String("sudo_user", c.SudoUser))
	}
	return fs
}

// forcedError is a forced exit's outcome: the node is back in service
// without a health check. The report's result is "forced", exit code 1.
type forcedError struct{ msg string }

func (e *forcedError) Error() string { return e.msg }

func isForced(err error) bool {
	var fe *forcedError
	return errors.As(err, &fe)
}

// exitForce is exit --force, after exit's check step read the firewall.
func (a *Agent) exitForce(ctx context.Context, r *phaseRun, fw firewall.Status) error {
	f, rep := r.opt.Force, r.rep
	if !r.st.Open && !fw.Present() {
		rep.Summary = append(rep.Summary, "nothing to do: no patch cycle open and no block of ours (--force changed nothing)")
		return nil
	}
	by := f.Caller.String()
	if f.Reason != "" {
		by += fmt.Sprintf("; reason %q", f.Reason)
	}
	var notUndone string
	if pr := interruptedPost(r.st); pr != nil {
		notUndone = fmt.Sprintf("this cycle's post was interrupted during its dependency update and --force does NOT undo it: %s may hold a half-updated node_modules (snapshot %s); `patchagent exit` without --force restores it before starting the app", a.cfg.App.Dir, pr.Snapshot)
	}
	if r.opt.DryRun {
		a.forcePlan(r, by, notUndone)
		return nil
	}

	open := r.st.Open
	a.log.Warn("break-glass: exit --force, the node goes back without a health check",
		append(f.Caller.Fields(), zap.String("reason", f.Reason), zap.String("cycle", r.st.CycleID), zap.Bool("cycle_open", open))...)
	a.progress("force: break-glass by %s: unblocking without a health check", f.Caller.Who())
	if open {
		a.begin(r)
	} else {
		r.st.Phase, r.st.Status, r.st.Error, r.st.Warnings = "exit", StatusRunning, "", nil
		r.st.BootID, r.st.PhaseStartedAt = r.boot, time.Now().UTC()
	}
	rec := &ForceRecord{At: time.Now().UTC(), By: f.Caller, Reason: f.Reason}
	if open {
		rec.Cycle = r.st.CycleID
	}
	r.st.Forced = rec
	_ = a.step(r, "force", func() (stepOut, error) { return passed("break-glass by " + by + "; no health check") })
	err := a.step(r, "unblock", func() (stepOut, error) {
		if err := a.d.Firewall.Unblock(ctx); err != nil {
			return stepOut{}, err
		}
		fams := famShort(a.d.Firewall.Families())
		rep.Summary = append(rep.Summary, fmt.Sprintf("unblocked %s/tcp %s", portList(a.cfg.Traffic.Ports), fams))
		return passed(fmt.Sprintf("chain and jump removed (%s), verified", fams))
	})
	if err != nil {
		err = fmt.Errorf("--force could not remove the block: %w (last resort: the iptables commands in patchagent(8), RECOVERY)", err)
		a.failed(r, err)
		return stillOut(err)
	}
	if a.d.Rotation != nil {
		a.rotation(r.st).SetOut(false) // back in the LB's rotation at its next checks, not waited for
	}

	if !open {
		// No cycle ends here: st.Forced says what was forced, and the
		// status is not "forced", which would read as the last cycle's
		// ending.
		r.st.Status = StatusOK
		_ = a.saveRun(r, "done")
		return &forcedError{msg: "node back in service without a health check; leftover block of ours removed (no cycle was open), forced by " + f.Caller.String()}
	}
	verdict := fmt.Sprintf("node back in service without a health check; cycle %s closed, forced by %s", r.st.CycleID, f.Caller.String())
	// In service now: the cycle ends before anything that may hang, so that
	// nothing (the daemon's watch, the boot step) puts the block back.
	a.closeCycle(r, StatusForced, verdict)

	// What pre changed besides the block; the node is back whatever fails.
	var warns []string
	if notUndone != "" {
		warns = append(warns, notUndone)
	}
	warns = append(warns, a.forceRestore(ctx, r)...)
	for _, w := range warns {
		rep.warn("%s", w)
	}
	if len(warns) > 0 {
		rec.Warnings, r.st.Warnings = warns, warns
		_ = a.saveRun(r, "done")
	}
	return &forcedError{msg: verdict}
}

// forcePlan is a dry run's plan of exit --force.
func (a *Agent) forcePlan(r *phaseRun, by, notUndone string) {
	rep := r.rep
	rep.Result = ResultDryRun
	rep.Plan = append(rep.Plan, "break-glass requested by "+by+": no health check")
	rep.Plan = append(rep.Plan, fmt.Sprintf("remove chain %s and its jump from INPUT (%s)", firewall.Chain, famShort(a.d.Firewall.Families())))
	if !r.st.Open {
		rep.Plan = append(rep.Plan, "(no cycle is open: only the leftover block of ours is removed)")
		return
	}
	rep.Plan = append(rep.Plan, fmt.Sprintf("close cycle %s with status forced", r.st.CycleID),
		fmt.Sprintf("pm2 start %s, through the pm2 daemon of user %s, unless it is online (no health check)", a.cfg.App.Name, a.d.AppUser))
	for _, u := range a.cfg.Steps.StopUnits {
		rep.Plan = append(rep.Plan, "systemctl start "+u)
	}
	for _, c := range a.cfg.Steps.ExitCommands {
		rep.Plan = append(rep.Plan, fmt.Sprintf("run %q", c))
	}
	if notUndone != "" {
		rep.warn("%s", notUndone)
	}
}

// forceRestore starts what pre stopped, each action bounded by
// forceStepTimeout; with the node already back, a failure is a warning
// (returned), never an error.
func (a *Agent) forceRestore(ctx context.Context, r *phaseRun) []string {
	rep, app := r.rep, a.cfg.App.Name
	var warns []string
	t := time.Now()
	sctx, cancel := context.WithTimeout(ctx, forceStepTimeout)
	started, _, err := a.startApp(sctx)
	cancel()
	if err != nil {
		rep.addStep("start", "warn", time.Since(t), "")
		warns = append(warns, fmt.Sprintf("%s not started (start it by hand, as user %s): %v", app, a.d.AppUser, err))
	} else {
		rep.addStep("start", ResultOK, time.Since(t), started+" (no health check)")
	}
	if len(a.cfg.Steps.StopUnits)+len(a.cfg.Steps.ExitCommands) == 0 {
		return warns
	}
	t = time.Now()
	failed := 0
	bounded := func(do func(context.Context) error) error {
		c, cancel := context.WithTimeout(ctx, forceStepTimeout)
		defer cancel()
		return do(c)
	}
	for _, u := range a.cfg.Steps.StopUnits {
		if err := bounded(func(c context.Context) error { return a.d.Units.Start(c, u) }); err != nil {
			failed++
			warns = append(warns, fmt.Sprintf("unit %s not started: %v", u, err))
		}
	}
	for _, c := range a.cfg.Steps.ExitCommands {
		if err := bounded(func(cc context.Context) error { return a.d.Commands.Run(cc, c) }); err != nil {
			failed++
			warns = append(warns, fmt.Sprintf("exit command %q failed: %v", c, err))
		}
	}
	res := ResultOK
	if failed > 0 {
		res = "warn"
	}
	rep.addStep("restore", res, time.Since(t), fmt.Sprintf("%d unit(s) started, %d command(s) run, %d failed", len(a.cfg.Steps.StopUnits), len(a.cfg.Steps.ExitCommands), failed))
	return warns
}
