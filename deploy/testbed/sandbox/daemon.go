package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// SSMPath is the PATH the SSM agent runs hooks with (and there is no HOME).
const SSMPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"

// Daemon is a `patchagent daemon` run in the node's netns as systemd runs
// it: with a NOTIFY_SOCKET of our own, whose messages (READY=1, STATUS=,
// WATCHDOG=1, STOPPING=1) it records, and a watchdog of 10 s.
type Daemon struct {
	cmd  *exec.Cmd
	conn *net.UnixConn
	log  string
	done chan struct{}
	err  error // set before done is closed

	mu     sync.Mutex
	ready  chan struct{}
	isUp   bool
	status string
	notes  []string
}

// StartDaemon starts bin's daemon with config cfg in the node's netns and
// waits at most ready for its READY=1 (an open cycle's block is re-applied
// before it); dir (keep its path short: unix socket paths are limited)
// holds its notify socket and log. If READY=1 does not come, it stops the
// daemon (Stop) and returns an error quoting the end of its log.
func (n *Node) StartDaemon(ctx context.Context, bin, cfg, dir string, ready time.Duration) (*Daemon, error) {
	d, err := n.startDaemon(bin, cfg, dir)
	if err != nil {
		return nil, err
	}
	if err := d.waitReady(ctx, ready); err != nil {
		if serr := d.Stop(); serr != nil {
			err = errors.Join(err, fmt.Errorf("stopping it: %w", serr))
		}
		return nil, err
	}
	return d, nil
}

// startDaemon starts the daemon (see StartDaemon) without waiting for it.
func (n *Node) startDaemon(bin, cfg, dir string) (*Daemon, error) {
	ns := n.ServerNS
	sock := filepath.Join(dir, fmt.Sprintf("notify-%d", time.Now().UnixNano()))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	d := &Daemon{conn: conn, log: filepath.Join(dir, "daemon.log"), done: make(chan struct{}), ready: make(chan struct{})}
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer logf.Close()
	d.cmd = NetnsCommand(ns, bin, "daemon", "--config", cfg)
	d.cmd.Env = []string{"PATH=" + SSMPath, "NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=10000000"}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting the daemon: %w", err)
	}
	readDone := make(chan struct{})
	go func() { defer close(readDone); d.read() }()
	go func() {
		d.err = d.cmd.Wait()
		// Messages sent just before the exit (STOPPING=1) are queued on the
		// socket: read them before closing it.
		conn.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
		<-readDone
		conn.Close()
		os.Remove(sock)
		close(d.done)
	}()
	return d, nil
}

func (d *Daemon) read() {
	buf := make([]byte, 4096)
	for {
		k, err := d.conn.Read(buf)
		if err != nil {
			return
		}
		d.mu.Lock()
		for _, l := range strings.Split(string(buf[:k]), "\n") {
			d.notes = append(d.notes, l)
			switch {
			case l == "READY=1" && !d.isUp:
				d.isUp = true
				close(d.ready)
			case strings.HasPrefix(l, "STATUS="):
				d.status = strings.TrimPrefix(l, "STATUS=")
			}
		}
		d.mu.Unlock()
	}
}

// waitReady waits for READY=1.
func (d *Daemon) waitReady(ctx context.Context, max time.Duration) error {
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-d.ready:
		return nil
	case <-d.done:
		return fmt.Errorf("the daemon exited (%v) before READY=1; its log:\n%s", d.err, d.LogTail())
	case <-t.C:
		return fmt.Errorf("no READY=1 from the daemon within %s; its log:\n%s", max, d.LogTail())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status is the last STATUS= line.
func (d *Daemon) Status() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// PID is the daemon's pid (ip netns exec execs it in place).
func (d *Daemon) PID() int { return d.cmd.Process.Pid }

// Notes returns every notify message received so far.
func (d *Daemon) Notes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.notes...)
}

// Stop sends SIGTERM (systemctl stop) and waits; after 20 s it kills the
// daemon's process group. It may be called more than once.
func (d *Daemon) Stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		var ee *exec.ExitError
		if d.err != nil && !errors.As(d.err, &ee) {
			return d.err
		}
		return nil
	case <-time.After(20 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.done
		return errors.New("the daemon did not stop within 20s of SIGTERM: killed")
	}
}

// Exited waits at most max for the daemon to end on its own and returns
// its exit code; ok is false if it is still running.
func (d *Daemon) Exited(max time.Duration) (code int, ok bool) {
	select {
	case <-d.done:
		return d.cmd.ProcessState.ExitCode(), true
	case <-time.After(max):
		return 0, false
	}
}

// LogTail is the end of the daemon's log.
func (d *Daemon) LogTail() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
