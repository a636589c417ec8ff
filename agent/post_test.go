package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/patchagent/patchagent/healthcheck"
)

// lock renders a v3 lockfile holding name@version pairs.
func lock(pairs ...string) []byte {
	var b strings.Builder
	b.WriteString(`{"name":"app","lockfileVersion":3,"requires":true,"packages":{"":{"name":"app","dependencies":{}}`)
	for i := 0; i+1 < len(pairs); i += 2 {
		fmt.Fprintf(&b, `,"node_modules/%s":{"version":"%s"}`, pairs[i], pairs[i+1])
	}
	b.WriteString("}}")
	return []byte(b.String())
}

// fakePackages plays npm and the snapshots: the lockfile stands for the
// whole dependency state.
type fakePackages struct {
	mu        sync.Mutex
	ev        *events
	lock      []byte
	next      []byte // the lockfile npm update leaves
	checkErr  error
	updateErr error
	// hang makes Update wait for its deadline.
	hang bool
	// raised is what UpgradeMajor says it changed in package.json.
	raised    []string
	snapshots map[string][]byte
	restored  int
}

func (p *fakePackages) Check(ctx context.Context) error { return p.checkErr }
func (p *fakePackages) Update(ctx context.Context) error {
	p.ev.add("npm update")
	if p.hang {
		<-ctx.Done()
		return fmt.Errorf("npm update: %w", ctx.Err())
	}
	if p.updateErr != nil {
		p.mu.Lock()
		p.lock = []byte("half-installed")
		p.mu.Unlock()
		return p.updateErr
	}
	p.mu.Lock()
	p.lock = p.next
	p.mu.Unlock()
	return nil
}
func (p *fakePackages) UpgradeMajor(ctx context.Context) ([]string, error) {
	p.ev.add("upgrade major")
	return p.raised, nil
}
func (p *fakePackages) Lockfile() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lock, nil
}
func (p *fakePackages) Snapshot(dst string) (SnapshotInfo, error) {
	p.ev.add("snapshot")
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.snapshots == nil {
		p.snapshots = map[string][]byte{}
	}
	p.snapshots[dst] = p.lock
	return SnapshotInfo{Files: 3, Bytes: 100, Hardlinked: true}, nil
}
func (p *fakePackages) Restore(snapshot string) error {
	p.ev.add("restore snapshot")
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.snapshots[snapshot]
	if !ok {
		return errors.New("no such snapshot")
	}
	p.lock = s
	p.restored++
	return nil
}
func (p *fakePackages) Prune(root string, keep int) (int, int64, error) { return 0, 0, nil }
func (p *fakePackages) restores() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.restored
}

func withPackages(t *testing.T, e *testEnv) *fakePackages {
	p := &fakePackages{ev: e.ev, lock: lock("dep-a", "1.0.0", "dep-b", "2.0.0"), next: lock("dep-a", "1.0.2", "dep-b", "2.0.0", "dep-c", "0.1.0")}
	e.pkgs = p
	e.cfg.App.Dir = "/srv/web"
	return p
}

func TestPostSnapshotsUpdatesAndReportsTheChanges(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	rep := e.agent(t).Post(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"snapshot", "npm update"}, e.ev.all()); diff != "" {
		t.Fatal(diff)
	}
	if !strings.HasSuffix(rep.Verdict(), "(2 dependencies changed)") {
		t.Fatalf("verdict %q", rep.Verdict())
	}
	want := []string{"dep-a 1.0.0 -> 1.0.2", "+ dep-c 0.1.0"}
	if diff := cmp.Diff(want, rep.Changes); diff != "" {
		t.Fatal(diff)
	}
	if !strings.Contains(rep.Text(), "  changed: dep-a 1.0.0 -> 1.0.2\n") {
		t.Fatal(rep.Text())
	}
	st, _ := e.state.Load()
	if st.Post == nil || st.Post.Status != StatusOK || !st.Post.Taken || !cmp.Equal(st.Post.Changes, want) || !strings.HasSuffix(st.Post.Snapshot, "/snapshots/"+st.CycleID) {
		t.Fatalf("state: %+v", st.Post)
	}
	// post again in the same cycle: reports, changes nothing.
	e.ev.log = nil
	rep = e.agent(t).Post(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || len(e.ev.all()) != 0 || !strings.Contains(rep.Verdict(), "already done in this cycle: 2 dependencies changed") {
		t.Fatalf("%v %s", e.ev.all(), rep.Verdict())
	}
	_ = p
}

func TestPostReportsTheRangesRaisedToANewMajor(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	p.raised = []string{"dep-a: ^1.0.0 -> ^2.0.0", "dep-b: ~3.1.0 -> ^4.0.1"}
	e.cfg.Post.NPM.Major = true
	afterPre(t, e)
	rep := e.agent(t).Post(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"snapshot", "upgrade major", "npm update"}, e.ev.all()); diff != "" {
		t.Fatal(diff)
	}
	want := "1 updated, 1 added, 0 removed; package.json ranges raised: dep-a: ^1.0.0 -> ^2.0.0, dep-b: ~3.1.0 -> ^4.0.1"
	i := slices.IndexFunc(rep.Steps, func(s StepReport) bool { return s.Name == "update" })
	if i < 0 || rep.Steps[i].Detail != want {
		t.Errorf("steps %+v, want an update step with detail %q", rep.Steps, want)
	}
	if !strings.Contains(rep.Text(), "dep-b: ~3.1.0 -> ^4.0.1") {
		t.Errorf("the report does not show the raised ranges:\n%s", rep.Text())
	}
}

func TestPostFailureRestoresTheSnapshot(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  func(*fakePackages, *testEnv)
		want string
	}{
		{"npm error", func(p *fakePackages, e *testEnv) { p.updateErr = errors.New("npm error code ETARGET") }, "npm error code ETARGET"},
		{"deadline", func(p *fakePackages, e *testEnv) { p.hang = true; e.cfg.Post.NPM.Timeout = Duration(50e6) }, "npm did not finish within post.npm.timeout 50ms"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			p := withPackages(t, e)
			afterPre(t, e)
			before := string(p.lock)
			tt.set(p, e)
			rep := e.agent(t).Post(context.Background(), RunOptions{})
			if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "dependency update failed, the app's dependencies are restored as they were: ") || !strings.Contains(rep.Verdict(), tt.want) {
				t.Fatalf("exit %d: %s", rep.ExitCode, rep.Verdict())
			}
			if string(p.lock) != before || p.restores() != 1 {
				t.Fatalf("not restored: %q (%d restores)", p.lock, p.restores())
			}
			if st, _ := e.state.Load(); st.Post.Status != StatusFailed || !st.Open {
				t.Fatalf("state: %+v %+v", st, st.Post)
			}
		})
	}
}

func TestPostRefusesBeforeChangingAnything(t *testing.T) {
	t.Run("no cycle open", func(t *testing.T) {
		e := newTestEnv(t)
		withPackages(t, e)
		rep := e.agent(t).Post(context.Background(), RunOptions{})
		if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "no patch cycle open") || len(e.ev.all()) != 0 {
			t.Fatalf("%v %s", e.ev.all(), rep.Verdict())
		}
	})
	t.Run("check fails", func(t *testing.T) {
		e := newTestEnv(t)
		p := withPackages(t, e)
		afterPre(t, e)
		p.checkErr = errors.New("package-lock.json out of sync with package.json: dep-a is ^2.0.0 in package.json, ^1.0.0 in the lockfile")
		rep := e.agent(t).Post(context.Background(), RunOptions{})
		if rep.ExitCode != 1 || !strings.Contains(rep.Verdict(), "nothing changed: package-lock.json out of sync") || len(e.ev.all()) != 0 {
			t.Fatalf("%v %s", e.ev.all(), rep.Verdict())
		}
	})
	t.Run("no app.dir", func(t *testing.T) {
		e := newTestEnv(t)
		afterPre(t, e)
		rep := e.agent(t).Post(context.Background(), RunOptions{})
		if rep.ExitCode != 2 || !strings.Contains(rep.Verdict(), "app.dir is not set") {
			t.Fatalf("%d %s", rep.ExitCode, rep.Verdict())
		}
	})
}

func TestPostAfterAKilledPostRestoresFirst(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	// The first post dies during npm update: its snapshot is taken, the tree
	// half-installed.
	e.crashAt = "update"
	func() {
		defer func() { recover() }()
		e.agent(t).Post(context.Background(), RunOptions{})
	}()
	p.lock = []byte("half-installed")
	e.crashAt = ""
	e.ev.log = nil
	rep := e.agent(t).Post(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"restore snapshot", "npm update"}, e.ev.all()); diff != "" {
		t.Fatal(diff)
	}
	if !cmp.Equal(rep.Changes, []string{"dep-a 1.0.0 -> 1.0.2", "+ dep-c 0.1.0"}) {
		t.Fatalf("changes measured against the half-installed tree: %v", rep.Changes)
	}
}

func TestExitRollsBackABreakingUpdate(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	if rep := e.agent(t).Post(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	// Unhealthy with the new dependencies, healthy once restored.
	e.health.onProbe = func(int) {}
	e.health.answers = []healthcheck.Result{unhealthy(500)}
	e.health.dynamic = func() healthcheck.Result {
		if p.restores() > 0 {
			return healthy()
		}
		return unhealthy(500)
	}
	e.ev.log = nil
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 {
		t.Fatal(rep.Text())
	}
	want := "patchagent exit: FAILED, node back in service, but the dependency update broke the app: rolled back 2 packages (dep-a 1.0.0 -> 1.0.2, + dep-c 0.1.0) after health-check http://localhost:443/health-check: status 500"
	if !strings.HasPrefix(rep.Verdict(), want) {
		t.Fatalf("verdict:\n%s\nwant prefix:\n%s", rep.Verdict(), want)
	}
	evs := e.ev.all()
	if diff := cmp.Diff([]string{"start web", "stop web (state: step=rollback stopped=true)", "restore snapshot", "start web", "unblock"}, evs); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	st, _ := e.state.Load()
	if st.Open || !st.Post.RolledBack || st.Status != StatusFailed {
		t.Fatalf("state: %+v %+v", st, st.Post)
	}
}

func TestExitKeepsTheNodeBlockedWhenTheRollbackDoesNotHelp(t *testing.T) {
	e := newTestEnv(t)
	withPackages(t, e)
	afterPre(t, e)
	if rep := e.agent(t).Post(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	e.health.answers = []healthcheck.Result{unhealthy(503)}
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 1 || !strings.HasPrefix(rep.Verdict(), "patchagent exit: FAILED, node still out of service: ") ||
		!strings.Contains(rep.Verdict(), "rolled back 2 packages (dep-a 1.0.0 -> 1.0.2, + dep-c 0.1.0), and the app is still unhealthy") {
		t.Fatalf("exit %d: %s", rep.ExitCode, rep.Verdict())
	}
	if e.fw.blocked != true {
		t.Fatal("unblocked")
	}
	// rollback: false leaves the update in place.
	e2 := newTestEnv(t)
	p2 := withPackages(t, e2)
	e2.cfg.Exit.Rollback = false
	afterPre(t, e2)
	e2.agent(t).Post(context.Background(), RunOptions{})
	e2.health.answers = []healthcheck.Result{unhealthy(503)}
	if rep := e2.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 1 || p2.restores() != 0 {
		t.Fatalf("rollback: false still restored (%d): %s", p2.restores(), rep.Verdict())
	}
}

func TestPostAfterAFailedPostTakesAFreshSnapshot(t *testing.T) {
	e := newTestEnv(t)
	p := withPackages(t, e)
	afterPre(t, e)
	p.updateErr = errors.New("npm error code ECONNREFUSED")
	if rep := e.agent(t).Post(context.Background(), RunOptions{}); rep.ExitCode != 1 {
		t.Fatal(rep.Text())
	}
	p.updateErr = nil
	e.ev.log = nil
	if rep := e.agent(t).Post(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"snapshot", "npm update"}, e.ev.all()); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
}
