package agent

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

func TestRunHookHandsThePhaseToTheDaemon(t *testing.T) {
	var got []string
	s := startServer(t, nil, func(_ context.Context, phase string, opt RunOptions, progress io.Writer) *Report {
		got = append(got, phase)
		if !opt.DryRun {
			t.Error("the dry run was not passed on")
		}
		io.WriteString(progress, "draining 3 connections\n")
		return okReport(phase)
	}, nil)
	cfg := DefaultConfig()
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
	e := newTestEnv(t)
	afterPre(t, e)
	cfg := e.cfg
	cfg.Daemon.Socket = filepath.Join(t.TempDir(), "none.sock")
	cfg.Daemon.TextfileDir = t.TempDir()
	var progress bytes.Buffer
	built := 0
	build := func(c Config, log *zap.Logger, w io.Writer, afterSave func(string), m *Metrics) (*Agent, error) {
		built++
		a := e.agent(t)
		a.d.Metrics, a.d.Progress = m, w
		return a, nil
	}
	rep := runHook(testCtx(t), cfg, "exit", HookOptions{Log: zaptest.NewLogger(t), Progress: &progress}, build)
	if !strings.Contains(progress.String(), "no daemon answering on "+cfg.Daemon.Socket+": running the phase in this process") {
		t.Errorf("progress %q", progress.String())
	}
	if built != 1 || rep.Phase != "exit" || rep.ExitCode != 0 || !slices.Equal(e.ev.all(), []string{"start web", "unblock"}) {
		t.Fatalf("built %d, events %q, report %s", built, e.ev.all(), rep.Text())
	}
	prom, err := os.ReadFile(filepath.Join(cfg.Daemon.TextfileDir, TextfileName))
	if err != nil || !strings.Contains(string(prom), `patchagent_phase_runs_total{phase="exit",result="ok"} 1`) {
		t.Fatalf("metrics for node_exporter: %v\n%s", err, prom)
	}

	// The real Build, with a user the node does not know.
	cfg.App.User = "pa-no-such-user"
	rep = RunHook(testCtx(t), cfg, "exit", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.Phase != "exit" || rep.ExitCode != ExitUsage || !strings.Contains(rep.Error, "pa-no-such-user") {
		t.Fatalf("report %+v, want the local build's configuration error", rep)
	}
}

func TestRunHookInterruptedLeavesThePhaseToTheDaemon(t *testing.T) {
	release := make(chan struct{})
	started := make(chan struct{})
	s := startServer(t, nil, func(_ context.Context, phase string, _ RunOptions, _ io.Writer) *Report {
		close(started)
		<-release
		return okReport(phase)
	}, nil)
	t.Cleanup(func() { close(release) })
	cfg := DefaultConfig()
	cfg.Daemon.Socket = s.path
	ctx, cancel := context.WithCancel(testCtx(t))
	go func() { <-started; cancel() }()
	start := time.Now()
	rep := RunHook(ctx, cfg, "post", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.ExitCode != ExitFailed || !strings.Contains(rep.Error, "interrupted (context canceled); the phase goes on in the daemon") {
		t.Fatalf("report %+v", rep)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("RunHook took %v after the interruption", d)
	}
}

func TestRunHookDaemonRefusal(t *testing.T) {
	s := startServer(t, nil, func(context.Context, string, RunOptions, io.Writer) *Report {
		t.Error("a refused request ran")
		return nil
	}, nil)
	cfg := DefaultConfig()
	cfg.Daemon.Socket = s.path
	rep := RunHook(testCtx(t), cfg, "patch", HookOptions{Log: zaptest.NewLogger(t)})
	if rep.Phase != "patch" || rep.ExitCode != ExitFailed || !strings.Contains(rep.Error, "daemon refused the patch request") {
		t.Fatalf("report %+v", rep)
	}
}
