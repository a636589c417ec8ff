package hooks

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// procRoot is where the kernel's process table is mounted.
const procRoot = "/proc"

// userHZ is the unit of the times in /proc/<pid>/stat: USER_HZ, which the
// kernel fixes at 100 on every architecture Go runs Linux on, whatever its
// own HZ (proc(5): sysconf(_SC_CLK_TCK)).
const userHZ = 100

// ErrProcessGone is wrapped by Proc's error when no running process has the
// pid: it exited (a zombie its parent has not reaped yet counts as exited),
// or never was.
var ErrProcessGone = errors.New("process gone")

// ProcInfo is the kernel's record of a running process.
type ProcInfo struct {
	// Start is when the process started, in clock ticks (1/userHZ s)
	// since boot: /proc/<pid>/stat's starttime. A pid the kernel hands
	// to a new process comes with another Start.
	Start uint64
	// Uptime is how long the process has run: CLOCK_BOOTTIME now minus
	// Start, a clock that no step of the wall clock moves (and that,
	// unlike CLOCK_MONOTONIC, counts a suspend, as starttime does).
	Uptime time.Duration
}

// Proc is the kernel's record of process pid, read from /proc/<pid>/stat:
// root's own procfs, nothing the app user owns or names is opened, so no
// symlink or FIFO of the user's can be put in the way. It costs one read
// of a small file, cheap enough to call for each instance every few
// milliseconds (exit's crash watch). The error wraps ErrProcessGone when
// the process has exited.
func (p *PM2) Proc(pid int) (ProcInfo, error) { return readProc(procRoot, pid) }

// readProc is Proc with the procfs mount point as a parameter, for tests.
func readProc(root string, pid int) (ProcInfo, error) {
	if pid <= 0 {
		return ProcInfo{}, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
	}
	b, err := os.ReadFile(filepath.Join(root, strconv.Itoa(pid), "stat"))
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH) {
		return ProcInfo{}, fmt.Errorf("pid %d: %w", pid, ErrProcessGone)
	}
	if err != nil {
		return ProcInfo{}, fmt.Errorf("reading the kernel's record of pid %d: %w", pid, err)
	}
	st, err := parseProcStat(b)
	if err != nil {
		return ProcInfo{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	if st.dead() {
		return ProcInfo{}, fmt.Errorf("pid %d: %w (state %c)", pid, ErrProcessGone, st.state)
	}
	now, err := bootTime()
	if err != nil {
		return ProcInfo{}, err
	}
	up := time.Duration(0)
	if st.start <= uint64(now/tick) { // a later start (another clock) is not an uptime
		up = now - time.Duration(st.start)*tick
	}
	return ProcInfo{Start: st.start, Uptime: up}, nil
}

// procStat is what is read of /proc/<pid>/stat.
type procStat struct {
	state byte   // field 3: R, S, D, Z, X, ...
	start uint64 // field 22, starttime: clock ticks since boot
}

// dead: exited, whether or not reaped yet.
func (s procStat) dead() bool { return s.state == 'Z' || s.state == 'X' || s.state == 'x' }

// parseProcStat reads /proc/<pid>/stat's content: "pid (comm) state ppid
// ...", where comm, the process's own name, may hold spaces and
// parentheses, so the fields are counted from the last ')'.
func parseProcStat(b []byte) (procStat, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, errors.New("/proc stat: no ')' after the command name")
	}
	f := bytes.Fields(b[i+1:])
	// f[0] is field 3 (state), so field 22 (starttime) is f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("/proc stat: %d fields after the command name, want at least 20", len(f))
	}
	start, err := strconv.ParseUint(string(f[19]), 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("/proc stat: starttime %q: %w", f[19], err)
	}
	return procStat{state: f[0][0], start: start}, nil
}

// tick is the unit of starttime.
const tick = time.Second / userHZ

// bootTime is CLOCK_BOOTTIME: the time since boot, the clock of starttime.
func bootTime() (time.Duration, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return 0, fmt.Errorf("reading CLOCK_BOOTTIME: %w", err)
	}
	return time.Duration(ts.Nano()), nil
}
