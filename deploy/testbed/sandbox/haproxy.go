package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/firewall/lb"
)

// HTTPConfig is a configuration for StartHAProxy: an HTTP frontend on
// 127.0.0.1:port balancing roundrobin over servers (each the rest of a
// "server" line: name, address, check options), HTTP checks GET
// checkPath expecting 200, http-reuse reuse, and no retries: a request
// HAProxy sends to a server that refuses it is a client error.
func HTTPConfig(port int, reuse, checkPath string, servers []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
	stats socket {{socket}} mode 600 level admin
defaults
	mode http
	timeout connect 2s
	timeout client 30s
	timeout server 30s
	retries 0
frontend fe
	bind 127.0.0.1:%d
	default_backend be
backend be
	balance roundrobin
	http-reuse %s
	option httpchk GET %s
	http-check expect status 200
`, port, reuse, checkPath)
	for _, s := range servers {
		fmt.Fprintf(&b, "\tserver %s\n", s)
	}
	return b.String()
}

// HAProxy is a real HAProxy (Debian's package) run in the foreground in a
// network namespace, with an admin stats socket for its runtime API.
type HAProxy struct {
	cmd     *exec.Cmd
	Socket  string // the admin socket's path
	done    chan error
	log     string
	stopped sync.Once
}

// StartHAProxy writes config (its global section gets the admin socket
// from "{{socket}}") into dir and runs haproxy -db -f on it in netns ns.
// Stop it with Stop.
func StartHAProxy(ns, dir, config string) (*HAProxy, error) {
	sock := filepath.Join(dir, "haproxy.sock")
	cfg := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfg, []byte(strings.ReplaceAll(config, "{{socket}}", sock)), 0o600); err != nil {
		return nil, err
	}
	h := &HAProxy{Socket: sock, done: make(chan error, 1), log: filepath.Join(dir, "haproxy.log")}
	logf, err := os.Create(h.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	h.cmd = NetnsCommand(ns, "haproxy", "-db", "-f", cfg)
	h.cmd.Stdout, h.cmd.Stderr = logf, logf
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := h.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting haproxy: %w", err)
	}
	go func() { h.done <- h.cmd.Wait() }()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if _, err := (&lb.HAProxy{Socket: sock}).Command(context.Background(), "show info"); err == nil {
			return h, nil
		}
		select {
		case err := <-h.done:
			b, _ := os.ReadFile(h.log)
			return nil, fmt.Errorf("haproxy exited: %v\n%s", err, b)
		default:
		}
		if time.Now().After(deadline) {
			h.Stop()
			return nil, errors.New("haproxy's admin socket did not answer within 10s")
		}
	}
}

// Status is backend/server's status as HAProxy's stats say ("UP",
// "DOWN", "DRAIN", "MAINT", with transitions like "UP 1/2").
func (h *HAProxy) Status(backend, server string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := (&lb.HAProxy{Socket: h.Socket, Backend: backend, Server: server}).Stat(ctx)
	return st.Status, err
}

// WaitStatus waits until backend/server's status starts with want.
func (h *HAProxy) WaitStatus(ctx context.Context, backend, server, want string) error {
	last := ""
	for {
		st, err := h.Status(backend, server)
		if err == nil && strings.HasPrefix(st, want) {
			return nil
		}
		last = fmt.Sprintf("%s (%v)", st, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s/%s not %s: last %s", backend, server, want, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop ends haproxy (its process group) and waits for it; again, it does
// nothing.
func (h *HAProxy) Stop() {
	h.stopped.Do(func() {
		if h.cmd.Process == nil {
			return
		}
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
			<-h.done
		}
	})
}

// Log is what haproxy printed.
func (h *HAProxy) Log() string {
	b, _ := os.ReadFile(h.log)
	return string(b)
}
