package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/patchagent/patchagent/firewall"
)

func TestStateStoreRoundTripAndMissing(t *testing.T) {
	s := NewStateStore(filepath.Join(t.TempDir(), "sub"))
	st, err := s.Load()
	if err != nil || st.Open || st.CycleID != "" {
		t.Fatalf("missing file: %+v, %v", st, err)
	}
	want := State{Version: StateVersion, CycleID: "c1", Open: true, BootID: "b", Phase: "pre", Step: "drain", Status: StatusRunning,
		Block:          &BlockRecord{Chain: "PATCHAGENT-BLOCK", Ports: []uint16{443}, Action: "reject", Families: []firewall.Family{firewall.IPv4}, BootID: "b", Since: time.Unix(10, 0).UTC()},
		CycleStartedAt: time.Unix(5, 0).UTC()}
	if err := s.Save(want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	fi, err := os.Stat(s.Path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode: %v %v", fi.Mode(), err)
	}
	ents, _ := os.ReadDir(filepath.Dir(s.Path))
	if len(ents) != 1 {
		t.Fatalf("temp files left behind: %v", ents)
	}
}

func TestStateStoreCorruptFileIsKept(t *testing.T) {
	s := NewStateStore(t.TempDir())
	if err := os.WriteFile(s.Path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), "left as it is") {
		t.Fatalf("corrupt state: %v", err)
	}
	b, _ := os.ReadFile(s.Path)
	if string(b) != "{not json" {
		t.Fatal("corrupt state file was changed")
	}
}

func TestStateStoreFailedSaveKeepsPrevious(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores directory permissions; use a path under a file instead.
		s := &StateStore{Path: filepath.Join(t.TempDir(), "file", "state.json")}
		if err := os.WriteFile(filepath.Dir(s.Path), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := s.Save(State{Open: true}); err == nil {
			t.Fatal("save under a regular file succeeded")
		}
		return
	}
	dir := t.TempDir()
	s := NewStateStore(dir)
	if err := s.Save(State{CycleID: "old"}); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o500)
	t.Cleanup(func() { os.Chmod(dir, 0o700) })
	if err := s.Save(State{CycleID: "new"}); err == nil {
		t.Fatal("save in read-only dir succeeded")
	}
	got, _ := s.Load()
	if got.CycleID != "old" {
		t.Fatalf("previous state lost: %+v", got)
	}
}

// TestStateStoreSaveNeverWritesInPlace checks, as any user, that Save
// replaces the file rather than rewriting it: a reader holding the old file
// (a link to it here) still sees the whole previous state, and no temporary
// file is left.
func TestStateStoreSaveNeverWritesInPlace(t *testing.T) {
	dir := t.TempDir()
	s := NewStateStore(dir)
	if err := s.Save(State{CycleID: "old"}); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(t.TempDir(), "old.json")
	if err := os.Link(s.Path, keep); err != nil {
		t.Fatal(err)
	}
	if err := s.Save(State{CycleID: "new", Open: true}); err != nil {
		t.Fatal(err)
	}
	old, err := (&StateStore{Path: keep}).Load()
	if err != nil || old.CycleID != "old" || old.Open {
		t.Fatalf("the previous file now reads %+v, %v; want the old state", old, err)
	}
	if got, err := s.Load(); err != nil || got.CycleID != "new" || !got.Open {
		t.Fatalf("Load = %+v, %v; want the new state", got, err)
	}
	if tmp, _ := filepath.Glob(filepath.Join(filepath.Dir(s.Path), ".state-*")); len(tmp) != 0 {
		t.Fatalf("temporary files left: %v", tmp)
	}
}

func TestPhaseLockExcludesAndNamesHolder(t *testing.T) {
	l := NewPhaseLock(t.TempDir())
	release, err := l.Acquire(context.Background(), "pre", 0)
	if err != nil {
		t.Fatal(err)
	}
	// flock locks belong to the open file description: a second open conflicts
	// even in the same process, as a second CLI would.
	start := time.Now()
	_, err = l.Acquire(context.Background(), "exit", 150*time.Millisecond)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "running pre") {
		t.Fatalf("second acquire: %v", err)
	}
	if time.Since(start) < 150*time.Millisecond {
		t.Fatal("did not wait for the lock")
	}
	release()
	release2, err := l.Acquire(context.Background(), "exit", 0)
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	release2()
}

func TestReadBootID(t *testing.T) {
	p := filepath.Join(t.TempDir(), "boot_id")
	os.WriteFile(p, []byte("abc-123\n"), 0o600)
	if id, err := ReadBootID(p); err != nil || id != "abc-123" {
		t.Fatalf("%q %v", id, err)
	}
	if _, err := ReadBootID(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Fatal("missing boot id file accepted")
	}
	if id, err := ReadBootID(BootIDFile); err != nil || len(id) < 32 {
		t.Fatalf("real boot id: %q %v", id, err)
	}
}
