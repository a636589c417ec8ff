//go:build integration

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// TestDaemonSIGTERMMidDrain: row 18 of issue 13 against the real daemon
// (it was tested with a fake only). systemctl stop, or a package upgrade,
// sends SIGTERM while pre drains a request in flight: the daemon finishes
// the phase (the request is served to the end, the app stopped, the
// result recorded, the CLI told) before it exits, within its stop timeout,
// and the node stays blocked with its cycle open for exit to close.
func TestDaemonSIGTERMMidDrain(t *testing.T) {
	n := setupNode(t, "pa-e2st", nil)
	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18745\n  watch_interval: 500ms\ndrain:\n  idle: 300ms\n")
	d := startDaemon(t, n, cfg)

	slow := make(chan int, 1)
	go func() {
		code, _ := get(context.Background(), n.Client(false), n.URL("/slow?ms=3000", false))
		slow <- code
	}()
	time.Sleep(300 * time.Millisecond)
	cli := exec.Command("ip", "netns", "exec", n.ServerNS, binary, "pre", "--config", cfg)
	cli.Env = []string{"PATH=" + sandbox.SSMPath}
	var stdout bytes.Buffer
	cli.Stdout = &stdout
	stderr, _ := cli.StderrPipe()
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "drain:") {
			break
		}
	}
	go func() {
		for sc.Scan() {
		}
	}()
	stopStart := time.Now()
	stopDaemon(t, d) // SIGTERM, then wait for the daemon to exit
	stopped := time.Since(stopStart)
	cliErr := cli.Wait()
	if code := <-slow; code != 200 {
		t.Fatalf("the request in flight when the daemon was stopped got %d", code)
	}
	t.Logf("SIGTERM to exit: %s; pre's CLI: %v\n%s", stopped, cliErr, stdout.String())
	if stopped < time.Second || stopped > 15*time.Second {
		t.Errorf("the daemon exited %s after SIGTERM: want it to finish the drain (about 2.7 s) first, within its bound", stopped)
	}
	if cliErr != nil || !strings.HasPrefix(stdout.String(), "patchagent pre: ok") {
		t.Errorf("pre's CLI was not told the phase's result: %v\n%s", cliErr, stdout.String())
	}
	st, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(st), `"open": true`) || !strings.Contains(string(st), `"result": "ok"`) {
		t.Errorf("state after the stop:\n%s", st)
	}
	assertBlocked(t, n)
	// exit, run here without a daemon, closes the cycle.
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit after the stop: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	assertInService(t, n)
}
