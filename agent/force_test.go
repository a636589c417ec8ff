package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/patchagent/patchagent/healthcheck"
)

func forceOpts(reason string) RunOptions {
	l := uint32(1000)
	return RunOptions{Force: &ForceOptions{Reason: reason, Caller: Caller{Via: ViaSocket, PID: 4242, UID: 0, User: "root", LoginUID: &l, LoginUser: "alice", SudoUser: "alice"}}}
}

const forcedBy = "forced by uid 0 (root) pid 4242 via the control socket, loginuid 1000 (alice), SUDO_USER alice"

func TestExitForceReturnsTheNodeWithoutAHealthCheck(t *testing.T) {
	e := newTestEnv(t)
	e.cfg.Steps.StopUnits = []string{"node_exporter.service"}
	e.cfg.Steps.ExitCommands = [][]string{{"/usr/local/bin/cluster", "join"}}
	afterPre(t, e)
	// The health URL is wrong: exit cannot pass, the node stays out.
	e.health.answers = []healthcheck.Result{unhealthy(404)}
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 1 || !e.fw.blocked {
		t.Fatal(rep.Text())
	}
	st, _ := e.state.Load()
	cycle, probes := st.CycleID, e.health.probes()
	e.ev.log = nil

	a := e.agent(t)
	a.d.Metrics = NewMetrics(prometheus.NewRegistry(), "test")
	rep := a.Exit(context.Background(), forceOpts("health URL wrong"))
	want := "patchagent exit: FORCED, node back in service without a health check; cycle " + cycle + " closed, " + forcedBy
	if rep.ExitCode != 1 || rep.Result != ResultForced || rep.Verdict() != want {
		t.Fatalf("exit %d %s:\n%s\nwant first line:\n%s", rep.ExitCode, rep.Result, rep.Text(), want)
	}
	if !strings.HasPrefix(rep.Text(), want+"\n") || !strings.Contains(string(rep.JSON()), `"result":"forced"`) {
		t.Fatalf("text or JSON:\n%s\n%s", rep.Text(), rep.JSON())
	}
	// The app was started by the failed exit already: only the block goes,
	// then what pre stopped besides the app.
	wantEv := []string{"unblock", "systemctl start node_exporter.service", "run [/usr/local/bin/cluster join]"}
	if diff := cmp.Diff(wantEv, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	if e.health.probes() != probes {
		t.Fatal("the forced exit ran the health check")
	}
	if !strings.Contains(rep.Text(), `break-glass by uid 0 (root) pid 4242 via the control socket, loginuid 1000 (alice), SUDO_USER alice; reason "health URL wrong"; no health check`) {
		t.Fatal(rep.Text())
	}
	st, _ = e.state.Load()
	if st.Open || st.Status != StatusForced || st.ClosedAt.IsZero() || st.Block != nil || st.Forced == nil ||
		st.Forced.Reason != "health URL wrong" || st.Forced.Cycle != cycle || st.Forced.By.SudoUser != "alice" || st.Forced.By.PID != 4242 ||
		st.Last["exit"].Result != ResultForced || !strings.HasPrefix(st.Last["exit"].Error, "node back in service without a health check") {
		t.Fatalf("state: %+v %+v", st, st.Forced)
	}
	if got := testutil.ToFloat64(a.d.Metrics.PhaseRuns.WithLabelValues("exit", ResultForced)); got != 1 {
		t.Fatalf(`patchagent_phase_runs_total{phase="exit",result="forced"} %v`, got)
	}
	s := e.agent(t).Status(context.Background())
	if !strings.HasPrefix(s.Text(), "patchagent status: in service (no patch cycle open; cycle "+cycle+" was closed FORCED, without a health check)\n") ||
		!strings.Contains(s.Text(), `  forced: cycle `+cycle+` closed at `) || !strings.Contains(s.Text(), `reason "health URL wrong"`) || !strings.Contains(s.Text(), "exit:     last forced at") {
		t.Fatal(s.Text())
	}

	// Closed: a plain exit now changes nothing (the app still fails its
	// check) and puts no block back; the next pre keeps the forced end.
	e.ev.log = nil
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 1 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "no patch cycle open, nothing changed") {
		t.Fatalf("%v %s", e.ev.all(), rep.Verdict())
	}
	e.health.answers = []healthcheck.Result{healthy()}
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	st, _ = e.state.Load()
	if st.Previous == nil || st.Previous.CycleID != cycle || st.Previous.Status != StatusForced || st.Previous.Forced == nil || st.Previous.Forced.Reason != "health URL wrong" {
		t.Fatalf("the next pre discarded the forced end: %+v", st.Previous)
	}
}

func TestExitForceRightAfterPreStartsWhatPreStopped(t *testing.T) {
	e := newTestEnv(t)
	e.cfg.Steps.StopUnits = []string{"cron.service"}
	afterPre(t, e)
	rep := e.agent(t).Exit(context.Background(), forceOpts(""))
	if rep.ExitCode != 1 || rep.Result != ResultForced || e.health.probes() != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"unblock", "start web", "systemctl start cron.service"}, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	if strings.Contains(rep.Text(), "reason") {
		t.Fatalf("no reason given, one shown:\n%s", rep.Text())
	}
}

func TestExitForceNeverFailsOnWhatComesAfterTheUnblock(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	e.app.startErr = errors.New("pm2: connect ECONNREFUSED rpc.sock")
	rep := e.agent(t).Exit(context.Background(), forceOpts(""))
	if rep.ExitCode != 1 || rep.Result != ResultForced || e.fw.blocked || len(rep.Warnings) != 1 ||
		!strings.Contains(rep.Warnings[0], "web not started (start it by hand, as user node): pm2: connect ECONNREFUSED") {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); st.Open || st.Forced == nil || len(st.Forced.Warnings) != 1 {
		t.Fatalf("state: %+v", st)
	}
}

// failingUnblock is the test firewall whose Unblock fails.
type failingUnblock struct{ *fakeFirewall }

func (f failingUnblock) Unblock(ctx context.Context) error {
	f.ev.add("unblock failed")
	return errors.New("iptables: Resource temporarily unavailable")
}

func TestExitForceWhoseUnblockFailsKeepsTheCycleOpen(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	a := e.agent(t)
	a.d.Firewall = failingUnblock{e.fw}
	rep := a.Exit(context.Background(), forceOpts(""))
	if rep.ExitCode != 1 || rep.Result != ResultFailed ||
		!strings.HasPrefix(rep.Verdict(), "patchagent exit: FAILED, node still out of service: --force could not remove the block: iptables: Resource temporarily unavailable (last resort: the iptables commands in patchagent(8), RECOVERY)") {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); !st.Open || st.Status != StatusFailed || st.Forced == nil {
		t.Fatalf("state: %+v", st)
	}
}

func TestExitForceWithoutACycle(t *testing.T) {
	t.Run("nothing of ours: nothing to do", func(t *testing.T) {
		e := newTestEnv(t)
		rep := e.agent(t).Exit(context.Background(), forceOpts(""))
		if rep.ExitCode != 0 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "nothing to do: no patch cycle open and no block of ours (--force changed nothing)") {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
	})
	t.Run("leftover block: removed, nothing else", func(t *testing.T) {
		e := newTestEnv(t)
		e.fw.blocked = true
		e.health.answers = []healthcheck.Result{unhealthy(500)}
		e.cfg.Steps.StopUnits = []string{"cron.service"}
		rep := e.agent(t).Exit(context.Background(), forceOpts(""))
		if rep.ExitCode != 1 || !cmp.Equal(e.ev.all(), []string{"unblock"}) || e.health.probes() != 0 ||
			rep.Verdict() != "patchagent exit: FORCED, node back in service without a health check; leftover block of ours removed (no cycle was open), "+forcedBy {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
		if st, _ := e.state.Load(); st.Open || st.CycleID != "" || st.Forced == nil || st.Forced.Cycle != "" || st.Last["exit"].Result != ResultForced {
			t.Fatalf("state: %+v", st)
		}
	})
}

func TestExitForceDoesNotUndoAnInterruptedPostButSaysSo(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	killPostMidUpdate(t, e, p)
	rep := e.agent(t).Exit(context.Background(), forceOpts(""))
	if rep.ExitCode != 1 || rep.Result != ResultForced || p.restores() != 0 {
		t.Fatal(rep.Text())
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "this cycle's post was interrupted during its dependency update and --force does NOT undo it") {
		t.Fatal(rep.Text())
	}
	// The next pre says so again: the record was not dropped silently.
	pre := e.agent(t).Pre(context.Background(), RunOptions{})
	if pre.ExitCode != 0 || len(pre.Warnings) != 1 || !strings.Contains(pre.Warnings[0], "closed (forced) with its post interrupted during the dependency update and never undone") {
		t.Fatal(pre.Text())
	}
}

func TestExitForceDryRunChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	before, _ := os.ReadFile(e.state.Path)
	rep := e.agent(t).Exit(context.Background(), RunOptions{DryRun: true, Force: forceOpts("x").Force})
	after, _ := os.ReadFile(e.state.Path)
	if rep.ExitCode != 0 || len(e.ev.all()) != 0 || string(before) != string(after) || e.health.probes() != 0 ||
		!strings.Contains(rep.Text(), "would: break-glass requested by uid 0 (root)") || !strings.Contains(rep.Text(), "would: close cycle ") {
		t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
	}
}

// TestNothingBlocksAgainAfterAForcedExit: the daemon's watch puts back
// the block of an open cycle (Reassert); after the break-glass the cycle
// is closed, so the node stays in service, the app unhealthy or not.
func TestNothingBlocksAgainAfterAForcedExit(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	afterPre(t, e)
	e.health.answers = []healthcheck.Result{unhealthy(500)}
	a := e.agent(t)
	// What the operator meets without it: the block removed by hand comes back.
	e.fw.blocked = false
	if did, err := a.Reassert(ctx); !did || err != nil {
		t.Fatalf("block not re-applied: %v %v", did, err)
	}
	if rep := a.Exit(ctx, forceOpts("")); rep.Result != ResultForced {
		t.Fatal(rep.Text())
	}
	e.ev.log = nil
	if did, err := a.Reassert(ctx); did || err != nil || e.fw.blocked || len(e.ev.all()) != 0 {
		t.Fatalf("blocked again after the forced exit: %v %v %q", did, err, e.ev.all())
	}
}

func TestCallerOfReadsLoginUIDAndSudoUser(t *testing.T) {
	root := t.TempDir()
	old := procRoot
	procRoot = root
	t.Cleanup(func() { procRoot = old })
	write := func(pid, name, body string) {
		if err := os.MkdirAll(filepath.Join(root, pid), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, pid, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("4242", "loginuid", "0")
	write("4242", "environ", "PATH=/usr/bin\x00SUDO_USER=alice\x00SECRET=hunter2\x00")
	c := CallerOf(ViaSocket, 4242, 0)
	if c.SudoUser != "alice" || c.LoginUID == nil || *c.LoginUID != 0 || c.LoginUser != "root" || c.User != "root" || c.Who() != "alice" {
		t.Fatalf("%+v", c)
	}
	if got := c.String(); got != "uid 0 (root) pid 4242 via the control socket, loginuid 0 (root), SUDO_USER alice" || strings.Contains(got, "hunter2") {
		t.Fatalf("String %q", got)
	}
	// A service (no login), no sudo, a hostile SUDO_USER.
	write("7", "loginuid", "4294967295")
	write("7", "environ", "SUDO_USER=a\nb c\x00")
	c = CallerOf(ViaSocket, 7, 0)
	if c.LoginUID != nil || c.SudoUser != `"a\nb c"` || c.String() != `uid 0 (root) pid 7 via the control socket, no loginuid, SUDO_USER "a\nb c"` {
		t.Fatalf("%+v %q", c, c.String())
	}
	// Gone: what SO_PEERCRED said is kept.
	if c := CallerOf(ViaSocket, 99, 0); c.PID != 99 || c.LoginUID != nil || c.SudoUser != "" || c.Who() != "root" {
		t.Fatalf("%+v", c)
	}
	if self := SelfCaller(); self.Via != ViaSelf || self.PID != os.Getpid() || !regexp.MustCompile(`^uid \d+ .*pid \d+ in this process \(no daemon\), `).MatchString(self.String()) {
		t.Fatalf("self: %+v %s", self, self)
	}
}

func TestCheckReason(t *testing.T) {
	for _, tt := range []struct {
		in string
		ok bool
	}{
		{"", true}, {"health URL wrong, app checked by alice", true}, {"ünïcode ok", true},
		{"two\nlines", false}, {"tab\there", false}, {"\x1b[31mred", false}, {string([]byte{0xff}), false}, {strings.Repeat("x", MaxReasonLen+1), false},
	} {
		if err := CheckReason(tt.in); (err == nil) != tt.ok {
			t.Errorf("CheckReason(%q) = %v", tt.in, err)
		}
	}
}
