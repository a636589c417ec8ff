package main

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

	"github.com/patchagent/patchagent/deploy/sandbox"
)

// daemonProc is a `patchagent daemon` run in the node's netns as systemd
// runs it: with a NOTIFY_SOCKET of our own, whose READY=1 and STATUS= we read.
type daemonProc struct {
	cmd  *exec.Cmd
	conn *net.UnixConn
	log  string
	done chan struct{}
	err  error // set before done is closed

	mu     sync.Mutex
	ready  chan struct{}
	isUp   bool
	status string
}

// startDaemon starts the daemon; dir holds its notify socket and log.
func startDaemon(ns, bin, cfg, dir string) (*daemonProc, error) {
	sock := filepath.Join(dir, fmt.Sprintf("notify-%d", time.Now().UnixNano()))
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("notify socket: %w", err)
	}
	d := &daemonProc{conn: conn, log: filepath.Join(dir, "daemon.log"), done: make(chan struct{}), ready: make(chan struct{})}
	logf, err := os.OpenFile(d.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		conn.Close()
		return nil, err
	}
	defer logf.Close()
	d.cmd = sandbox.NetnsCommand(ns, bin, "daemon", "--config", cfg)
	d.cmd.Env = []string{"PATH=" + ssmPATH, "NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=10000000"}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.cmd.Start(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("starting the daemon: %w", err)
	}
	go d.read()
	go func() {
		d.err = d.cmd.Wait()
		conn.Close()
		os.Remove(sock)
		close(d.done)
	}()
	return d, nil
}

func (d *daemonProc) read() {
	buf := make([]byte, 4096)
	for {
		k, err := d.conn.Read(buf)
		if err != nil {
			return
		}
		d.mu.Lock()
		for _, l := range strings.Split(string(buf[:k]), "\n") {
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
func (d *daemonProc) waitReady(ctx context.Context, max time.Duration) error {
	t := time.NewTimer(max)
	defer t.Stop()
	select {
	case <-d.ready:
		return nil
	case <-d.done:
		return fmt.Errorf("the daemon exited (%v) before READY=1; its log:\n%s", d.err, d.logTail())
	case <-t.C:
		return fmt.Errorf("no READY=1 from the daemon within %s; its log:\n%s", max, d.logTail())
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Status is the last STATUS= line.
func (d *daemonProc) Status() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.status
}

// stop sends SIGTERM (systemctl stop) and waits; after 20 s it kills the
// daemon's process group. It may be called more than once.
func (d *daemonProc) stop() error {
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

// logTail is the end of the daemon's log.
func (d *daemonProc) logTail() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}
