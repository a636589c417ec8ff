package daemon

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/healthcheck"

	"github.com/patchagent/patchagent/agent"
)

func TestRunHookHandsThePhaseToTheDaemon(t *testing.T) {
	var got []string
	s := startServer(t, nil, func(_ context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		got = append(got, phase)
		if !opt.DryRun {
			t.Error("the dry run was not passed on")
		}
		io.WriteString(progress, "draining 3 connections\n")
		return okReport(phase)
	}, nil)
	cfg := agent.DefaultConfig()
	cfg.Daemon.Socket = s.path
	var progress bytes.Buffer
	rep := RunHook(testCtx(t), cfg, "pre", HookOptions{DryRun: true, Log: zaptest.NewLogger(t), Progress: &progress})
	sameJSON(t, rep, okReport("pre"))
	if len(got) != 1 || got[0] != "pre" || !strings.Contains(progress.String(), "draining 3 connections") {
		t.Fatalf("the daemon ran %q; progress %q", got, progress.String())
	}
}

// TestRunHookWithoutADaemonRunsThePhaseHere: no daemon answers, so the
// hook says so, builds the agent in this process, runs the phase there,
// and writes its metrics for node_exporter; a build that fails is the
// report's error.
func TestRunHookWithoutADaemonRunsThePhaseHere(t *testing.T) {
	cfg := agent.DefaultConfig()
	cfg.App.Name = "web"
	cfg.Daemon.Socket = filepath.Join(t.TempDir(), "none.sock")
	cfg.Daemon.TextfileDir = t.TempDir()
	state := t.TempDir()
	// A leftover block of ours, no cycle open: exit checks the app and
	// removes it.
	fw := &leftoverFW{blocked: true}
	var progress bytes.Buffer
	built := 0
	build := func(c agent.Config, log *zap.Logger, w io.Writer, afterSave func(string), m *agent.Metrics) (*agent.Agent, error) {
		built++
		return agent.New(c, agent.Deps{
			Log: log, Firewall: fw, Health: healthyProbe{}, HealthName: "health-check",
			HealthPolicy: healthcheck.Policy{Interval: time.Millisecond, Deadline: time.Second, Successes: 1},
			State:        agent.NewStateStore(state), Lock: agent.NewPhaseLock(state),
			BootID: func() (string, error) { return "boot-1", nil }, Metrics: m, Progress: w,
		}), nil
	}
	rep := runHook(testCtx(t), cfg, "exit", HookOptions{Log: zaptest.NewLogger(t), Progress: &progress}, build)
	if !strings.Contains(progress.String(), "no daemon answering on "+cfg.Daemon.Socket+": running the phase in this process") {
		t.Errorf("progress %q", progress.String())
	}
	if built != 1 || rep.Phase != "exit" || rep.ExitCode != 0 || fw.blocked || !strings.Contains(rep.Verdict(), "leftover block removed") {
		t.Fatalf("built %d, still blocked %v, report %s", built, fw.blocked, rep.Text())
	}
	prom, err := os.ReadFile(filepath.Join(cfg.Daemon.TextfileDir, agent.TextfileName))
	if err != nil || !strings.Contains(string(prom), `patchagent_phase_runs_total{phase="exit",result="ok"} 1`) {
		t.Fatalf("metrics for node_exporter: %v\n%s", err, prom)
	}

	// The real Build, with a user the node does not know.
	cfg.App.User = "pa-no-such-user"
	rep = RunHook(testCtx(t), cfg, "exit", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.Phase != "exit" || rep.ExitCode != agent.ExitUsage || !strings.Contains(rep.Error, "pa-no-such-user") {
		t.Fatalf("report %+v, want the local build's configuration error", rep)
	}
}

// leftoverFW is a firewall holding a complete block of ours, until
// Unblock.
type leftoverFW struct{ blocked bool }

func (f *leftoverFW) Families() []firewall.Family       { return []firewall.Family{firewall.IPv4} }
func (f *leftoverFW) Plan() []string                    { return nil }
func (f *leftoverFW) Block(ctx context.Context) error   { f.blocked = true; return nil }
func (f *leftoverFW) Unblock(ctx context.Context) error { f.blocked = false; return nil }
func (f *leftoverFW) Status(ctx context.Context) (firewall.Status, error) {
	fs := firewall.FamilyStatus{}
	if f.blocked {
		fs = firewall.FamilyStatus{Chain: true, Jumps: 1, JumpFirst: true, RulesOK: true}
	}
	return firewall.Status{Families: map[firewall.Family]firewall.FamilyStatus{firewall.IPv4: fs}}, nil
}

type healthyProbe struct{}

func (healthyProbe) Probe(ctx context.Context) (healthcheck.Result, error) {
	return healthcheck.Result{Status: healthcheck.Success, Code: 200}, nil
}

func TestRunHookInterruptedLeavesThePhaseToTheDaemon(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := startServer(t, nil, func(_ context.Context, phase string, _ agent.RunOptions, _ io.Writer) *agent.Report {
		close(started)
		<-release
		return okReport(phase)
	}, nil)
	t.Cleanup(func() { close(release) })
	cfg := agent.DefaultConfig()
	cfg.Daemon.Socket = s.path
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() { <-started; cancel() }()
	start := time.Now()
	rep := RunHook(ctx, cfg, "post", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.ExitCode != agent.ExitFailed || !strings.Contains(rep.Error, "interrupted (context canceled); the phase goes on in the daemon") {
		t.Fatalf("report %+v", rep)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("RunHook took %v after the interruption", d)
	}
}

func TestRunHookDaemonRefusal(t *testing.T) {
	s := startServer(t, nil, func(context.Context, string, agent.RunOptions, io.Writer) *agent.Report {
		t.Error("a refused request ran")
		return nil
	}, nil)
	cfg := agent.DefaultConfig()
	cfg.Daemon.Socket = s.path
	rep := RunHook(testCtx(t), cfg, "patch", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.Phase != "patch" || rep.ExitCode != agent.ExitFailed || !strings.Contains(rep.Error, "daemon refused the patch request") {
		t.Fatalf("report %+v", rep)
	}
}
