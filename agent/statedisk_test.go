package agent

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
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

// TestDaemonDoesNotReblockANodeExitReturnedUnrecorded: the daemon's watch
// re-applies the block of an open cycle; a cycle exit closed on a
// read-only state disk is closed for it too (without Remember the file's
// open cycle has the node re-blocked within a tick).
func TestDaemonDoesNotReblockANodeExitReturnedUnrecorded(t *testing.T) {
	r := newDaemonRig(t)
	openCycle(t, r.e, "boot-1", time.Now())
	r.fw.set(true)
	r.start(t)
	eventually(t, "READY=1", func() bool { return r.n.count("READY=1") == 1 })
	readOnly(r.e.state)
	if rep := r.a.Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 || rep.Unrecorded == "" {
		t.Fatal(rep.Text())
	}
	time.Sleep(20 * r.o.Tick)
	if b, n := r.fw.get(); b || n != 0 {
		t.Fatalf("the daemon re-blocked the node exit returned (blocked %v, %d re-blocks)", b, n)
	}
}
