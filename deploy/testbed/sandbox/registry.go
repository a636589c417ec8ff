package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Ports of the registries on the server netns's loopback.
const (
	RegistryPort        = 4873
	HangingRegistryPort = 4874
)

// Bounds on the registry's waits.
const (
	registryStartTimeout = 60 * time.Second
	registryReqTimeout   = 60 * time.Second
)

// Registry is an npm registry on the loopback of the server netns, where
// the app's npm (run inside that netns) reaches it: verdaccio
// (StartRegistry) or a listener that never answers (StartHangingRegistry).
type Registry struct {
	URL string // e.g. "http://127.0.0.1:4873", no trailing slash

	n      *Node
	client *http.Client // sockets in the server netns

	// verdaccio
	pid     int           // its pid and process group; 0 for the hanging one
	exited  chan struct{} // closed once it has been reaped
	pidFile string

	// hanging
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}

	stopOnce sync.Once
	stopErr  error
}

// registryDir is where StartRegistry keeps verdaccio's config, storage, log
// and pid file (Dir/registry).
func (n *Node) registryDir() string { return filepath.Join(n.Opts.Dir, "registry") }

func (n *Node) registryConfigPath() string { return filepath.Join(n.registryDir(), "config.yaml") }
func (n *Node) registryPIDPath() string    { return filepath.Join(n.registryDir(), "verdaccio.pid") }

// registryLogPath is verdaccio's stdout and stderr (level warn).
func (n *Node) registryLogPath() string { return filepath.Join(n.registryDir(), "verdaccio.log") }

// verdaccioConfig has no uplinks, so a package it does not hold is a 404
// and it never reaches for the public registry; anyone may read, publish
// and unpublish; web UI off.
const verdaccioConfig = `# Written by the patchagent sandbox (StartRegistry). No uplinks: offline only.
storage: %s
auth:
  htpasswd:
    file: %s
uplinks: {}
packages:
  '**':
    access: $all
    publish: $all
    unpublish: $all
max_body_size: 1gb
listen: 127.0.0.1:%d
server:
  keepAliveTimeout: 60
log: { type: stdout, format: pretty, level: warn }
web:
  enable: false
`

// StartRegistry installs the pinned verdaccio (EnsureVerdaccio into
// Options.VerdaccioDir) and runs it as the app user inside the server netns
// on 127.0.0.1:RegistryPort, with no uplinks and anonymous access, publish
// and unpublish. Each start is fresh: a verdaccio left by an earlier start
// is stopped, and registryDir (config, storage, log) and the app user's npm
// cache (Home/.npm/_cacache) are emptied. It
// returns once verdaccio answers /-/ping. Stop the registry with Stop or
// Teardown.
func (n *Node) StartRegistry(ctx context.Context) (_ *Registry, err error) {
	if err := n.canRunAsUser(); err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	bin, err := EnsureVerdaccio(ctx, n.Opts.VerdaccioDir)
	if err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	if err := n.stopLeftoverVerdaccio(ctx); err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	dir := n.registryDir()
	storage := filepath.Join(dir, "storage")
	// The app user's npm cache may hold what an earlier registry served.
	if err := n.clearNPMCache(); err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("starting registry: emptying %s: %w", dir, err)
	}
	for _, d := range []string{dir, storage} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("starting registry: %w", err)
		}
		if err := os.Lchown(d, int(n.UID), int(n.GID)); err != nil {
			return nil, fmt.Errorf("starting registry: %w", err)
		}
	}
	cfg := fmt.Sprintf(verdaccioConfig, storage, filepath.Join(dir, "htpasswd"), RegistryPort)
	if err := writeFileAtomic(n.registryConfigPath(), []byte(cfg), 0o644, 0, 0); err != nil {
		return nil, fmt.Errorf("starting registry: writing config: %w", err)
	}
	logf, err := os.OpenFile(n.registryLogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	defer logf.Close()

	cmd := exec.Command(n.NodeBin, bin, "--config", n.registryConfigPath())
	cmd.Env = n.userEnv("NODE_ENV=production")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: n.UID, Gid: n.GID, Groups: []uint32{}},
		Setpgid:    true,
	}
	if err := n.InServer(cmd.Start); err != nil {
		return nil, fmt.Errorf("starting registry: running verdaccio as %s in netns %s: %w", n.AppUser, n.ServerNS, err)
	}
	r := &Registry{
		URL:     "http://127.0.0.1:" + strconv.Itoa(RegistryPort),
		n:       n,
		client:  n.ServerClient(),
		pid:     cmd.Process.Pid,
		exited:  make(chan struct{}),
		pidFile: n.registryPIDPath(),
	}
	go func() {
		_ = cmd.Wait()
		close(r.exited)
	}()
	n.trackRegistry(r)
	defer func() {
		if err != nil {
			_ = r.Stop()
		}
	}()
	if err := writeFileAtomic(r.pidFile, []byte(strconv.Itoa(r.pid)+"\n"), 0o644, 0, 0); err != nil {
		return nil, fmt.Errorf("starting registry: writing pid file: %w", err)
	}
	if err := r.waitUp(ctx); err != nil {
		return nil, fmt.Errorf("starting registry: %w", err)
	}
	return r, nil
}

// clearNPMCache removes the app user's npm cache (Home/.npm/_cacache).
// npm falls back to that cache when the registry is unreachable: with a
// warm cache, `npm update` against a stopped registry exits 0 ("up to
// date") instead of failing.
func (n *Node) clearNPMCache() error {
	d := filepath.Join(n.Home, ".npm", "_cacache")
	if err := os.RemoveAll(d); err != nil {
		return fmt.Errorf("clearing the npm cache %s: %w", d, err)
	}
	return nil
}

// waitUp polls GET /-/ping every 100 ms until it answers 200, for at most
// registryStartTimeout; it fails at once if verdaccio exits.
func (r *Registry) waitUp(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, registryStartTimeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	var last error
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		code, _, err := r.do(actx, http.MethodGet, "/-/ping", nil)
		acancel()
		if err == nil && code == http.StatusOK {
			return nil
		}
		last = err
		if err == nil {
			last = fmt.Errorf("status %d", code)
		}
		select {
		case <-r.exited:
			log, _ := os.ReadFile(r.n.registryLogPath())
			return fmt.Errorf("verdaccio (pid %d) exited: %s", r.pid, tail(log))
		case <-ctx.Done():
			return fmt.Errorf("waiting for verdaccio at %s: %w (last: %w)", r.URL, ctx.Err(), last)
		case <-t.C:
		}
	}
}

// do sends one request to the registry with an optional JSON body and
// returns the status and at most 8 MiB of the body.
func (r *Registry) do(ctx context.Context, method, path string, body []byte) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		rd = strings.NewReader(string(body))
	}
	req, err := http.NewRequestWithContext(ctx, method, r.URL+path, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, b, err
}

// Get does one GET of path (e.g. "/dep-a") on the registry from inside the
// server netns and returns the status and body (at most 8 MiB).
func (r *Registry) Get(ctx context.Context, path string) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, registryReqTimeout)
	defer cancel()
	code, b, err := r.do(ctx, http.MethodGet, path, nil)
	if err != nil {
		return code, b, fmt.Errorf("getting %s%s: %w", r.URL, path, err)
	}
	return code, b, nil
}

// PID is verdaccio's pid (also its process group); 0 for a hanging registry.
func (r *Registry) PID() int { return r.pid }

// StartHangingRegistry listens on 127.0.0.1:HangingRegistryPort inside the
// server netns, accepts every connection and never answers: what npm meets
// when a registry hangs. Stop (or Teardown) closes the listener and every
// connection it holds.
func (n *Node) StartHangingRegistry(ctx context.Context) (*Registry, error) {
	if !NetnsExists(n.ServerNS) {
		return nil, fmt.Errorf("starting hanging registry: netns %s does not exist", n.ServerNS)
	}
	addr := "127.0.0.1:" + strconv.Itoa(HangingRegistryPort)
	var ln net.Listener
	err := n.InServer(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, "tcp4", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("starting hanging registry on %s in netns %s: %w", addr, n.ServerNS, err)
	}
	r := &Registry{URL: "http://" + addr, n: n, client: n.ServerClient(), ln: ln, conns: map[net.Conn]struct{}{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by Stop
			}
			r.mu.Lock()
			if r.conns == nil { // stopping
				r.mu.Unlock()
				c.Close()
				continue
			}
			r.conns[c] = struct{}{}
			r.mu.Unlock()
		}
	}()
	n.trackRegistry(r)
	return r, nil
}

// Stop stops the registry: it SIGKILLs verdaccio's process group and waits
// until verdaccio is reaped, or closes the hanging listener and its
// connections. It may be called more than once, and Teardown calls it.
func (r *Registry) Stop() error {
	r.stopOnce.Do(func() { r.stopErr = r.stop() })
	return r.stopErr
}

func (r *Registry) stop() error {
	defer r.n.untrackRegistry(r)
	defer r.client.CloseIdleConnections()
	if r.ln != nil {
		err := r.ln.Close()
		r.mu.Lock()
		for c := range r.conns {
			c.Close()
		}
		r.conns = nil
		r.mu.Unlock()
		r.wg.Wait()
		if err != nil {
			return fmt.Errorf("stopping hanging registry %s: %w", r.URL, err)
		}
		return nil
	}
	if err := syscall.Kill(-r.pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping verdaccio (pid %d): %w", r.pid, err)
	}
	select {
	case <-r.exited:
	case <-time.After(stopTimeout):
		return fmt.Errorf("stopping verdaccio (pid %d): not reaped after %s", r.pid, stopTimeout)
	}
	if err := os.Remove(r.pidFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stopping verdaccio: %w", err)
	}
	return nil
}

func (n *Node) trackRegistry(r *Registry) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	n.registries = append(n.registries, r)
}

func (n *Node) untrackRegistry(r *Registry) {
	n.regMu.Lock()
	defer n.regMu.Unlock()
	for i, x := range n.registries {
		if x == r {
			n.registries = append(n.registries[:i], n.registries[i+1:]...)
			return
		}
	}
}

// stopRegistries stops every registry this Node started, then any verdaccio
// named by the pid file (started by another process or Node).
func (n *Node) stopRegistries(ctx context.Context) error {
	n.regMu.Lock()
	regs := append([]*Registry(nil), n.registries...)
	n.regMu.Unlock()
	var errs []error
	for _, r := range regs {
		errs = append(errs, r.Stop())
	}
	errs = append(errs, n.stopLeftoverVerdaccio(ctx))
	return errors.Join(errs...)
}

// stopLeftoverVerdaccio SIGKILLs the process group of the verdaccio named
// by the pid file, if that process is alive, runs as the app user and has
// registryDir as its working directory, and waits until it is gone.
func (n *Node) stopLeftoverVerdaccio(ctx context.Context) error {
	b, err := os.ReadFile(n.registryPIDPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("reading verdaccio pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("bad verdaccio pid file %s: %q", n.registryPIDPath(), b)
	}
	// verdaccio rewrites its cmdline (process.title): know it by its cwd.
	cwd, _ := os.Readlink("/proc/" + strconv.Itoa(pid) + "/cwd")
	if uid, ok := procUID(pid); ok && n.userKnown && uid == n.UID && procAlive(pid) && cwd == n.registryDir() {
		pids := append([]int{pid}, descendants(pid)...)
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if err := waitGone(ctx, pids, stopTimeout); err != nil {
			return fmt.Errorf("stopping verdaccio %d: %w", pid, err)
		}
	}
	if err := os.Remove(n.registryPIDPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stopping verdaccio: %w", err)
	}
	return nil
}

// ServerClient returns an http.Client whose sockets are opened in the
// server netns (for the registries on its loopback), with no proxy and
// keep-alive. It has no timeout: bound requests with their context.
func (n *Node) ServerClient() *http.Client {
	return &http.Client{Transport: nsTransport(n.ServerNS, "tcp", true)}
}
