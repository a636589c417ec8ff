package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// ErrLocked means another phase holds the phase lock.
var ErrLocked = errors.New("another patchagent phase is running")

// PhaseLock serialises phases on a node, across CLI runs and the daemon,
// with flock(2) on a file: the kernel releases it when the holder dies, even
// by SIGKILL.
type PhaseLock struct {
	Path string
}

// NewPhaseLock returns the lock file in dir.
func NewPhaseLock(dir string) *PhaseLock { return &PhaseLock{Path: filepath.Join(dir, "phase.lock")} }

// Acquire takes the lock, waiting up to wait; on time-out the error wraps
// ErrLocked and names the holder. The holder writes "pid phase" into the file
// for that message. release frees the lock.
func (l *PhaseLock) Acquire(ctx context.Context, phase string, wait time.Duration) (release func(), err error) {
	if err := os.MkdirAll(filepath.Dir(l.Path), 0o700); err != nil {
		return nil, fmt.Errorf("creating lock dir: %w", err)
	}
	f, err := l.open()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", l.Path, err)
		}
		if time.Now().After(deadline) {
			holder := readHolder(f)
			f.Close()
			return nil, fmt.Errorf("%w (%s; lock %s)", ErrLocked, holder, l.Path)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+" "+phase+"\n"), 0)
	}
	return func() {
		_ = f.Truncate(0)
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

// open opens the lock file for flock. A state dir that is read-only or
// full must not keep exit from returning the node to service: flock needs
// no write access, so an existing lock file is opened read-only, and
// without one the directory itself is locked (every process on that disk
// then fails the same way and locks the same directory). The holder's
// note is not written then.
func (l *PhaseLock) open() (*os.File, error) {
	f, err := os.OpenFile(l.Path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err == nil {
		return f, nil
	}
	if !errors.Is(err, unix.EROFS) && !errors.Is(err, unix.ENOSPC) && !errors.Is(err, unix.EDQUOT) {
		return nil, fmt.Errorf("opening lock %s: %w", l.Path, err)
	}
	f, rerr := os.OpenFile(l.Path, os.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if errors.Is(rerr, os.ErrNotExist) {
		f, rerr = os.OpenFile(filepath.Dir(l.Path), os.O_RDONLY|unix.O_CLOEXEC|unix.O_DIRECTORY, 0)
	}
	if rerr != nil {
		return nil, fmt.Errorf("opening lock %s: %w (read-only: %w)", l.Path, err, rerr)
	}
	return f, nil
}

func readHolder(f *os.File) string {
	buf := make([]byte, 128)
	n, _ := f.ReadAt(buf, 0)
	pid, phase, ok := strings.Cut(strings.TrimSpace(string(buf[:n])), " ")
	if !ok || pid == "" {
		return "holder unknown"
	}
	return fmt.Sprintf("held by pid %s running %s", pid, phase)
}
