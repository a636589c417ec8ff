//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// asAppUser runs the shell script script, with args as $1..., as the
// sandbox's app user (setpriv: its uid and gid, no other group): what an
// attacker with the app's identity (an RCE in the internet-facing app) can
// do.
func asAppUser(n *sandbox.Node, script string, args ...string) error {
	argv := append([]string{"--reuid=" + strconv.Itoa(int(n.UID)), "--regid=" + strconv.Itoa(int(n.GID)), "--clear-groups",
		"/bin/sh", "-ec", script, "sh"}, args...)
	cmd := exec.Command("setpriv", argv...)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("as %s: %s %v: %w\n%s", n.AppUser, script, args, err, out)
	}
	return nil
}

// plantFIFO has the app user move path aside and put in its place a FIFO
// nobody writes to. restore puts the real file back; it also runs at
// cleanup, before the sandbox's teardown (which reads pm2.pid).
func plantFIFO(t *testing.T, n *sandbox.Node, path string) (restore func()) {
	t.Helper()
	if err := asAppUser(n, `mv "$1" "$1.real" && mkfifo "$1"`, path); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	restore = func() {
		once.Do(func() {
			// A reader blocked opening the FIFO (the bug) is released
			// first: a non-blocking writer's open wakes it.
			if fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				syscall.Close(fd)
			}
			if err := asAppUser(n, `rm "$1" && mv "$1.real" "$1"`, path); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(restore)
	return restore
}

func TestFIFOsInPM2HomeCannotHangAPhase(t *testing.T) {
	// PM2_HOME is the app user's. That user replaces pm2's pid files with
	// FIFOs while pm2 runs: root must refuse them at once, not wait on them
	// past every deadline holding the phase lock. The phases run in the
	// daemon, as in production, where a wedged phase would stay wedged.
	n := setupNode(t, "pa-e2f", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 200ms\n")
	startDaemon(t, n, cfg)
	const budget = 10 * time.Second

	// pm2.pid: pre fails in its check, before blocking, naming the file.
	pm2pid := filepath.Join(n.PM2Home, "pm2.pid")
	restore := plantFIFO(t, n, pm2pid)
	notRegular := pm2pid + " is not a regular file"
	r := patchagentWithin(t, n, 3*budget, "pre", "--config", cfg)
	first := firstLine(r.stdout)
	if r.took > budget || r.code != 1 || !strings.Contains(first, "nothing was blocked") ||
		!strings.Contains(first, "pm2 daemon not running") || !strings.Contains(first, notRegular) {
		t.Fatalf("pre with a FIFO at pm2.pid: exit %d in %s (budget %s), first line %q", r.code, r.took, budget, first)
	}
	assertNotBlocked(t, n)
	r = patchagentWithin(t, n, 3*budget, "status", "--config", cfg, "--output", "json")
	app, _ := r.report["app"].(map[string]any)
	if e, _ := app["error"].(string); r.took > budget || !strings.Contains(e, notRegular) {
		t.Fatalf("status with a FIFO at pm2.pid: exit %d in %s (budget %s), app %v", r.code, r.took, budget, app)
	}
	restore()

	// Nothing was left wedged in the daemon: with pm2.pid back, pre runs.
	if r := patchagentWithin(t, n, 3*budget, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre with pm2.pid restored: exit %d", r.code)
	}
	assertBlocked(t, n)

	// The app's pid file: the app is back (as after the patch), then its
	// pid file becomes a FIFO. exit's crash watch reads no pid file (it
	// asks the kernel about the pids pm2 lists), so nothing there can hold
	// it: exit returns the healthy app to service within its budget.
	ctx := context.Background()
	if _, err := n.PM2(ctx, "start", n.Opts.AppName); err != nil {
		t.Fatal(err)
	}
	if info, ok, err := n.App(ctx); err != nil || !ok || info.Status != "online" || info.PID == 0 {
		t.Fatalf("app after pm2 start: %+v %v %v", info, ok, err)
	}
	pidFiles, err := filepath.Glob(filepath.Join(n.PM2Home, "pids", n.Opts.AppName+"-*.pid"))
	if err != nil || len(pidFiles) != 1 {
		t.Fatalf("the app's pid files: %v %v", pidFiles, err)
	}
	plantFIFO(t, n, pidFiles[0])
	r = patchagentWithin(t, n, 3*budget, "exit", "--config", cfg)
	if r.took > budget || r.code != 0 {
		t.Fatalf("exit with a FIFO at %s: exit %d in %s (budget %s)", pidFiles[0], r.code, r.took, budget)
	}
	assertInService(t, n)
}
