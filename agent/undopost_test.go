package agent

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/patchagent/patchagent/hooks"
)

// killPostMidUpdate runs post so that it dies right after recording its
// update intent, and leaves the tree as a killed npm would: half-updated.
func killPostMidUpdate(t *testing.T, e *testEnv, p *fakePackages) {
	t.Helper()
	e.crashAt = "update"
	func() {
		defer func() { recover() }()
		e.agent(t).Post(context.Background(), RunOptions{})
	}()
	e.crashAt = ""
	p.mu.Lock()
	p.lock = []byte("half-installed")
	p.mu.Unlock()
	e.ev.log = nil
	if st, _ := e.state.Load(); st.Post == nil || !st.Post.Taken || st.Post.Status != StatusRunning || st.Phase != "post" || st.Status != StatusRunning {
		t.Fatalf("not what a post killed mid-update leaves: %+v %+v", st, st.Post)
	}
}

func TestExitUndoesAnInterruptedPostBeforeTheAppStarts(t *testing.T) {
	for _, tt := range []struct {
		name string
		// online: pm2 brought the app up on the half-updated tree (a
		// reboot resurrected it).
		online bool
		want   []string
	}{
		{"app stopped by pre", false, []string{"restore snapshot", "start web", "unblock"}},
		{"app resurrected on the half-updated tree", true, []string{"stop web (state: step=undo-post stopped=true)", "restore snapshot", "start web", "unblock"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			p := withPackages(t, e)
			afterPre(t, e)
			before := string(p.lock)
			killPostMidUpdate(t, e, p)
			if tt.online {
				e.app.setProcs(func(ps []hooks.Process) { ps[0].Status, ps[0].PID = hooks.StatusOnline, os.Getpid() })
			}
			rep := e.agent(t).Exit(context.Background(), RunOptions{})
			if rep.ExitCode != 0 {
				t.Fatal(rep.Text())
			}
			if diff := cmp.Diff(tt.want, e.ev.all()); diff != "" {
				t.Fatalf("side effects (-want +got):\n%s", diff)
			}
			if string(p.lock) != before {
				t.Fatalf("the app started on %q, not the tree from before post", p.lock)
			}
			i := slices.IndexFunc(rep.Steps, func(s StepReport) bool { return s.Name == "undo-post" })
			if i < 0 || !strings.HasPrefix(rep.Steps[i].Detail, "restored the snapshot of the interrupted post (") {
				t.Fatalf("no undo-post step naming the interrupted post:\n%s", rep.Text())
			}
			if !strings.Contains(rep.Verdict(), "interrupted post undone: dependencies as before post") {
				t.Fatalf("verdict %q", rep.Verdict())
			}
			// The record says what happened, and the next pre keeps it.
			st, _ := e.state.Load()
			if st.Open || st.Post == nil || st.Post.Status != StatusFailed || !st.Post.Interrupted || !strings.HasPrefix(st.Post.Undone, "exit restored the snapshot at ") {
				t.Fatalf("state: %+v %+v", st, st.Post)
			}
			cycle := st.CycleID
			pre := e.agent(t).Pre(context.Background(), RunOptions{})
			if pre.ExitCode != 0 || len(pre.Warnings) != 0 {
				t.Fatal(pre.Text())
			}
			st, _ = e.state.Load()
			if st.CycleID == cycle || st.Previous == nil || st.Previous.CycleID != cycle || st.Previous.Post == nil || !st.Previous.Post.Interrupted {
				t.Fatalf("the next pre discarded the record: %+v", st.Previous)
			}
		})
	}
}

func TestExitFailsClosedWhenTheInterruptedPostCannotBeUndone(t *testing.T) {
	for _, onFailure := range []string{"keep_blocked", "unblock"} {
		t.Run(onFailure, func(t *testing.T) {
			e := newTestEnv(t)
			e.cfg.Exit.OnFailure = onFailure
			p := withPackages(t, e)
			afterPre(t, e)
			killPostMidUpdate(t, e, p)
			p.snapshots = nil // the snapshot is gone: Restore fails
			rep := e.agent(t).Exit(context.Background(), RunOptions{})
			want := "patchagent exit: FAILED, node still out of service: this cycle's post was interrupted during its dependency update and is not undone, so web is not started on a half-updated tree: restoring the dependencies the interrupted post of cycle "
			if rep.ExitCode != 1 || !strings.HasPrefix(rep.Verdict(), want) || !strings.Contains(rep.Verdict(), "no such snapshot") {
				t.Fatalf("exit %d: %s", rep.ExitCode, rep.Verdict())
			}
			if diff := cmp.Diff([]string{"restore snapshot"}, e.ev.all()); diff != "" || !e.fw.blocked {
				t.Fatalf("started or unblocked a half-updated app (-want +got):\n%s", diff)
			}
			st, _ := e.state.Load()
			if !st.Open || st.Status != StatusFailed || st.Step != "undo-post" || st.Post.Status != StatusRunning || !strings.Contains(st.Error, "interrupted") {
				t.Fatalf("state: %+v %+v", st, st.Post)
			}
		})
	}
}

func TestExitDryRunPlansTheUndoOfAnInterruptedPost(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	killPostMidUpdate(t, e, p)
	rep := e.agent(t).Exit(context.Background(), RunOptions{DryRun: true})
	if rep.ExitCode != 0 || len(e.ev.all()) != 0 || len(rep.Plan) == 0 || !strings.HasPrefix(rep.Plan[0], "undo-post: stop web if it runs, restore ") {
		t.Fatalf("%v\n%s", e.ev.all(), rep.Text())
	}
}

func TestPreWarnsOfAPreviousCycleLeftHalfUpdated(t *testing.T) {
	// What exit before this change left: the cycle closed over a post
	// record still "running" after its snapshot.
	e := newTestEnv(t)
	snap := "/var/lib/patchagent/snapshots/c0"
	if err := e.state.Save(State{CycleID: "c0", BootID: e.boot, Phase: "exit", Step: "done", Status: StatusOK,
		Post: &PostRecord{CycleID: "c0", Snapshot: snap, Taken: true, Status: StatusRunning}}); err != nil {
		t.Fatal(err)
	}
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "the previous cycle c0 closed (ok) with its post interrupted during the dependency update and never undone") ||
		!strings.Contains(rep.Warnings[0], snap) || !strings.Contains(rep.Verdict(), "with 1 warning(s)") {
		t.Fatal(rep.Text())
	}
	st, _ := e.state.Load()
	if st.Previous == nil || st.Previous.CycleID != "c0" || st.Previous.Post == nil || st.Previous.Post.Snapshot != snap || len(st.Warnings) != 1 {
		t.Fatalf("state: %+v", st)
	}
	s := e.agent(t).Status(context.Background())
	if !strings.Contains(s.Text(), "  before: cycle c0 ended ok (exit), its post interrupted and never undone\n") {
		t.Fatal(s.Text())
	}
}
