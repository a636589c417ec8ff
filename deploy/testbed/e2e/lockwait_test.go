//go:build integration

package e2e

import (
	"bufio"
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// TestExitWaitsForASlowPreInTheDaemon: E17 of issue 13. SSM gave up on
// pre's CLI (or moved on) while the daemon still drains a long request;
// SSM's on-exit hook arrives: exit waits for pre to finish and then returns
// the node, instead of failing with exit 3 after 5 s and leaving the node
// out until the dead-man alert.
func TestExitWaitsForASlowPreInTheDaemon(t *testing.T) {
	n := setupNode(t, "pa-e2lw", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18747\n  watch_interval: 500ms\ndrain:\n  idle: 300ms\n")
	startDaemon(t, n, cfg)

	slow := make(chan int, 1)
	go func() {
		code, _ := get(context.Background(), n.Client(false), n.URL("/slow?ms=8000", false))
		slow <- code
	}()
	time.Sleep(300 * time.Millisecond)
	pre := exec.Command("ip", "netns", "exec", n.ServerNS, binary, "pre", "--config", cfg)
	pre.Env = []string{"PATH=" + sandbox.SSMPath}
	stderr, _ := pre.StderrPipe()
	if err := pre.Start(); err != nil {
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
	exitStart := time.Now()
	r := patchagent(t, n, "exit", "--config", cfg)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "patchagent exit: ok") {
		t.Fatalf("exit arriving during pre's drain: %d\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if waited := time.Since(exitStart); waited < 6*time.Second {
		t.Errorf("exit returned after %s: it cannot have waited for pre's 8 s drain", waited)
	}
	if err := pre.Wait(); err != nil {
		t.Errorf("pre: %v", err)
	}
	if code := <-slow; code != 200 {
		t.Errorf("the long request got %d", code)
	}
	assertInService(t, n)
}
