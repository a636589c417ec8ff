package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/hooks"
)

func TestPreDrainPollsWhenAConnectionIsDueToBeIdle(t *testing.T) {
	// A 10s poll interval, a connection 900ms into the 1s drain.idle: the
	// next poll comes when it is due (100ms), not 10s later.
	e := newTestEnv(t)
	e.cfg.Drain.Interval, e.cfg.Drain.Idle, e.cfg.Drain.Timeout = Duration(10*time.Second), Duration(time.Second), Duration(time.Minute)
	e.conns.snaps = [][]firewall.Conn{{conn(false, 900*time.Millisecond)}, {conn(false, 1001*time.Millisecond)}}
	start := time.Now()
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitOK {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Text())
	}
	if took := time.Since(start); took < 100*time.Millisecond || took > 3*time.Second || e.conns.polls != 2 {
		t.Fatalf("pre took %s with %d polls, want about 100ms and 2", took, e.conns.polls)
	}
}

func TestPreBlocksDrainsStopsInOrderWithIntentFirst(t *testing.T) {
	e := newTestEnv(t)
	// Two connections: one busy for two polls, then both idle long enough.
	e.conns.snaps = [][]firewall.Conn{
		{conn(true, 0), conn(false, 20*time.Millisecond)},
		{conn(true, 0), conn(false, 50*time.Millisecond)},
		{conn(false, 150*time.Millisecond)},
	}
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitOK {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Text())
	}
	want := []string{"block (state: open=true step=block)", "stop web (state: step=stop stopped=true)"}
	if diff := cmp.Diff(want, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	if e.conns.polls != 3 {
		t.Fatalf("drain polled %d times, want 3 (until drained)", e.conns.polls)
	}
	verdict := strings.SplitN(rep.Text(), "\n", 2)[0]
	if !regexp.MustCompile(`^patchagent pre: ok in [0-9.]+m?s \(blocked 443/tcp v4\+v6, drained 2 connection\(s\), stopped web\)$`).MatchString(verdict) {
		t.Fatalf("verdict: %q", verdict)
	}
	st, err := e.state.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !st.Open || st.Phase != "pre" || st.Status != StatusOK || st.Step != "done" || st.BootID != "boot-1" || st.CycleID == "" {
		t.Fatalf("state: %+v", st)
	}
	if st.Block == nil || st.Block.Chain != firewall.Chain || !cmp.Equal(st.Block.Ports, []uint16{443}) || st.Block.Action != "reject" {
		t.Fatalf("block record: %+v", st.Block)
	}
	if st.Stopped == nil || !cmp.Equal(st.Stopped.WasOnline, []int{os.Getpid()}) || st.Stopped.User != "node" {
		t.Fatalf("stop record: %+v", st.Stopped)
	}
	if len(rep.Text()) > consoleLimit {
		t.Fatalf("output is %d characters", len(rep.Text()))
	}
}

func TestPreTwiceConvergesInOneCycle(t *testing.T) {
	e := newTestEnv(t)
	a := e.agent(t)
	if rep := a.Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	first, _ := e.state.Load()
	rep := a.Pre(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	second, _ := e.state.Load()
	if second.CycleID != first.CycleID || second.Attempts != 2 {
		t.Fatalf("second pre opened a new cycle or did not count: %+v", second)
	}
	if !cmp.Equal(second.Stopped.WasOnline, []int{os.Getpid()}) {
		t.Fatalf("second pre lost which pids were online: %+v", second.Stopped)
	}
	if !strings.Contains(rep.Steps[0].Detail, "already blocked") {
		t.Fatalf("check step: %+v", rep.Steps[0])
	}
}

func TestPreFailsBeforeBlocking(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(*testEnv)
		wantCode int
		wantMsg  string
	}{
		{"unknown app", func(e *testEnv) { e.cfg.App.Name = "nosuch" }, ExitUsage, `nothing was blocked: unknown pm2 app "nosuch"`},
		{"pm2 daemon not running", func(e *testEnv) {
			e.app.listErr = fmt.Errorf("%w (PM2_HOME=/home/node/.pm2): reading pm2.pid: no such file", hooks.ErrDaemonNotRunning)
		}, ExitFailed, "nothing was blocked: pm2 daemon not running (PM2_HOME=/home/node/.pm2)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			tt.setup(e)
			rep := e.agent(t).Pre(context.Background(), RunOptions{})
			if rep.ExitCode != tt.wantCode || !strings.Contains(rep.Verdict(), tt.wantMsg) {
				t.Fatalf("exit %d, verdict %q", rep.ExitCode, rep.Verdict())
			}
			if len(e.ev.all()) != 0 {
				t.Fatalf("side effects happened: %v", e.ev.all())
			}
			st, err := e.state.Load()
			if err != nil || st.Open || st.Block != nil || st.Last["pre"].Result != ResultFailed || !strings.Contains(st.Last["pre"].Error, tt.wantMsg) {
				t.Fatalf("state after a pre that did nothing: %+v %v", st, err)
			}
		})
	}
}

func TestPreFailureAfterBlockLeavesARecordForExit(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(*testEnv)
		wantStep string
		wantMsg  string
		wantEv   int
	}{
		{"block fails", func(e *testEnv) { e.fw.blockErr = errBoom }, "block", "blocking: boom", 1},
		{"stop fails", func(e *testEnv) {
			e.app.stopErr = errors.New(`stopping pm2 app "web": pm2 shows the app stopped but pid(s) [4242] still alive after 5s`)
		}, "stop", "pid(s) [4242] still alive", 2},
		{"port still listened on", func(e *testEnv) {
			e.conns.listening = []firewall.Listener{{UID: 1000}}
			e.conns.listenUntil = 1 << 30
		}, "stop", "pm2 reports web stopped, but after 200ms something still listens on", 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			tt.setup(e)
			rep := e.agent(t).Pre(context.Background(), RunOptions{})
			if rep.ExitCode != ExitFailed || !strings.Contains(rep.Verdict(), tt.wantMsg) ||
				!strings.Contains(rep.Verdict(), "the node stays blocked") {
				t.Fatalf("exit %d, verdict %q", rep.ExitCode, rep.Verdict())
			}
			if len(e.ev.all()) != tt.wantEv {
				t.Fatalf("side effects: %v", e.ev.all())
			}
			st, err := e.state.Load()
			if err != nil {
				t.Fatal(err)
			}
			if !st.Open || st.Status != StatusFailed || st.Step != tt.wantStep || st.Block == nil || !strings.Contains(st.Error, tt.wantMsg) {
				t.Fatalf("state does not record the failure: %+v", st)
			}
		})
	}
}

func TestPreDrainTimeoutWarnsAndGoesOn(t *testing.T) {
	e := newTestEnv(t)
	e.conns.snaps = [][]firewall.Conn{{conn(true, 0), conn(false, time.Second)}}
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitOK {
		t.Fatal(rep.Text())
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "drain timed out after 300ms with 1 connection(s) still busy (1 with a request in flight, 2 open)") {
		t.Fatalf("warnings: %v", rep.Warnings)
	}
	if !strings.Contains(rep.Verdict(), "with 1 warning(s)") || !strings.Contains(rep.Verdict(), "drain timed out with 1 busy") {
		t.Fatalf("verdict: %s", rep.Verdict())
	}
	if e.ev.all()[1] != "stop web (state: step=stop stopped=true)" {
		t.Fatalf("app not stopped after the drain timeout: %v", e.ev.all())
	}
}

func TestPreDrainHonoursMinWaitAndIgnoresLoopback(t *testing.T) {
	e := newTestEnv(t)
	e.cfg.Drain.MinWait = Duration(80 * time.Millisecond)
	lo := conn(true, 0)
	lo.Remote = netip.MustParseAddrPort("[::ffff:127.0.0.1]:50000")
	// Only a busy loopback connection (our own probe): drained at once, but
	// min_wait keeps the drain open.
	e.conns.snaps = [][]firewall.Conn{{lo}}
	start := time.Now()
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitOK || len(rep.Warnings) != 0 {
		t.Fatal(rep.Text())
	}
	if took := time.Since(start); took < 80*time.Millisecond {
		t.Fatalf("drain ended after %s, before min_wait", took)
	}
	if !strings.Contains(rep.Verdict(), "drained 0 connection(s)") {
		t.Fatalf("loopback connection counted: %s", rep.Verdict())
	}
}

func TestPreDryRunChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	rep := e.agent(t).Pre(context.Background(), RunOptions{DryRun: true})
	if rep.ExitCode != ExitOK || rep.Result != ResultDryRun {
		t.Fatal(rep.Text())
	}
	if len(e.ev.all()) != 0 || e.conns.polls != 0 {
		t.Fatalf("dry run acted: %v, %d polls", e.ev.all(), e.conns.polls)
	}
	if _, err := os.Stat(e.state.Path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("dry run wrote the state file")
	}
	text := rep.Text()
	for _, w := range []string{"patchagent pre: dry run, nothing changed (4 planned actions)", "would: iptables -t filter -N PATCHAGENT-BLOCK",
		"would: drain: wait until no connection to port(s) 443", "would: pm2 stop web, through the pm2 daemon of user node, then check pid(s) [" + strconv.Itoa(os.Getpid()) + "] are gone"} {
		if !strings.Contains(text, w) {
			t.Fatalf("dry run output lacks %q:\n%s", w, text)
		}
	}
}

func TestPreRefusesWhileAnotherPhaseHoldsTheLock(t *testing.T) {
	e := newTestEnv(t)
	release, err := e.lock.Acquire(context.Background(), "exit", 0)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitLocked || !strings.Contains(rep.Verdict(), "another patchagent phase is running") {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Verdict())
	}
	if len(e.ev.all()) != 0 {
		t.Fatalf("acted without the lock: %v", e.ev.all())
	}
}

func TestPreJSONIsOneObject(t *testing.T) {
	e := newTestEnv(t)
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	var got map[string]any
	dec := json.NewDecoder(strings.NewReader(string(rep.JSON())))
	if err := dec.Decode(&got); err != nil {
		t.Fatal(err)
	}
	if dec.More() {
		t.Fatal("more than one JSON value")
	}
	if got["phase"] != "pre" || got["result"] != "ok" || got["exit_code"] != float64(0) || len(got["steps"].([]any)) != 4 {
		t.Fatalf("json: %v", got)
	}
}

func TestReportTextIsCutWithinTheConsoleWindow(t *testing.T) {
	r := &Report{Phase: "pre", StatePath: "/var/lib/patchagent/state.json"}
	for i := 0; i < 200; i++ {
		r.warn("connection %d is still busy with a long explanation of why", i)
	}
	r.finish(time.Second, nil, 0)
	text := r.Text()
	if len(text) > consoleLimit {
		t.Fatalf("%d characters", len(text))
	}
	if !strings.HasPrefix(text, "patchagent pre: ok in 1s with 200 warning(s)") || !strings.Contains(text, "(cut: full record in /var/lib/patchagent/state.json") {
		t.Fatalf("text:\n%s", text)
	}
}

// TestPhaseWaitsForTheLockUnlessToldNot: E17 of issue 13. A hook's phase
// waits for the phase holding the lock (LockWait) and then runs; the
// daemon's own exits (NoLockWait) give up at once, their reason being
// stale once another phase ran.
func TestPhaseWaitsForTheLockUnlessToldNot(t *testing.T) {
	e := newTestEnv(t)
	a := e.agent(t)
	a.d.LockWait = 5 * time.Second
	release, err := e.lock.Acquire(context.Background(), "pre", 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if rep := a.Exit(context.Background(), RunOptions{NoLockWait: true}); rep.ExitCode != ExitLocked || time.Since(start) > time.Second {
		t.Fatalf("the daemon's exit: exit %d after %s, want %d at once", rep.ExitCode, time.Since(start), ExitLocked)
	}
	go func() { time.Sleep(300 * time.Millisecond); release() }()
	start = time.Now()
	rep := a.Exit(context.Background(), RunOptions{})
	if rep.ExitCode == ExitLocked || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("a hook's exit: exit %d after %s, want it to wait for the lock and run", rep.ExitCode, time.Since(start))
	}
}

// TestPreDryRunPlansEvenWhenTheCheckFails: the whole plan, the check's
// step marked failed, the verdict saying why, and the exit code pre
// itself would have; nothing done.
func TestPreDryRunPlansEvenWhenTheCheckFails(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(*testEnv)
		wantCode int
		wantWhy  string
	}{
		{"pm2 failing", func(e *testEnv) { e.app.listErr = errBoom }, ExitFailed, "nothing was blocked: boom"},
		{"app unknown to pm2", func(e *testEnv) { e.app.unknown = true }, ExitUsage, "nothing was blocked: " + hooks.ErrUnknownApp.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.cfg.Steps.StopUnits = []string{"node_exporter"}
			tt.setup(e)
			rep := e.agent(t).Pre(context.Background(), RunOptions{DryRun: true})
			text := rep.Text()
			if rep.ExitCode != tt.wantCode || rep.Result != ResultDryRun ||
				!strings.HasPrefix(text, "patchagent pre: dry run, nothing changed (5 planned actions), but the check FAILED: "+tt.wantWhy) {
				t.Fatalf("exit %d:\n%s", rep.ExitCode, text)
			}
			if len(rep.Steps) != 1 || rep.Steps[0].Name != "check" || rep.Steps[0].Result != ResultFailed {
				t.Fatalf("steps %+v", rep.Steps)
			}
			for _, w := range []string{"would: iptables -t filter -N PATCHAGENT-BLOCK", "would: drain: wait until",
				"would: pm2 stop web, through the pm2 daemon of user node, then check the app's pid(s) (unknown: pm2 did not list them) are gone",
				"would: systemctl stop node_exporter"} {
				if !strings.Contains(text, w) {
					t.Errorf("plan lacks %q:\n%s", w, text)
				}
			}
			if len(e.ev.all()) != 0 {
				t.Fatalf("dry run acted: %v", e.ev.all())
			}
			if _, err := os.Stat(e.state.Path); !errors.Is(err, os.ErrNotExist) {
				t.Fatal("dry run wrote the state file")
			}
		})
	}
}
