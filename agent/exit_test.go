package agent

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// afterPre runs pre so the node is blocked with the app stopped, and clears
// the recorded events.
func afterPre(t *testing.T, e *testEnv) {
	t.Helper()
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	e.ev.log = nil
}

func TestExitAfterPreStartsChecksUnblocksAndClosesTheCycle(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	e.health.answers = []healthcheck.Result{unhealthy(0), unhealthy(0), healthy()}
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"start web", "unblock"}, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	if !regexp.MustCompile(`^patchagent exit: ok in \S+ \(started web, healthy after 3 attempt\(s\) in \S+, unblocked 443/tcp v4\+v6\)$`).MatchString(rep.Verdict()) {
		t.Fatalf("verdict %q", rep.Verdict())
	}
	st, _ := e.state.Load()
	if st.Open || st.Status != StatusOK || st.Phase != "exit" || st.ClosedAt.IsZero() || st.Block != nil {
		t.Fatalf("cycle not closed: %+v", st)
	}
	// exit again: nothing to do, nothing changed.
	e.ev.log = nil
	rep = e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || !strings.Contains(rep.Verdict(), "nothing to do: no patch cycle open, app healthy") || len(e.ev.all()) != 0 {
		t.Fatalf("second exit: %v %s", e.ev.all(), rep.Verdict())
	}
}

func TestExitAfterRebootReblocksBeforeAnyCheck(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	// Reboot: rules gone, pm2 resurrected the app, new boot id.
	e.fw.blocked = false
	e.app.procs[0].Status, e.app.procs[0].PID = hooks.StatusOnline, os.Getpid()
	e.boot = "boot-2"
	e.health.onProbe = func(n int) {
		if n == 1 {
			e.ev.add("first probe")
		}
	}
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	want := []string{"block (state: open=true step=reblock)", "first probe", "unblock"}
	if diff := cmp.Diff(want, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	if !strings.Contains(rep.Text(), "reblock") || strings.Contains(rep.Verdict(), "started web") {
		t.Fatalf("report:\n%s", rep.Text())
	}
	if st, _ := e.state.Load(); st.BootID != "boot-2" || st.Open {
		t.Fatalf("state: %+v", st)
	}
}

func TestExitWithoutPre(t *testing.T) {
	t.Run("healthy: nothing changes", func(t *testing.T) {
		e := newTestEnv(t)
		rep := e.agent(t).Exit(context.Background(), RunOptions{})
		if rep.ExitCode != 0 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "nothing to do") {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
		if st, _ := e.state.Load(); st.Open || st.CycleID != "" || st.Last["exit"].Result != ResultOK {
			t.Fatalf("exit without pre opened a cycle or did not record its result: %+v", st)
		}
	})
	t.Run("unhealthy: fails, changes nothing", func(t *testing.T) {
		e := newTestEnv(t)
		e.health.answers = []healthcheck.Result{unhealthy(500)}
		rep := e.agent(t).Exit(context.Background(), RunOptions{})
		if rep.ExitCode != 1 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "no patch cycle open, nothing changed, but the app is unhealthy") {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
	})
	t.Run("leftover block: removed once healthy", func(t *testing.T) {
		e := newTestEnv(t)
		e.fw.blocked = true
		rep := e.agent(t).Exit(context.Background(), RunOptions{})
		if rep.ExitCode != 0 || !cmp.Equal(e.ev.all(), []string{"unblock"}) || !strings.Contains(rep.Verdict(), "leftover block removed") {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
	})
	t.Run("leftover block, unhealthy: stays", func(t *testing.T) {
		e := newTestEnv(t)
		e.fw.blocked = true
		e.health.answers = []healthcheck.Result{unhealthy(503)}
		rep := e.agent(t).Exit(context.Background(), RunOptions{})
		if rep.ExitCode != 1 || len(e.ev.all()) != 0 || !strings.HasPrefix(rep.Verdict(), "patchagent exit: FAILED, node still out of service: a leftover block") {
			t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
		}
	})
}

func TestExitUnhealthyKeepsTheNodeBlocked(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	e.health.answers = []healthcheck.Result{unhealthy(500)}
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 {
		t.Fatal(rep.Text())
	}
	if !regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: health-check http://localhost:443/health-check: status 500 after \d+ attempts in `).MatchString(rep.Verdict()) {
		t.Fatalf("verdict %q", rep.Verdict())
	}
	if diff := cmp.Diff([]string{"start web"}, e.ev.all()); diff != "" {
		t.Fatalf("unblocked an unhealthy app: %s", diff)
	}
	if rep.Node != nodeStillOut || !strings.Contains(string(rep.JSON()), `"node":"still out of service"`) {
		t.Fatalf("the report does not say where the node was left: %q", rep.Node)
	}
	st, _ := e.state.Load()
	if !st.Open || st.Status != StatusFailed || st.Step != "health" || !strings.Contains(st.Error, "status 500") {
		t.Fatalf("state: %+v", st)
	}
}

func TestExitOnFailureUnblockGivesTheTutorialsOrder(t *testing.T) {
	e := newTestEnv(t)
	e.cfg.Exit.OnFailure = "unblock"
	afterPre(t, e)
	e.health.answers = []healthcheck.Result{unhealthy(500)}
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 || !strings.HasPrefix(rep.Verdict(), "patchagent exit: FAILED, node back in service UNHEALTHY (exit.on_failure: unblock): health-check") {
		t.Fatalf("exit %d %q", rep.ExitCode, rep.Verdict())
	}
	if diff := cmp.Diff([]string{"start web", "unblock"}, e.ev.all()); diff != "" {
		t.Fatal(diff)
	}
	if st, _ := e.state.Load(); st.Open || st.Status != StatusFailed {
		t.Fatalf("state: %+v", st)
	}
}

func TestExitDetectsACrashLoopFast(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	e.health.answers = []healthcheck.Result{unhealthy(0)}
	// The app crashes and pm2 restarts it: "online" throughout, the restart
	// counter climbing.
	e.health.onProbe = func(n int) {
		if n%5 == 0 {
			e.app.setProcs(func(ps []hooks.Process) { ps[0].Restarts++; ps[0].PID++ })
		}
	}
	start := time.Now()
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "node still out of service: web is crash-looping: its pid changed 2 time(s)") {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Text())
	}
	if took := time.Since(start); took >= 500*time.Millisecond {
		t.Fatalf("crash loop found after %s: not before the health deadline", took)
	}
	if cmp.Equal(e.ev.all()[len(e.ev.all())-1], "unblock") {
		t.Fatal("unblocked a crash-looping app")
	}
}

func TestExitStartsAnAppPM2Forgot(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	// A reboot whose pm2 daemon came back without a saved dump.
	e.boot, e.fw.blocked = "boot-2", false
	e.app.unknown = true
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), `unknown pm2 app "web", and app.ecosystem is not set`) || !cmp.Equal(e.ev.all(), []string{"block (state: open=true step=reblock)"}) {
		t.Fatalf("%v %s", e.ev.all(), rep.Verdict())
	}
	e.cfg.App.Ecosystem = "/srv/web/ecosystem.config.js"
	rep = e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"block (state: open=true step=reblock)", "start web from /srv/web/ecosystem.config.js", "unblock"}, e.ev.all()); diff != "" {
		t.Fatal(diff)
	}
}

func TestExtrasStopInPreAndStartInExitInConfiguredOrder(t *testing.T) {
	e := newTestEnv(t)
	e.cfg.Steps.StopUnits = []string{"node_exporter.service", "cron.service"}
	e.cfg.Steps.PreCommands = [][]string{{"/usr/local/bin/cluster", "leave"}}
	e.cfg.Steps.ExitCommands = [][]string{{"/usr/local/bin/cluster", "join"}}
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	want := []string{
		"block (state: open=true step=block)", "stop web (state: step=stop stopped=true)",
		"systemctl stop node_exporter.service", "systemctl stop cron.service", "run [/usr/local/bin/cluster leave]",
		"start web", "unblock",
		"systemctl start node_exporter.service", "systemctl start cron.service", "run [/usr/local/bin/cluster join]",
	}
	if diff := cmp.Diff(want, e.ev.all()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}

func TestExitAfterPreDiedAtEachStep(t *testing.T) {
	for _, step := range []string{"block", "drain", "stop", "extras"} {
		t.Run(step, func(t *testing.T) {
			e := newTestEnv(t)
			// What a SIGKILLed pre leaves: the intent of step recorded, the
			// phase still "running"; the block in place from "drain" on.
			e.fw.blocked = step != "block"
			if step == "stop" || step == "extras" {
				e.app.procs[0].Status, e.app.procs[0].PID = hooks.StatusStopped, 0
			}
			if err := e.state.Save(State{CycleID: "c", Open: true, BootID: e.boot, Phase: "pre", Step: step, Status: StatusRunning}); err != nil {
				t.Fatal(err)
			}
			rep := e.agent(t).Exit(context.Background(), RunOptions{})
			if rep.ExitCode != 0 {
				t.Fatal(rep.Text())
			}
			if got := e.ev.all(); got[len(got)-1] != "unblock" || e.fw.blocked {
				t.Fatalf("not back in service: %v", got)
			}
			if st, _ := e.state.Load(); st.Open {
				t.Fatalf("cycle still open: %+v", st)
			}
		})
	}
}

func TestExitDryRunChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	before, _ := os.ReadFile(e.state.Path)
	rep := e.agent(t).Exit(context.Background(), RunOptions{DryRun: true})
	after, _ := os.ReadFile(e.state.Path)
	if rep.ExitCode != 0 || len(e.ev.all()) != 0 || e.health.probes() != 0 || string(before) != string(after) {
		t.Fatalf("dry run acted: %v\n%s", e.ev.all(), rep.Text())
	}
	if !strings.Contains(rep.Text(), "would: pm2 start web, through the pm2 daemon of user node, unless it is online") ||
		!slices.Contains(rep.Plan, "remove chain PATCHAGENT-BLOCK and its jump from INPUT (v4+v6)") ||
		slices.Contains(rep.Plan, "re-apply the block first (the cycle is open but the rules are gone):") {
		t.Fatal(rep.Text())
	}
	// The rules gone (a reboot): the plan puts them back first.
	e.fw.blocked = false
	rep = e.agent(t).Exit(context.Background(), RunOptions{DryRun: true})
	// The firewall's own plan of the block, whole and in order, right
	// after the line that says why.
	fwPlan := e.fw.Plan()
	if len(rep.Plan) < 1+len(fwPlan) || rep.Plan[0] != "re-apply the block first (the cycle is open but the rules are gone):" ||
		!slices.Equal(rep.Plan[1:1+len(fwPlan)], fwPlan) || len(e.ev.all()) != 0 {
		t.Fatalf("dry run with the rules gone: %v\n%s", e.ev.all(), rep.Text())
	}
}

func TestReconcileReblocksAnOpenCycleOnly(t *testing.T) {
	e := newTestEnv(t)
	rep := e.agent(t).Reconcile(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "nothing to do") {
		t.Fatalf("no cycle: %v %s", e.ev.all(), rep.Verdict())
	}
	afterPre(t, e)
	e.fw.blocked, e.boot = false, "boot-2" // rebooted: rules gone
	rep = e.agent(t).Reconcile(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || !cmp.Equal(e.ev.all(), []string{"block (state: open=true step=done)"}) || !strings.Contains(rep.Verdict(), "block re-applied (443/tcp v4+v6)") {
		t.Fatalf("open cycle: %v %s", e.ev.all(), rep.Verdict())
	}
	st, _ := e.state.Load()
	if !st.Open || st.Phase != "pre" || st.BootID != "boot-2" {
		t.Fatalf("state: %+v", st)
	}
	e.ev.log = nil
	if rep = e.agent(t).Reconcile(context.Background(), RunOptions{}); rep.ExitCode != 0 || len(e.ev.all()) != 0 {
		t.Fatalf("block in place: %v %s", e.ev.all(), rep.Verdict())
	}
}

func TestStatusTellsCycleKernelAndApp(t *testing.T) {
	e := newTestEnv(t)
	s := e.agent(t).Status(context.Background())
	if s.Cycle.Open || s.Block.Kernel != "none" || !s.Consistent || s.Service != ServiceIn || !strings.HasPrefix(s.Text(), "patchagent status: in service") {
		t.Fatalf("%+v\n%s", s, s.Text())
	}
	afterPre(t, e)
	s = e.agent(t).Status(context.Background())
	if !s.Cycle.Open || s.Block.Kernel != "blocked" || !s.Block.Recorded || !s.Consistent || s.Phases["pre"].Result != ResultOK ||
		len(s.App.Instances) != 1 || s.App.Instances[0].Status != hooks.StatusStopped || !strings.HasPrefix(s.Text(), "patchagent status: OUT OF SERVICE") ||
		!slices.Equal(s.Block.Families, []string{"ipv4", "ipv6"}) || s.Service != ServiceOut {
		t.Fatalf("%+v\n%s", s, s.Text())
	}
	// A reboot: the kernel lost the rules the state file still records.
	e.fw.blocked, e.boot = false, "boot-2"
	s = e.agent(t).Status(context.Background())
	if s.Consistent || !s.Rebooted || !strings.Contains(s.Text(), "open but the block is none in the kernel") {
		t.Fatalf("%+v\n%s", s, s.Text())
	}
	// Only a stray rule jumping to the chain, in IPv6: partial, and named.
	e.fw.kernel = map[firewall.Family]firewall.FamilyStatus{firewall.IPv4: {}, firewall.IPv6: {OtherJumps: 1}}
	s = e.agent(t).Status(context.Background())
	if s.Block.Kernel != "partial" || !slices.Equal(s.Block.Families, []string{"ipv6"}) {
		t.Fatalf("stray jump: kernel %q, families %q\n%s", s.Block.Kernel, s.Block.Families, s.Text())
	}
	if len(e.ev.all()) != 0 {
		t.Fatalf("status acted: %v", e.ev.all())
	}
}
