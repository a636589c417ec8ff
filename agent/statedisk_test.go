package agent

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// readOnly makes every write of the state file fail as on a disk
// remounted read-only.
func readOnly(s *StateStore) {
	s.writeFile = func([]byte) error {
		return &os.PathError{Op: "open", Path: s.Path, Err: syscall.EROFS}
	}
}

// TestExitReturnsTheNodeWhenTheStateCannotBeWritten: the state disk went
// read-only after pre. exit still starts, checks and unblocks, says on its
// first line that the end of the cycle is not recorded, and the store
// answers the closed cycle from memory while the file still says open.
func TestExitReturnsTheNodeWhenTheStateCannotBeWritten(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	readOnly(e.state)
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if diff := cmp.Diff([]string{"start web", "unblock"}, e.ev.all()); diff != "" {
		t.Fatalf("side effects (-want +got):\n%s", diff)
	}
	v := rep.Verdict()
	if !strings.HasPrefix(v, "patchagent exit: ok in ") || !strings.Contains(v, "the end of the cycle was NOT recorded") || !strings.Contains(v, "read-only file system") {
		t.Fatalf("verdict %q", v)
	}
	if len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "exit goes on without it") {
		t.Fatalf("warnings %q", rep.Warnings)
	}
	if st, err := e.state.Load(); err != nil || st.Open || st.Status != StatusOK {
		t.Fatalf("store: %+v %v", st, err)
	}
	if e.state.Unrecorded() == nil {
		t.Fatal("the store does not say its state is unrecorded")
	}
	if disk, err := (&StateStore{Path: e.state.Path}).Load(); err != nil || !disk.Open {
		t.Fatalf("file: %+v %v", disk, err)
	}

	// The disk comes back: the next save writes the file and the store
	// forgets what it kept.
	e.state.writeFile = nil
	rep = e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || rep.Unrecorded != "" || e.state.Unrecorded() != nil {
		t.Fatal(rep.Text())
	}
	if disk, err := (&StateStore{Path: e.state.Path}).Load(); err != nil || disk.Open {
		t.Fatalf("file after the disk came back: %+v %v", disk, err)
	}
}

// TestPreRefusesWhenTheStateCannotBeWritten: pre must record its intent
// before blocking: it changes nothing, and keeps nothing in memory that
// would make the daemon think a cycle is open.
func TestPreRefusesWhenTheStateCannotBeWritten(t *testing.T) {
	e := newTestEnv(t)
	readOnly(e.state)
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode == 0 || !strings.Contains(rep.Error, "read-only file system") {
		t.Fatal(rep.Text())
	}
	if evs := e.ev.all(); len(evs) != 0 {
		t.Fatalf("pre acted without recording: %q", evs)
	}
	if st, _ := e.state.Load(); st.Open || e.state.Unrecorded() != nil {
		t.Fatalf("store after a refused pre: %+v", st)
	}
}

// TestReassertLeavesANodeExitReturnedUnrecorded: the daemon's watch
// re-applies the block of an open cycle (Reassert); a cycle exit closed on
// a read-only state disk is closed for it too (without Remember the
// file's open cycle would have the node re-blocked).
func TestReassertLeavesANodeExitReturnedUnrecorded(t *testing.T) {
	e := newTestEnv(t)
	afterPre(t, e)
	readOnly(e.state)
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 || rep.Unrecorded == "" {
		t.Fatal(rep.Text())
	}
	e.ev.log = nil
	if did, err := e.agent(t).Reassert(context.Background()); did || err != nil || e.fw.blocked || len(e.ev.all()) != 0 {
		t.Fatalf("re-blocked the node exit returned: %v %v, events %q", did, err, e.ev.all())
	}
}

// TestReassert: the block of an open cycle goes back when gone, counted;
// not while a phase holds the lock, not when in place, not with no cycle
// open.
func TestReassert(t *testing.T) {
	ctx := context.Background()
	e := newTestEnv(t)
	a := e.agent(t)
	reg := prometheus.NewRegistry()
	a.d.Metrics = NewMetrics(reg, "test")
	if did, err := a.Reassert(ctx); did || err != nil {
		t.Fatalf("no cycle open: re-applied %v, %v", did, err)
	}
	afterPre(t, e)
	if did, err := a.Reassert(ctx); did || err != nil || len(e.ev.all()) != 0 {
		t.Fatalf("block in place: re-applied %v, %v", did, err)
	}
	e.fw.blocked = false // iptables -F
	release, err := e.lock.Acquire(ctx, "pre", 0)
	if err != nil {
		t.Fatal(err)
	}
	if did, err := a.Reassert(ctx); did || err != nil || len(e.ev.all()) != 0 {
		t.Fatalf("a phase holds the lock: re-applied %v, %v, %q", did, err, e.ev.all())
	}
	release()
	if did, err := a.Reassert(ctx); !did || err != nil || !e.fw.blocked {
		t.Fatalf("gone: re-applied %v, %v", did, err)
	}
	if got := testutil.ToFloat64(a.d.Metrics.BlockReapplied); got != 1 {
		t.Fatalf("patchagent_block_reapplied_total %v", got)
	}
}
