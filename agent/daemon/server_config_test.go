package daemon

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
)

// TestServerRefusesAHookNamingAnotherConfig: R7 of issue 13. The daemon
// runs phases with the config it started with; a hook command that loaded
// another file is refused, with both paths named, instead of running
// silently with settings nobody named. The same file through a symlink,
// or a request naming none (an older CLI), is served.
func TestServerRefusesAHookNamingAnotherConfig(t *testing.T) {
	dir := t.TempDir()
	own, other, link := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "other.yaml"), filepath.Join(dir, "link.yaml")
	for _, p := range []string{own, other} {
		if err := os.WriteFile(p, []byte("app: {name: a}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(own, link); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		runs.Add(1)
		return okReport(phase)
	}, func(s *Server) { s.ServeConfig(own) })

	_, err := Call(testCtx(t), srv.path, Request{Phase: "pre", Config: other}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "the daemon runs "+own+", this command names "+other) {
		t.Fatalf("another config: %v", err)
	}
	if runs.Load() != 0 {
		t.Fatal("the phase ran with the daemon's config although the hook named another")
	}
	for _, c := range []string{own, link, ""} {
		if _, err := Call(testCtx(t), srv.path, Request{Phase: "pre", Config: c}, io.Discard); err != nil {
			t.Errorf("config %q: %v", c, err)
		}
	}
	if runs.Load() != 3 {
		t.Errorf("%d runs, want 3", runs.Load())
	}
	if _, err := decodeRequest([]byte(`{"phase":"pre","config":"relative.yaml"}`)); err == nil {
		t.Error("a relative config path was accepted")
	}
}

// TestRunHookWithAnotherConfigIsAConfigError: the hook command refused by
// the daemon for its config exits 2 and says what to do; it does not run
// the phase in this process beside the daemon.
func TestRunHookWithAnotherConfigIsAConfigError(t *testing.T) {
	dir := t.TempDir()
	own, other := filepath.Join(dir, "config.yaml"), filepath.Join(dir, "other.yaml")
	for _, p := range []string{own, other} {
		if err := os.WriteFile(p, []byte("app: {name: a}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		return okReport(phase)
	}, func(s *Server) { s.ServeConfig(own) })
	cfg := agent.DefaultConfig()
	cfg.App.Name = "a"
	cfg.Daemon.Socket = srv.path
	rep := RunHook(testCtx(t), cfg, "pre", HookOptions{Log: zaptest.NewLogger(t), ConfigPath: other})
	if rep.ExitCode != agent.ExitUsage || !strings.Contains(rep.Verdict(), "run it with --config "+own) {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Verdict())
	}
}
