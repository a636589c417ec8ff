package daemon

import (
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
)

func TestRunHookHandsAForcedExitToTheDaemonWithTheCaller(t *testing.T) {
	var mu sync.Mutex
	var got []agent.RunOptions
	s := startServer(t, nil, func(_ context.Context, phase string, opt agent.RunOptions, _ io.Writer) *agent.Report {
		mu.Lock()
		got = append(got, opt)
		mu.Unlock()
		return okReport(phase)
	}, nil)
	cfg := agent.DefaultConfig()
	cfg.Daemon.Socket = s.path
	rep := RunHook(testCtx(t), cfg, "exit", HookOptions{Force: true, Reason: "health URL wrong", Log: zaptest.NewLogger(t)})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Force == nil {
		t.Fatalf("the daemon ran %+v, want one forced exit", got)
	}
	f := got[0].Force
	// The caller is this test process, as SO_PEERCRED tells the daemon.
	if f.Reason != "health URL wrong" || f.Caller.Via != agent.ViaSocket || f.Caller.PID != os.Getpid() || f.Caller.UID != uint32(os.Geteuid()) {
		t.Fatalf("force options %+v", f)
	}
}

func TestServerNeverJoinsAForcedExitToAPlainOne(t *testing.T) {
	b := newBlocker()
	srv := startServer(t, nil, b.run, nil)
	ctx := testCtx(t)
	var plain, forced, forced2 syncBuffer
	done := make(chan error, 3)
	go func() {
		_, err := Call(ctx, srv.path, Request{Phase: "exit"}, &plain)
		done <- err
	}()
	eventually(t, "the plain exit to start", func() bool { return strings.Contains(plain.String(), "start exit") })
	go func() {
		_, err := Call(ctx, srv.path, Request{Phase: "exit", Force: true}, &forced)
		done <- err
	}()
	eventually(t, "the forced exit to start on its own", func() bool { return strings.Contains(forced.String(), "start exit") })
	// A second forced exit joins the first.
	go func() {
		_, err := Call(ctx, srv.path, Request{Phase: "exit", Force: true, Reason: "again"}, &forced2)
		done <- err
	}()
	eventually(t, "the second forced exit to join", func() bool { return strings.Contains(forced2.String(), "joined the exit") })
	if ph, _, ok := srv.Running(); !ok || ph != "exit" {
		t.Fatalf("Running: %q %v", ph, ok)
	}
	close(b.release)
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if n := b.calls.Load(); n != 2 {
		t.Fatalf("runner called %d times, want 2 (the plain exit, one forced)", n)
	}
}
