//go:build integration

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// assertAnswered checks that a new connection from the client netns is
// answered (any HTTP status: the app's health check may fail) over IPv4 and
// IPv6.
func assertAnswered(t *testing.T, n *sandbox.Node) {
	t.Helper()
	for _, v6 := range []bool{false, true} {
		code, err := get(context.Background(), n.Client(v6), n.URL("/", v6))
		if err != nil || code == 0 {
			t.Fatalf("outside connection (v6=%v) not answered: %d %v", v6, code, err)
		}
	}
}

// removeBlockByHand is what an operator does today: the jump out of INPUT.
func removeBlockByHand(t *testing.T, n *sandbox.Node) {
	t.Helper()
	for _, b := range []string{"iptables", "ip6tables"} {
		if out, err := sandbox.NetnsCommand(n.ServerNS, b, "-w", "5", "-D", "INPUT", "-j", "PATCHAGENT-BLOCK").CombinedOutput(); err != nil {
			t.Fatalf("%s -D INPUT -j PATCHAGENT-BLOCK: %v %s", b, err, out)
		}
	}
}

// TestExitForceReturnsTheNodeAndTheDaemonLeavesIt: the health check cannot
// pass (the app answers 500), exit keeps the node out, the daemon puts a
// block removed by hand back; `patchagent exit --force` returns the node
// through the daemon, closes the cycle, and the node stays in service.
func TestExitForceReturnsTheNodeAndTheDaemonLeavesIt(t *testing.T) {
	n := setupNode(t, "pa-e2fb", nil)
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  watch_interval: 200ms\n  metrics_listen: 127.0.0.1:18751\ndrain:\n  idle: 200ms\nhealth:\n  interval: 100ms\n  deadline: 2s\n")
	d := startDaemon(t, n, cfg)
	preThenAppEnv(t, n, cfg, map[string]string{"HEALTH_MODE": "500"})
	r := patchagent(t, n, "exit", "--config", cfg)
	if r.code != 1 || !strings.HasPrefix(firstLine(r.stdout), "patchagent exit: FAILED, node still out of service: health-check") {
		t.Fatalf("exit %d: %q", r.code, firstLine(r.stdout))
	}
	assertBlocked(t, n)

	// Removing the block by hand does not help: the daemon re-applies it.
	removeBlockByHand(t, n)
	deadline := time.Now().Add(5 * time.Second)
	for strings.Count(iptablesS(t, n), "-A INPUT -j PATCHAGENT-BLOCK") != 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	assertBlocked(t, n)

	// The break-glass, run by an operator through sudo.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.ServerNS, binary, "exit", "--force", "--reason", "e2e: the health URL is wrong", "--config", cfg)
	cmd.Env = []string{"PATH=" + sandbox.SSMPath, "SUDO_USER=e2e-operator"}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	t.Logf("exit --force: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 {
		t.Fatalf("exit --force: %v, want exit code 1", err)
	}
	line := regexp.MustCompile(`^patchagent exit: FORCED, node back in service without a health check; cycle (\S+) closed, forced by uid 0 \(root\) pid (\d+) via the control socket, .*SUDO_USER e2e-operator$`)
	m := line.FindStringSubmatch(firstLine(out.String()))
	if m == nil || m[2] != strconv.Itoa(cmd.Process.Pid) {
		t.Fatalf("first line %q: want %s with pid %d", firstLine(out.String()), line, cmd.Process.Pid)
	}
	if strings.Contains(errb.String(), "running the phase in this process") {
		t.Fatal("the forced exit did not go through the daemon")
	}
	assertNotBlocked(t, n)
	assertAnswered(t, n)

	// The cycle is closed, and says so.
	s := patchagent(t, n, "status", "--config", cfg, "--output", "json")
	var st struct {
		Cycle struct {
			Open   bool   `json:"open"`
			ID     string `json:"id"`
			Status string `json:"status"`
			Forced *struct {
				Reason string `json:"reason"`
				By     struct {
					Via      string `json:"via"`
					PID      int    `json:"pid"`
					SudoUser string `json:"sudo_user"`
				} `json:"by"`
			} `json:"forced"`
		} `json:"cycle"`
		Block struct {
			Kernel string `json:"kernel"`
		} `json:"block"`
		Phases map[string]struct {
			Result string `json:"result"`
		} `json:"phases"`
	}
	if err := json.Unmarshal([]byte(s.stdout), &st); err != nil {
		t.Fatalf("status: %v\n%s", err, s.stdout)
	}
	if st.Cycle.Open || st.Cycle.ID != m[1] || st.Cycle.Status != "forced" || st.Block.Kernel != "none" || st.Phases["exit"].Result != "forced" ||
		st.Cycle.Forced == nil || st.Cycle.Forced.Reason != "e2e: the health URL is wrong" || st.Cycle.Forced.By.SudoUser != "e2e-operator" ||
		st.Cycle.Forced.By.Via != "control socket" || st.Cycle.Forced.By.PID != cmd.Process.Pid {
		t.Fatalf("status after the forced exit: %+v\n%s", st, s.stdout)
	}
	if text := patchagent(t, n, "status", "--config", cfg); !strings.HasPrefix(text.stdout, "patchagent status: in service (no patch cycle open; cycle "+m[1]+" was closed FORCED") {
		t.Fatalf("status: %q", firstLine(text.stdout))
	}
	if log := d.LogTail(); !strings.Contains(log, "break-glass request: exit --force") || !strings.Contains(log, "e2e-operator") {
		t.Fatalf("the daemon did not log who forced the exit:\n%s", log)
	}

	// 15 s later (75 daemon ticks): still in service.
	time.Sleep(15 * time.Second)
	assertNotBlocked(t, n)
	assertAnswered(t, n)
	if !strings.Contains(d.Status(), "idle") {
		t.Fatalf("daemon status %q", d.Status())
	}
}
