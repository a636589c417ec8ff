package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"time"
	"unicode/utf8"
)

// MaxOutput is how much of a program's stdout and of its stderr a Result
// keeps: the last MaxOutput bytes of each.
const MaxOutput = 64 << 10

// errTailLen is about how many bytes of stderr an error message carries.
const errTailLen = 500

// DefaultWaitDelay is used by ExecRunner when its WaitDelay is zero.
const DefaultWaitDelay = 5 * time.Second

// ChildUmask is the umask every program ExecRunner starts begins with,
// whatever the agent's own. The daemon runs with the unit's UMask=0077 (its
// state, snapshots and socket are root's alone); npm inheriting it would
// write 0600 files and 0700 directories into node_modules (npm adds its own
// umask setting, 0 by default, to the process's), which the app's other
// readers can no longer read, where the same post run in-process by SSM's
// agent writes 0644/0755. 022 is systemd's default UMask for a service, so
// SSM's agent's, the umask the hooks run with without the daemon: a post
// through the daemon and one in-process leave the same modes.
const ChildUmask = 0o022

// Credential is the identity a program runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32 // supplementary groups; empty means none (root's groups are dropped)
}

// Cmd is one program to run.
type Cmd struct {
	// Name is the program. Use an absolute path; a bare name is looked up in
	// the PATH given in Env (not in the agent's own PATH).
	Name string
	Args []string
	// Dir is the working directory; empty means the agent's.
	Dir string
	// Env is the program's whole environment. Nothing is inherited from the
	// agent: nil means an empty environment.
	Env []string
	// Cred is who the program runs as; nil means as the agent itself.
	Cred *Credential
	// There is no umask here: every program starts with ChildUmask.
}

// Result is what a finished program left behind.
type Result struct {
	ExitCode int    // -1 if it was killed by a signal or did not start
	Stdout   []byte // the last MaxOutput bytes
	Stderr   []byte // the last MaxOutput bytes
}

// Runner runs an external program. ExecRunner is the only real
// implementation; hookstest.FakeRunner is the fake.
type Runner interface {
	// Run runs c and waits for it. A program that ran but exited non-zero
	// gives its Result and an *ExitError.
	Run(ctx context.Context, c Cmd) (Result, error)
}

// ExecRunner runs programs with os/exec, each in its own process group and
// with umask ChildUmask (startWithUmask). When ctx is done, the whole group
// is killed with SIGKILL.
type ExecRunner struct {
	// WaitDelay bounds how long Run waits, after the program exited or was
	// killed, for its output pipes to close (a child left behind may hold
	// them). Zero means DefaultWaitDelay.
	WaitDelay time.Duration
}

var _ Runner = (*ExecRunner)(nil)

// ExitError is the error for a program that ran and exited non-zero or was
// killed by a signal it did not get from us.
type ExitError struct {
	Name     string // argv[0]
	ExitCode int    // -1 when killed by a signal
	Signal   syscall.Signal
	Stderr   string // the trimmed, redacted tail of stderr, about 500 bytes
	Err      error  // the underlying *exec.ExitError
}

func (e *ExitError) Error() string {
	var b strings.Builder
	if e.ExitCode == -1 && e.Signal != 0 {
		fmt.Fprintf(&b, "%s killed by signal %s", e.Name, e.Signal)
	} else {
		fmt.Fprintf(&b, "%s exited with code %d", e.Name, e.ExitCode)
	}
	if e.Stderr != "" {
		b.WriteString(": ")
		b.WriteString(e.Stderr)
	}
	return b.String()
}

func (e *ExitError) Unwrap() error { return e.Err }

// Run runs c and waits for it, its output pipes included. Only stderr goes
// into error messages, redacted (errTail): stdout can hold secrets (pm2
// jlist carries the app's environment).
func (r *ExecRunner) Run(ctx context.Context, c Cmd) (Result, error) {
	res := Result{ExitCode: -1}
	env := c.Env
	if env == nil {
		env = []string{} // nil would make os/exec inherit our environment
	}
	name, err := lookPath(c.Name, env)
	if err != nil {
		return res, err
	}
	cmd := exec.CommandContext(ctx, name, c.Args...)
	cmd.Args[0] = c.Name
	cmd.Dir = c.Dir
	cmd.Env = env
	var stdout, stderr tailBuffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// A session of its own (so a process group of its own too): no
	// controlling terminal. Run from an operator's root shell (a phase with
	// no daemon to hand it to), npm's install scripts, which run as the app
	// user, could otherwise open /dev/tty and push input into that shell
	// (TIOCSTI).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if c.Cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{
			Uid:    c.Cred.UID,
			Gid:    c.Cred.GID,
			Groups: append([]uint32{}, c.Cred.Groups...),
		}
	}
	cmd.Cancel = func() error {
		// The group id is the child's pid (Setsid), so this reaches
		// grandchildren that stayed in the group (npm and pm2 fork).
		if err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				return os.ErrProcessDone
			}
			return fmt.Errorf("killing process group %d: %w", cmd.Process.Pid, err)
		}
		return nil
	}
	cmd.WaitDelay = r.WaitDelay
	if cmd.WaitDelay <= 0 {
		cmd.WaitDelay = DefaultWaitDelay
	}

	if err := startWithUmask(cmd, ChildUmask); err != nil {
		return res, fmt.Errorf("starting %s: %w", c.Name, err)
	}
	err = cmd.Wait()
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	if cmd.ProcessState != nil {
		res.ExitCode = cmd.ProcessState.ExitCode()
	}
	if err == nil {
		return res, nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		msg := fmt.Sprintf("%s killed (process group %d) because its context ended", c.Name, cmd.Process.Pid)
		if tail := errTail(res.Stderr); tail != "" {
			msg += " (stderr: " + tail + ")"
		}
		return res, fmt.Errorf("%s: %w", msg, ctxErr)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		xe := &ExitError{Name: c.Name, ExitCode: res.ExitCode, Stderr: errTail(res.Stderr), Err: ee}
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			xe.Signal = ws.Signal()
		}
		return res, xe
	}
	if errors.Is(err, exec.ErrWaitDelay) {
		return res, fmt.Errorf("%s exited but a child it left behind kept its output open: %w", c.Name, err)
	}
	return res, fmt.Errorf("running %s: %w", c.Name, err)
}

// startWithUmask starts cmd with umask mask, leaving the agent's own umask
// as it is, for every one of its threads, at every instant.
//
// os/exec has no per-child umask, and no shell may set one (argv only). The
// umask lives in a thread's fs_struct (with its cwd and root), which Go's
// threads share, and fork copies the forking thread's. So the fork happens
// on a thread of its own: a goroutine locks itself to its OS thread, gives
// that thread a private fs_struct (unshare(CLONE_FS): not a namespace, no
// privilege needed, allowed by systemd's RestrictNamespaces=), sets the
// umask there and starts cmd, whose clone runs on that thread. The goroutine
// returns still locked, so the runtime ends the thread and its fs_struct
// with it: no goroutine ever runs on a thread with another umask. The
// runtime creates threads for a locked thread from its clean template
// thread, never by cloning this one.
//
// Not chosen: setting the process umask to 022 around cmd.Start under a
// mutex. Every other goroutine creating a file in that window gets 022, not
// 0077. Mostly harmless today (the state file, lock, snapshots and restore
// are created 0600/0700, which umask 022 keeps, and the textfile is chmod'ed
// 0644 anyway), but the control socket's directory (0755) and the socket
// itself until its chmod would be created more open, so would whatever the
// next change creates without an explicit mode, and so would iptables,
// which go-iptables forks outside any mutex of ours. The process umask is
// global state; this keeps it untouched.
//
// The main thread is never spent: its exit would make the process a zombie,
// so the runtime parks it for good instead, and its private umask would
// then be what /proc/<pid>/status shows for the whole process. A goroutine
// that finds itself there keeps that thread locked (no other goroutine runs
// on it meanwhile) while a second one, necessarily on another thread, does
// the work.
//
// Nothing may rely on the forking thread after Start: Pdeathsig, for one,
// would fire at once, when the thread ends (it is unset here).
func startWithUmask(cmd *exec.Cmd, mask int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if syscall.Gettid() == syscall.Getpid() {
			errc <- startWithUmask(cmd, mask)
			runtime.UnlockOSThread()
			return
		}
		if err := syscall.Unshare(syscall.CLONE_FS); err != nil {
			runtime.UnlockOSThread() // unchanged: it may serve again
			errc <- fmt.Errorf("giving the thread that forks it a umask of its own: unshare(CLONE_FS): %w", err)
			return
		}
		// From here on this thread is never unlocked: it ends with the
		// goroutine.
		syscall.Umask(mask)
		errc <- cmd.Start()
	}()
	return <-errc
}

// lookPath resolves a bare program name in the PATH of env, as execvpe would
// in the child; names with a slash are used as they are.
func lookPath(name string, env []string) (string, error) {
	if name == "" {
		return "", errors.New("running a command: empty program name")
	}
	if strings.Contains(name, "/") {
		return name, nil
	}
	path := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			path = v
		}
	}
	for _, dir := range filepath.SplitList(path) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, name)
		if isExecutable(p) == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("looking up %s in the command's PATH %q: %w", name, path, exec.ErrNotFound)
}

// tailBuffer is an io.Writer that keeps the last MaxOutput bytes written.
type tailBuffer struct{ buf []byte }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*MaxOutput { // trim in batches: amortised O(1) per byte
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-MaxOutput:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	if len(t.buf) > MaxOutput {
		return t.buf[len(t.buf)-MaxOutput:]
	}
	return t.buf
}

var ansiEscape = regexp.MustCompile(`\x1b\[[0-9;?]*[A-Za-z]`)

// errTail is the end of a program's stderr for an error message, and how
// any other piece of a program's output is quoted in one: colour codes
// removed, credentials redacted (before the cut, which could otherwise keep
// a secret without its key), trimmed, at most about errTailLen bytes, cut
// at a rune boundary.
func errTail(b []byte) string {
	s := strings.TrimSpace(redact(ansiEscape.ReplaceAllString(string(b), "")))
	if len(s) <= errTailLen {
		return s
	}
	s = s[len(s)-errTailLen:]
	for len(s) > 0 && !utf8.RuneStart(s[0]) {
		s = s[1:]
	}
	return "…" + s
}
