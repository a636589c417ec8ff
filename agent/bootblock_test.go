package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// TestBootReblock: the smallest boot re-block (R3 and E2 of issue 13)
// decides from the state file and the kernel alone.
func TestBootReblock(t *testing.T) {
	for _, tt := range []struct {
		name      string
		state     string // the file's content; "" for none
		blocked   bool   // our block in the kernel before
		wantBlock bool   // Block called
		want      string // in the verdict, or in the error if wantErr
		wantErr   bool
	}{
		{name: "no state file", want: "no patch cycle open"},
		{name: "no cycle open", state: `{"version":1,"open":false}`, want: "no patch cycle open"},
		{name: "open, rules gone (a reboot)", state: `{"version":1,"open":true,"cycle_id":"c1","block":{"chain":"PATCHAGENT-BLOCK"}}`, wantBlock: true, want: "block re-applied: cycle c1 is open"},
		{name: "open, block in place", state: `{"version":1,"open":true,"cycle_id":"c1","block":{"chain":"PATCHAGENT-BLOCK"}}`, blocked: true, want: "block in place"},
		{name: "open, pre stopped before the block (at lb-out)", state: `{"version":1,"open":true,"cycle_id":"c1","step":"lb-out"}`, want: "cycle c1 is open but its pre stopped before the block"},
		{name: "corrupt, our chain present", state: `{"version":1,"open":tr`, blocked: true, want: "block of ours kept: state file unreadable"},
		{name: "newer version, our chain present", state: `{"version":99,"open":false}`, blocked: true, want: "block of ours kept: state file unreadable"},
		{name: "corrupt, nothing of ours", state: `{"open":`, wantErr: true, want: "whether a cycle is open is unknown"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			store := NewStateStore(dir)
			if tt.state != "" {
				if err := os.WriteFile(filepath.Join(dir, "state.json"), []byte(tt.state), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ev := &events{}
			fw := &fakeFirewall{ev: ev, state: store, blocked: tt.blocked}
			verdict, reblocked, err := bootReblockLocked(context.Background(), fw, dir, zaptest.NewLogger(t))
			if reblocked != tt.wantBlock {
				t.Errorf("reblocked = %v, want %v", reblocked, tt.wantBlock)
			}
			if tt.wantErr {
				if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrStateUnreadable) {
					t.Fatalf("bootReblock = %q, %v; want an error with %q", verdict, err, tt.want)
				}
			} else if err != nil || !strings.Contains(verdict, tt.want) {
				t.Fatalf("bootReblock = %q, %v; want %q", verdict, err, tt.want)
			}
			blocks := 0
			for _, e := range ev.all() {
				if strings.HasPrefix(e, "block") {
					blocks++
				}
			}
			if got := blocks > 0; got != tt.wantBlock || blocks > 1 {
				t.Errorf("Block called %d time(s), want %v", blocks, tt.wantBlock)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "state.json")); string(b) != tt.state {
				t.Errorf("the state file was written: %q", b)
			}
		})
	}
}

// TestBootReblockLeavesARunningPhaseItsBlock: a daemon that starts while a
// hook runs a phase in its own process (here an exit that has just
// unblocked, its cycle still open) blocks nothing: the phase holds the lock
// and owns the block. Free again, the lock is the boot re-block's.
func TestBootReblockLeavesARunningPhaseItsBlock(t *testing.T) {
	dir := t.TempDir()
	store := NewStateStore(dir)
	if err := store.Save(State{Open: true, CycleID: "c1", Block: &BlockRecord{Chain: "PATCHAGENT-BLOCK"}}); err != nil {
		t.Fatal(err)
	}
	release, err := NewPhaseLock(dir).Acquire(context.Background(), "exit", 0)
	if err != nil {
		t.Fatal(err)
	}
	ev := &events{}
	fw := &fakeFirewall{ev: ev, state: store}
	verdict, reblocked, err := bootReblockLocked(context.Background(), fw, dir, zaptest.NewLogger(t))
	if err != nil || reblocked || len(ev.all()) != 0 || !strings.Contains(verdict, "nothing done: another patchagent phase is running") || !strings.Contains(verdict, "running exit") {
		t.Fatalf("with the lock held: %q, reblocked %v, %v, events %q", verdict, reblocked, err, ev.all())
	}
	release()
	if verdict, reblocked, err := bootReblockLocked(context.Background(), fw, dir, zaptest.NewLogger(t)); err != nil || !reblocked {
		t.Fatalf("with the lock free: %q, reblocked %v, %v", verdict, reblocked, err)
	}
}
