//go:build integration

package e2e

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// slowRegistryPort is the slow proxy's port on the server netns's loopback.
const slowRegistryPort = 4875

// slowRegistry is an HTTP proxy in front of a registry, on the server
// netns's loopback, that can hold every tarball download (npm fetches the
// tarballs while it reifies node_modules, after it moved the old packages
// aside) until the test ends: a registry that turned slow mid-update.
type slowRegistry struct {
	URL string
	// tarball receives the path of each tarball request held.
	tarball chan string

	mu   sync.Mutex
	hold bool
	stop chan struct{}
}

func startSlowRegistry(t *testing.T, n *sandbox.Node, upstream string) *slowRegistry {
	t.Helper()
	up, err := url.Parse(upstream)
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(slowRegistryPort)
	var ln net.Listener
	if err := n.InServer(func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatalf("slow registry on %s: %v", addr, err)
	}
	s := &slowRegistry{URL: "http://" + addr, tarball: make(chan string, 16), stop: make(chan struct{})}
	rp := &httputil.ReverseProxy{
		// The Host the client used: the registry writes it into the
		// tarball URLs, so npm fetches those through the proxy too.
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(up); r.SetXForwarded(); r.Out.Host = r.In.Host },
		Transport: n.ServerClient().Transport,
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		hold := s.hold
		s.mu.Unlock()
		if hold && strings.HasSuffix(r.URL.Path, ".tgz") {
			select {
			case s.tarball <- r.URL.Path:
			default:
			}
			select {
			case <-s.stop:
			case <-r.Context().Done():
			}
			return
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() {
		close(s.stop)
		srv.Close()
	})
	return s
}

// holdTarballs makes every tarball request from now on wait.
func (s *slowRegistry) holdTarballs() { s.mu.Lock(); s.hold = true; s.mu.Unlock() }

// processesBelow lists the processes below pid (from /proc's PPid fields).
func processesBelow(pid int) []int {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "PPid:"); ok {
				pp, _ := strconv.Atoi(strings.TrimSpace(v))
				children[pp] = append(children[pp], p)
				break
			}
		}
		f.Close()
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// TestExitUndoesAPostKilledMidUpdate: a real `npm update` against verdaccio
// through a registry that turns slow once npm downloads the new tarball;
// then the node "crashes" under post (patchagent and npm SIGKILLed: a
// node crash, or an SSM timeout on a node without the daemon). exit, next
// in SSM's order, must not start the app on the half-updated tree: it
// restores the snapshot first, so the app dir is exactly as before post.
func TestExitUndoesAPostKilledMidUpdate(t *testing.T) {
	n := setupNode(t, "pa-e2ku", nil)
	ctx := context.Background()
	reg, err := n.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	slow := startSlowRegistry(t, n, reg.URL)
	publish(t, reg, "1.0.0", "")
	if err := n.SetupNPMApp(ctx, slow.URL, map[string]string{"dep-a": "^1.0.0"}); err != nil {
		t.Fatal(err)
	}
	publish(t, reg, "1.0.1", "")
	// npm must download 1.0.1 during the update, not find it in its cache:
	// the sandbox's and the one of the home the app user's passwd entry
	// names (patchagent runs npm with that HOME; the sandboxes share the
	// user).
	homes := []string{n.Home}
	if u, err := user.Lookup(n.AppUser); err == nil {
		homes = append(homes, u.HomeDir)
	}
	for _, viaDaemon := range []bool{false, true} {
		name := map[bool]string{false: "no daemon: the node crashes under post", true: "daemon killed under post"}[viaDaemon]
		t.Run(name, func(t *testing.T) { killPostMidUpdateThenExit(t, n, slow, homes, viaDaemon) })
	}
}

// killPostMidUpdateThenExit runs pre, then post (in the CLI, or in the
// daemon) until npm waits for the new tarball, SIGKILLs patchagent (the
// CLI, or the daemon) and npm, then runs exit (through a new daemon).
func killPostMidUpdateThenExit(t *testing.T, n *sandbox.Node, slow *slowRegistry, homes []string, viaDaemon bool) {
	for _, h := range homes {
		if err := os.RemoveAll(filepath.Join(h, ".npm", "_cacache")); err != nil {
			t.Fatal(err)
		}
	}
	state := filepath.Join(t.TempDir(), "state")
	cfg := appConfigIn(t, n, state, "", "  metrics_listen: 127.0.0.1:18752\n  watch_interval: 500ms\ndrain:\n  idle: 200ms\npost:\n  npm:\n    timeout: 2m\n    fetch_timeout: 90s\n    fetch_retries: 0\nhealth:\n  interval: 100ms\n  deadline: 10s\n")
	var d *sandbox.Daemon
	if viaDaemon {
		d = startDaemon(t, n, cfg)
	}
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	before, err := sandbox.TreeHash(n.AppDir)
	if err != nil {
		t.Fatal(err)
	}

	// post until npm waits for the tarball.
	slow.holdTarballs()
	post := exec.Command("ip", "netns", "exec", n.ServerNS, binary, "post", "--config", cfg)
	post.Env = []string{"PATH=" + sandbox.SSMPath}
	var pout, perr syncBuf
	post.Stdout, post.Stderr = &pout, &perr
	if err := post.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-slow.tarball:
		t.Logf("npm is downloading %s: the update is under way", p)
	case <-time.After(90 * time.Second):
		_ = post.Process.Kill()
		_ = post.Wait()
		t.Logf("post:\n%s\n%s", pout.String(), perr.String())
		t.Fatal("npm never asked for the new tarball")
	}
	time.Sleep(500 * time.Millisecond) // npm writing into node_modules meanwhile
	// The crash: the process running the phase and everything it started,
	// npm's own process group included.
	victim := post.Process.Pid
	if viaDaemon {
		victim = d.PID()
	}
	procs := processesBelow(victim)
	_ = syscall.Kill(victim, syscall.SIGKILL)
	for _, p := range procs {
		_ = syscall.Kill(-p, syscall.SIGKILL)
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	_ = post.Wait()
	t.Logf("post, its %s killed:\n%s\n%s", map[bool]string{false: "process", true: "daemon"}[viaDaemon], pout.String(), perr.String())
	for deadline := time.Now().Add(10 * time.Second); ; {
		alive := 0
		for _, p := range procs {
			if syscall.Kill(p, 0) == nil {
				alive++
			}
		}
		if alive == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of npm's processes %v still alive", alive, procs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	half, _ := sandbox.TreeHash(n.AppDir)
	if half == before {
		t.Fatal("the killed post left the app dir as it was: the test did not catch npm mid-update")
	}
	st, _ := os.ReadFile(filepath.Join(state, "state.json"))
	if !strings.Contains(string(st), `"phase": "post"`) || !strings.Contains(string(st), `"step": "update"`) || !strings.Contains(string(st), `"taken": true`) {
		t.Fatalf("not the state of a post killed mid-update:\n%s", st)
	}

	if viaDaemon {
		stopDaemon(t, d) // reaped
		startDaemon(t, n, cfg)
	}
	r := patchagent(t, n, "exit", "--config", cfg)
	if r.code != 0 || !strings.Contains(r.stdout, "undo-post") || !strings.Contains(r.stdout, "restored the snapshot of the interrupted post (") ||
		!strings.Contains(firstLine(r.stdout), "interrupted post undone: dependencies as before post") {
		t.Fatalf("exit %d:\n%s", r.code, r.stdout)
	}
	if viaDaemon == strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("exit ran in the wrong place (daemon %v):\n%s", viaDaemon, r.stderr)
	}
	if after, _ := sandbox.TreeHash(n.AppDir); after != before {
		t.Fatal("the app dir is not as it was before post")
	}
	if v := installed(t, n); v != "1.0.0" {
		t.Fatalf("dep-a %s after the undo, want 1.0.0", v)
	}
	assertOwnedByApp(t, n)
	assertInService(t, n)
	st, _ = os.ReadFile(filepath.Join(state, "state.json"))
	if !strings.Contains(string(st), `"interrupted": true`) || !strings.Contains(string(st), `"undone": "exit restored the snapshot at `) || !strings.Contains(string(st), `"open": false`) {
		t.Fatalf("the state does not record the undo:\n%s", st)
	}
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuf) Write(p []byte) (int, error) { b.mu.Lock(); defer b.mu.Unlock(); return b.b.Write(p) }
func (b *syncBuf) String() string              { b.mu.Lock(); defer b.mu.Unlock(); return b.b.String() }
