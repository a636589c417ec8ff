package agent

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

// TestStatusSaysWhatItCouldNotRead: a status that cannot read the block
// (not root, iptables failing) or the state file reads the rest, says what
// it could not read on its first line and never claims the node in
// service.
func TestStatusSaysWhatItCouldNotRead(t *testing.T) {
	tests := []struct {
		name        string
		open        bool // a cycle open in the state file
		notRoot     bool
		fwErr       error
		badState    bool
		wantVerdict string
	}{
		{name: "not root, no cycle", notRoot: true,
			wantVerdict: "patchagent status: block state unknown: needs root; no patch cycle open\n"},
		{name: "not root, cycle open", notRoot: true, open: true,
			wantVerdict: "patchagent status: block state unknown: needs root; patch cycle c1 open (last: pre ok at step done)\n"},
		{name: "iptables failing", fwErr: errBoom,
			wantVerdict: "patchagent status: block state unknown: boom; no patch cycle open\n"},
		{name: "state unreadable", badState: true,
			wantVerdict: "patchagent status: patch cycle unknown: state file unreadable: parsing state "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			if tt.open {
				if err := e.state.Save(State{CycleID: "c1", Open: true, Phase: "pre", Status: StatusOK, Step: "done"}); err != nil {
					t.Fatal(err)
				}
			}
			if tt.badState {
				if err := os.WriteFile(e.state.Path, []byte("{"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			a := e.agent(t)
			switch {
			case tt.notRoot:
				a.d.Firewall = unreadableFirewall{err: ErrNeedsRoot}
			case tt.fwErr != nil:
				a.d.Firewall = unreadableFirewall{err: tt.fwErr}
			}
			s := a.Status(context.Background())
			text := s.Text()
			if !strings.HasPrefix(text, tt.wantVerdict) || strings.Contains(text, "in service") {
				t.Fatalf("verdict, want %q:\n%s", tt.wantVerdict, text)
			}
			if s.Service != ServiceUnknown || s.Consistent {
				t.Fatalf("service %q, consistent %v; want unknown, false", s.Service, s.Consistent)
			}
			// What it could read, it did: the app through pm2.
			if s.App.Error != "" || len(s.App.Instances) != 1 {
				t.Fatalf("app not read: %+v", s.App)
			}
		})
	}
}

// TestBuildStatusWithoutPM2: no pm2 and not root, status still reads the
// state file and the load balancer's record, and says it could read
// neither pm2 nor the block.
func TestBuildStatusWithoutPM2(t *testing.T) {
	cfg := DefaultConfig()
	cfg.App.Name, cfg.App.PM2 = "web", "/nonexistent/bin/pm2"
	cfg.Daemon.StateDir = t.TempDir()
	cfg.LB.HealthListen = "127.0.0.1:8081"
	rec := json.RawMessage(`["web i-1:8080"]`)
	if err := NewStateStore(cfg.Daemon.StateDir).Save(State{CycleID: "c1", Open: true, Phase: "pre", Status: StatusOK, Step: "done", LB: rec}); err != nil {
		t.Fatal(err)
	}
	s := BuildStatus(cfg, zaptest.NewLogger(t), false).Status(context.Background())
	text := s.Text()
	for _, want := range []string{
		"patchagent status: block state unknown: needs root; patch cycle c1 open (last: pre ok at step done)\n",
		"  block:  kernel unknown, error: needs root\n",
		"  app:    web (pm2 of root): app.pm2: ",
		"  lb:     readiness endpoint 127.0.0.1:8081/",
		`to put back: ["web i-1:8080"]`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("lacks %q:\n%s", want, text)
		}
	}
	if s.Service != ServiceUnknown || s.StateError != "" || !s.Cycle.Open {
		t.Errorf("service %q, state error %q, open %v", s.Service, s.StateError, s.Cycle.Open)
	}
}
