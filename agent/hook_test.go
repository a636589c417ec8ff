package agent

import (
	"bytes"
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

func TestRunHookWithoutADaemonRunsThePhaseHere(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Daemon.Socket = filepath.Join(t.TempDir(), "none.sock")
	cfg.Daemon.TextfileDir = t.TempDir()
	cfg.App.User = "pa-no-such-user"
	var progress bytes.Buffer
	rep := RunHook(testCtx(t), cfg, "exit", HookOptions{Log: zaptest.NewLogger(t), Progress: &progress})
	if !strings.Contains(progress.String(), "no daemon answering on "+cfg.Daemon.Socket+": running the phase in this process") {
		t.Errorf("progress %q", progress.String())
	}
	// Built here: the configured user is looked up, and is missing.
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
