//go:build integration

package hooks_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
	"github.com/patchagent/patchagent/hooks"
)

// countingRunner is the real ExecRunner, counting what it runs.
type countingRunner struct {
	hooks.ExecRunner
	mu   sync.Mutex
	cmds [][]string
}

func (r *countingRunner) Run(ctx context.Context, c hooks.Cmd) (hooks.Result, error) {
	r.mu.Lock()
	r.cmds = append(r.cmds, c.Args)
	r.mu.Unlock()
	return r.ExecRunner.Run(ctx, c)
}

func (r *countingRunner) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cmds)
}

// TestPM2Real drives a real pm2 7.0.4 daemon, run by an unprivileged user in
// a sandbox netns, from a root process with SSM's environment.
func TestPM2Real(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if testing.Short() {
		t.Skip("starts pm2 and node: skipped with -short")
	}
	o := sandbox.Options{Prefix: "pa-hk", AppUser: "pa-hk-app"}
	teardown := func() {
		n, err := sandbox.Attach(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Teardown(ctx); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	teardown()
	t.Cleanup(teardown)
	n, err := sandbox.Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}

	// SSM runs hooks as root with no HOME and a minimal PATH. Our own env
	// must not matter: every pm2 call gets an explicit one.
	t.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin")
	t.Setenv("HOME", "")
	os.Unsetenv("HOME")
	t.Setenv("NOTIFY_SOCKET", "/run/pa-hk-leak.sock")

	u, err := hooks.LookupUser(n.AppUser)
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != n.UID || u.UID == 0 || u.Home != n.Home {
		t.Fatalf("LookupUser(%s) = %+v, want uid %d home %s", n.AppUser, u, n.UID, n.Home)
	}
	bin, path, err := hooks.FindPM2(u, n.PM2Bin)
	if err != nil {
		t.Fatal(err)
	}
	run := &countingRunner{}
	p := hooks.NewPM2(zaptest.NewLogger(t), run, hooks.PM2Config{Bin: bin, User: u, Path: path})
	app := n.Opts.AppName
	daemon := n.DaemonPID()
	if daemon == 0 {
		t.Fatal("sandbox has no pm2 daemon")
	}
	ctx := t.Context()

	t.Run("daemon alive", func(t *testing.T) {
		if err := p.DaemonAlive(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("processes finds the app online, run by the user", func(t *testing.T) {
		procs, err := p.Processes(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) != 1 {
			t.Fatalf("Processes = %+v, want one instance", procs)
		}
		pr := procs[0]
		if pr.Name != app || pr.Status != hooks.StatusOnline || pr.PID <= 0 || pr.ExecMode != "fork_mode" {
			t.Errorf("Processes = %+v", pr)
		}
		if age := time.Since(pr.Started); age < 0 || age > 10*time.Minute {
			t.Errorf("Started = %s, %s ago", pr.Started, age)
		}
		if !hooks.PidAlive(pr.PID) {
			t.Errorf("pid %d not alive", pr.PID)
		}
		if uid := procUID(t, pr.PID); uid != n.UID {
			t.Errorf("app pid %d runs as uid %d, want %d", pr.PID, uid, n.UID)
		}
	})

	t.Run("stop of an unknown app", func(t *testing.T) {
		calls := run.count()
		_, err := p.Stop(ctx, "pa-no-such-app")
		if !errors.Is(err, hooks.ErrUnknownApp) {
			t.Fatalf("Stop = %v, want ErrUnknownApp", err)
		}
		if got := run.cmds[calls:]; len(got) != 0 {
			t.Errorf("ran the pm2 CLI %q, want only RPCs", got)
		}
		procs, err := p.Processes(ctx, app)
		if err != nil || procs[0].Status != hooks.StatusOnline || !hooks.PidAlive(procs[0].PID) {
			t.Errorf("real app after Stop(unknown) = %+v, %v; want online", procs, err)
		}
	})

	t.Run("stop", func(t *testing.T) {
		before, err := p.Processes(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		got, err := p.Stop(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("Stop took %s", time.Since(t0))
		if len(got) != 1 || got[0].PID != before[0].PID || got[0].Status != hooks.StatusOnline {
			t.Errorf("Stop returned %+v, want the instance as it was: %+v", got, before)
		}
		if hooks.PidAlive(before[0].PID) {
			t.Errorf("app pid %d still alive", before[0].PID)
		}
		now, err := p.Processes(ctx, app)
		if err != nil || now[0].Status != hooks.StatusStopped || now[0].PID != 0 {
			t.Errorf("after Stop: %+v, %v; want stopped", now, err)
		}
		// pm2's own CLI agrees: the RPCs left the daemon as `pm2 stop` does.
		if info, ok, err := n.App(ctx); err != nil || !ok || info.Status != hooks.StatusStopped {
			t.Errorf("pm2 jlist after Stop: %+v, %v, %v; want stopped", info, ok, err)
		}
		assertSameDaemon(t, n, daemon)
		assertOwnedByUser(t, n)
	})

	t.Run("stop again is a no-op", func(t *testing.T) {
		if _, err := p.Stop(ctx, app); err != nil {
			t.Fatal(err)
		}
		assertSameDaemon(t, n, daemon)
	})

	t.Run("start after stop", func(t *testing.T) {
		if err := p.Start(ctx, app); err != nil {
			t.Fatal(err)
		}
		if err := n.WaitHealthy(ctx, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		procs, err := p.Processes(ctx, app)
		if err != nil || procs[0].Status != hooks.StatusOnline || !hooks.PidAlive(procs[0].PID) {
			t.Fatalf("after Start: %+v, %v; want online", procs, err)
		}
		if uid := procUID(t, procs[0].PID); uid != n.UID {
			t.Errorf("app pid %d runs as uid %d, want %d", procs[0].PID, uid, n.UID)
		}
		assertSameDaemon(t, n, daemon)
		assertOwnedByUser(t, n)
	})

	t.Run("start of an online app does not restart it", func(t *testing.T) {
		before, err := p.Processes(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		calls := run.count()
		if err := p.Start(ctx, app); err != nil {
			t.Fatal(err)
		}
		after, err := p.Processes(ctx, app)
		if err != nil {
			t.Fatal(err)
		}
		if after[0].PID != before[0].PID || after[0].Restarts != before[0].Restarts || !after[0].Started.Equal(before[0].Started) {
			t.Errorf("Start restarted the app: %+v -> %+v", before[0], after[0])
		}
		if got := run.cmds[calls:]; len(got) != 0 {
			t.Errorf("ran the pm2 CLI %q, want only RPCs", got)
		}
	})

	t.Run("start from the ecosystem file after pm2 forgot the app", func(t *testing.T) {
		if _, err := n.PM2(ctx, "delete", app); err != nil {
			t.Fatal(err)
		}
		eco := filepath.Join(n.AppDir, "ecosystem.config.js")
		js := fmt.Sprintf("module.exports = {apps: [{name: %q, script: \"server.js\", cwd: %q, env: {PORT: \"%d\"}}, {name: \"pa-other\", script: \"server.js\"}]};\n", app, n.AppDir, n.Opts.Port)
		if err := os.WriteFile(eco, []byte(js), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(eco, int(n.UID), int(n.GID)); err != nil {
			t.Fatal(err)
		}
		calls := run.count()
		if err := p.StartFrom(ctx, app, eco); err != nil {
			t.Fatal(err)
		}
		if got, want := run.cmds[calls:], [][]string{{"start", eco, "--only", app, "--no-color"}}; !reflect.DeepEqual(got, want) {
			t.Errorf("ran the pm2 CLI %q, want %q", got, want)
		}
		procs, err := p.Processes(ctx, app)
		if err != nil || len(procs) != 1 || procs[0].Status != hooks.StatusOnline || !hooks.PidAlive(procs[0].PID) {
			t.Fatalf("after StartFrom: %+v, %v; want one online instance", procs, err)
		}
		if uid := procUID(t, procs[0].PID); uid != n.UID {
			t.Errorf("app pid %d runs as uid %d, want %d", procs[0].PID, uid, n.UID)
		}
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", procs[0].PID))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(env, []byte("NOTIFY_SOCKET=")) {
			t.Error("the app inherited our NOTIFY_SOCKET")
		}
		if _, err := p.Processes(ctx, "pa-other"); !errors.Is(err, hooks.ErrUnknownApp) {
			t.Errorf("the ecosystem's other app: %v, want it not started (--only)", err)
		}
		if err := p.StartFrom(ctx, app, eco); err == nil || !strings.Contains(err.Error(), "pm2 knows it already") {
			t.Errorf("StartFrom of a known app: %v", err)
		}
		assertSameDaemon(t, n, daemon)
		assertOwnedByUser(t, n)
		if err := n.WaitHealthy(ctx, 10*time.Second); err != nil {
			t.Errorf("app started from its ecosystem file is not healthy: %v", err)
		}
	})

	t.Run("daemon dead: pm2 is never run", func(t *testing.T) {
		if err := n.KillPM2(ctx); err != nil {
			t.Fatal(err)
		}
		pidFile := filepath.Join(n.PM2Home, "pm2.pid")
		if _, err := os.Stat(pidFile); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("pm2.pid after pm2 kill: %v", err)
		}
		if err := p.DaemonAlive(); !errors.Is(err, hooks.ErrDaemonNotRunning) {
			t.Fatalf("DaemonAlive = %v, want ErrDaemonNotRunning", err)
		}
		calls := run.count()
		if _, err := p.Processes(ctx, app); !errors.Is(err, hooks.ErrDaemonNotRunning) {
			t.Errorf("Processes = %v, want ErrDaemonNotRunning", err)
		}
		if _, err := p.Stop(ctx, app); !errors.Is(err, hooks.ErrDaemonNotRunning) {
			t.Errorf("Stop = %v, want ErrDaemonNotRunning", err)
		}
		if err := p.Start(ctx, app); !errors.Is(err, hooks.ErrDaemonNotRunning) {
			t.Errorf("Start = %v, want ErrDaemonNotRunning", err)
		}
		if got := run.cmds[calls:]; len(got) != 0 {
			t.Errorf("ran pm2 %q with no daemon", got)
		}
		time.Sleep(500 * time.Millisecond) // a spawned daemon would show by now
		if _, err := os.Stat(pidFile); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pm2.pid appeared: %v", err)
		}
		if ds := godDaemons(t, n.PM2Home); len(ds) != 0 {
			t.Errorf("pm2 daemons for %s: %v, want none", n.PM2Home, ds)
		}
		for _, uid := range []uint32{0, n.UID} {
			for _, pid := range pm2Procs(t, uid, n.PM2Home) {
				t.Errorf("pid %d of uid %d runs pm2", pid, uid)
			}
		}
	})
}

// assertSameDaemon checks that pm2.pid still names the daemon that was
// there and that it is the only pm2 daemon for PM2Home.
func assertSameDaemon(t *testing.T, n *sandbox.Node, daemon int) {
	t.Helper()
	if got := n.DaemonPID(); got != daemon {
		t.Errorf("pm2 daemon pid %d, want %d (unchanged)", got, daemon)
	}
	if ds := godDaemons(t, n.PM2Home); !slices.Equal(ds, []int{daemon}) {
		t.Errorf("pm2 daemons for %s: %v, want [%d]", n.PM2Home, ds, daemon)
	}
}

// assertOwnedByUser checks that nothing under PM2Home belongs to anyone but
// the app user (root running pm2 there leaves root-owned sockets and logs).
func assertOwnedByUser(t *testing.T, n *sandbox.Node) {
	t.Helper()
	if foreign, err := n.ForeignFiles(); err != nil || len(foreign) > 0 {
		t.Errorf("files in PM2Home not owned by the app user: %v %v", foreign, err)
	}
}

// procsOf returns pid -> cmdline of every live, non-zombie process of uid.
func procsOf(t *testing.T, uid uint32) map[int]string {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !hooks.PidAlive(pid) {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat("/proc/"+e.Name(), &st) != nil || st.Uid != uid {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		out[pid] = strings.ReplaceAll(string(b), "\x00", " ")
	}
	return out
}

// godDaemons lists pm2 daemons (any user) whose title names pm2Home.
func godDaemons(t *testing.T, pm2Home string) []int {
	t.Helper()
	var out []int
	for _, uid := range []uint32{0, procOwner(t, pm2Home)} {
		for pid, cmd := range procsOf(t, uid) {
			if strings.Contains(cmd, "God Daemon") && strings.Contains(cmd, pm2Home) {
				out = append(out, pid)
			}
		}
	}
	slices.Sort(out)
	return out
}

// pm2Procs lists processes of uid that run the pm2 CLI or daemon.
func pm2Procs(t *testing.T, uid uint32, pm2Home string) []int {
	t.Helper()
	var out []int
	for pid, cmd := range procsOf(t, uid) {
		if !strings.Contains(cmd, "node_modules/pm2/") && !strings.Contains(cmd, "God Daemon") {
			continue
		}
		// Only pm2 for this PM2_HOME: other sandboxes on the machine (or a
		// container's own pm2) are none of this test's business.
		env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
		if strings.Contains(cmd, "("+pm2Home+")") || strings.Contains(string(env), "PM2_HOME="+pm2Home+"\x00") {
			out = append(out, pid)
		}
	}
	return out
}

func procOwner(t *testing.T, path string) uint32 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Uid
}

func procUID(t *testing.T, pid int) uint32 {
	t.Helper()
	return procOwner(t, "/proc/"+strconv.Itoa(pid))
}
