package lb

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeHAProxy answers the runtime API on a unix socket the way HAProxy 2.6
// does (one command per connection, the answer, then EOF), for a backend
// be with a server node whose status the commands change: after `state
// drain` (`state ready`) the stats reads report drained (ready) in turn,
// the last one from then on (default DRAIN, UP).
type fakeHAProxy struct {
	mu             sync.Mutex
	status         string
	drained, ready []string
	next           []string // what the next stats reads report
	sessions       int
	admin          string // srv_admin_state in `show servers state be` (default 0)
	cmds           []string
}

func (f *fakeHAProxy) serve(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-hap")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "admin.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Write([]byte(f.answer(strings.TrimSpace(line))))
			c.Close()
		}
	}()
	return path
}

func (f *fakeHAProxy) answer(cmd string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cmds = append(f.cmds, cmd)
	switch cmd {
	case "set server be/node state drain":
		f.next = append([]string{}, f.drained...)
		if len(f.next) == 0 {
			f.next = []string{"DRAIN"}
		}
		return "\n"
	case "set server be/node state ready":
		f.next = append([]string{}, f.ready...)
		if len(f.next) == 0 {
			f.next = []string{"UP"}
		}
		return "\n"
	case "show servers state be":
		// HAProxy 2.6.12's answer, its columns cut after srv_admin_state.
		return "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n" +
			"2 be 1 other 10.0.0.9 2 0\n" +
			"2 be 2 node 10.0.0.2 2 " + cmp.Or(f.admin, "0") + "\n\n"
	case "show servers state nosuch":
		return "Can't find backend.\n\n"
	case "show stat":
		if len(f.next) > 0 {
			f.status = f.next[0]
			if len(f.next) > 1 {
				f.next = f.next[1:]
			}
		}
		return "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n" +
			"be,node,0,0," + strconv.Itoa(f.sessions) + ",5,,10,0,0,0,0,,0,0,0,0," + f.status + "\n" +
			"be,BACKEND,0,0,0,5,,10,0,0,0,0,,0,0,0,0,UP\n\n"
	}
	if strings.HasPrefix(cmd, "set server ") {
		return "No such server.\n\n"
	}
	return "Unknown command.\n\n"
}

// TestHAProxyDrainsThenReadies: lb-out is done once HAProxy reports the
// server drained, its sessions left to the agent's drain (a long download
// no longer fails pre at lb.deadline); lb-in once it reports it UP.
func TestHAProxyDrainsThenReadies(t *testing.T) {
	f := &fakeHAProxy{status: "UP", sessions: 3}
	h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
	w, err := h.TakeOut(context.Background(), 5*time.Second)
	if err != nil || w.By != "HAProxy be/node DRAIN, 3 session(s)" {
		t.Fatalf("take out: %+v %v", w, err)
	}
	f.mu.Lock()
	cmds := slices.Clone(f.cmds)
	f.sessions = 0
	f.mu.Unlock()
	if want := []string{"set server be/node state drain", "show stat"}; !slices.Equal(cmds, want) {
		t.Fatalf("commands %q, want %q: the drain, then the stats until they say drained", cmds, want)
	}
	w, err = h.PutBack(context.Background(), 5*time.Second)
	if err != nil || w.By != "HAProxy be/node UP, 0 session(s)" {
		t.Fatalf("put back: %+v %v", w, err)
	}
}

// TestHAProxyLeavesWhatItDidNotSet: Record reads the admin state pre
// found (`show servers state`): a server an operator had set to maint or
// drain is left so by TakeOut, PutBack and SetOut (no `set server` sent),
// each in no rotation; one found ready, or in a state of HAProxy's own
// (inherited from a tracked server, the config's "disabled" cleared), is
// drained and readied as before.
func TestHAProxyLeavesWhatItDidNotSet(t *testing.T) {
	for _, tt := range []struct{ flags, admin string }{
		{"0", AdminReady}, {"1", AdminMaint}, {"5", AdminMaint}, {"8", AdminDrain}, {"12", AdminDrain},
		{"2", AdminReady}, {"4", AdminReady}, {"16", AdminReady},
	} {
		t.Run(tt.flags, func(t *testing.T) {
			f := &fakeHAProxy{status: "UP", admin: tt.flags}
			h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
			rec, err := HAProxies{h}.Record(context.Background(), nil)
			if want := (HAProxyRecord{Socket: h.Socket, Server: "be/node", Admin: tt.admin}); err != nil || decodeRecord(t, rec) != want {
				t.Fatalf("record %s %v, want %+v", rec, err, want)
			}
			if err := (HAProxies{h}).Restore(rec); err != nil {
				t.Fatal(err)
			}
			out, err := h.TakeOut(context.Background(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			in, err := h.PutBack(context.Background(), time.Second)
			if err != nil {
				t.Fatal(err)
			}
			h.SetOut(false)
			h.SetOut(true)
			f.mu.Lock()
			cmds := slices.Clone(f.cmds)
			f.mu.Unlock()
			set := slices.DeleteFunc(cmds, func(c string) bool { return !strings.HasPrefix(c, "set server") })
			if tt.admin == AdminReady {
				if out.NotIn || in.NotIn || !slices.Equal(set, []string{"set server be/node state drain", "set server be/node state ready", "set server be/node state ready", "set server be/node state drain"}) {
					t.Fatalf("out %+v, in %+v, commands %q", out, in, set)
				}
				return
			}
			want := "HAProxy be/node was set to " + tt.admin + " before pre: left so"
			if !out.NotIn || out.By != want || !in.NotIn || in.By != want || len(set) != 0 {
				t.Fatalf("out %+v, in %+v, commands %q: want it left alone", out, in, set)
			}
		})
	}
}

// TestHAProxyLeavesAMaintSetDuringTheCycle: the server was ready at pre,
// drained by TakeOut, then an operator set it to maint: PutBack leaves it
// so (no `state ready`), in no rotation.
func TestHAProxyLeavesAMaintSetDuringTheCycle(t *testing.T) {
	f := &fakeHAProxy{status: "UP"}
	h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
	if err := (HAProxies{h}).Restore(json.RawMessage(`{"haproxy_server":"be/node","admin":"ready"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.TakeOut(context.Background(), time.Second); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.admin, f.status = "1", "MAINT"
	f.mu.Unlock()
	w, err := h.PutBack(context.Background(), time.Second)
	if err != nil || !w.NotIn || w.By != "HAProxy be/node was set to maint during the cycle: left so" {
		t.Fatalf("put back: %+v %v", w, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if slices.Contains(f.cmds, "set server be/node state ready") {
		t.Fatalf("commands %q: the operator's maint was undone", f.cmds)
	}
}

// decodeRecord reads a one-server HAProxies record.
func decodeRecord(t *testing.T, b json.RawMessage) HAProxyRecord {
	t.Helper()
	var rs []HAProxyRecord
	if err := json.Unmarshal(b, &rs); err != nil || len(rs) != 1 {
		t.Fatalf("record %s: %v, want one entry", b, err)
	}
	return rs[0]
}

// TestHAProxyRecordCarriesWhatItFound: a record the last cycle could not
// put back stands for its server (the server is drained by us since);
// one of another server, or at another runtime API, is neither taken nor
// restored (the server is drained as by an earlier version); a record
// that says no admin state of ours, or is no HAProxy record, is refused.
func TestHAProxyRecordCarriesWhatItFound(t *testing.T) {
	f := &fakeHAProxy{status: "DRAIN", admin: "8"}
	h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
	hs := HAProxies{h}
	carried := HAProxyRecord{Server: "be/node", Admin: AdminReady}
	if rec, err := hs.Record(context.Background(), json.RawMessage(`{"haproxy_server":"be/node","admin":"ready"}`)); err != nil || decodeRecord(t, rec) != carried {
		t.Fatalf("record %s %v, want the carried one", rec, err)
	}
	other := json.RawMessage(`{"haproxy_server":"be/web2","admin":"maint"}`)
	if rec, err := hs.Record(context.Background(), other); err != nil || decodeRecord(t, rec) != (HAProxyRecord{Socket: h.Socket, Server: "be/node", Admin: AdminDrain}) {
		t.Fatalf("record %s %v, want this server's own", rec, err)
	}
	for _, notOurs := range []string{string(other), `{"socket":"/run/other.sock","haproxy_server":"be/node","admin":"maint"}`} {
		if err := hs.Restore(json.RawMessage(notOurs)); err != nil {
			t.Fatal(err)
		}
		if w, err := hs.TakeOut(context.Background(), time.Second); err != nil || w.NotIn {
			t.Errorf("%s applied to be/node at %s: %+v %v", notOurs, h.Socket, w, err)
		}
	}
	for _, bad := range []string{`{"haproxy_server":"be/node","admin":"up"}`, `["web i-1:80"]`} {
		if err := hs.Restore(json.RawMessage(bad)); err == nil {
			t.Errorf("restored %s", bad)
		}
	}
	for _, tt := range []struct{ backend, server, want string }{
		{"nosuch", "node", "HAProxy `show servers state nosuch`: Can't find backend."},
		{"be", "gone", "HAProxy has no server be/gone"},
	} {
		h := &HAProxy{Socket: h.Socket, Backend: tt.backend, Server: tt.server}
		if _, err := (HAProxies{h}).Record(context.Background(), nil); err == nil || err.Error() != tt.want {
			t.Errorf("%s/%s: %v, want %q", tt.backend, tt.server, err, tt.want)
		}
	}
}

// TestHAProxyStatuses: lb-out accepts every status in which HAProxy sends
// the server no new session, lb-in only a server in rotation that no check
// contradicts, whatever the server's checks: a server without check is
// "no check" (never UP), one with an agent-check drains as "DRAIN
// (agent)"; transitional statuses are waited through.
func TestHAProxyStatuses(t *testing.T) {
	for _, tt := range []struct {
		name           string
		drained, ready []string
		out, in        string // the status each wait ends on; "" for not confirmed
	}{
		{name: "checked", out: "DRAIN", in: "UP"},
		{name: "no check", drained: []string{"DRAIN"}, ready: []string{"no check"}, out: "DRAIN", in: "no check"},
		{name: "agent-check", drained: []string{"DRAIN (agent)"}, ready: []string{"UP"}, out: "DRAIN (agent)", in: "UP"},
		{name: "agent-check only", drained: []string{"DRAIN (agent)"}, ready: []string{"no check"}, out: "DRAIN (agent)", in: "no check"},
		{name: "failing checks", drained: []string{"DRAIN 1/3"}, ready: []string{"DOWN", "DOWN 1/2", "UP"}, out: "DRAIN 1/3", in: "UP"},
		{name: "down already", drained: []string{"DOWN"}, ready: []string{"DOWN 1/2", "UP 1/2", "UP"}, out: "DOWN", in: "UP"},
		{name: "stats not changed yet", drained: []string{"UP", "MAINT (via be/other)"}, ready: []string{"MAINT (via be/other)", "UP"}, out: "MAINT (via be/other)", in: "UP"},
		{name: "soft-stopping", drained: []string{"NOLB"}, out: "NOLB", in: "UP"},
		{name: "drain undone (an agent answering ready)", drained: []string{"UP"}, out: "", in: "UP"},
		{name: "out of maintenance, no check passed yet", ready: []string{"UP 1/2"}, out: "DRAIN", in: ""},
		{name: "an agent still answering drain", ready: []string{"DRAIN (agent)"}, out: "DRAIN", in: ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeHAProxy{status: "UP", drained: tt.drained, ready: tt.ready, sessions: 1}
			h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
			for _, step := range []struct {
				do   func(context.Context, time.Duration) (Wait, error)
				want string
			}{{h.TakeOut, tt.out}, {h.PutBack, tt.in}} {
				w, err := step.do(context.Background(), 100*time.Millisecond)
				switch {
				case step.want == "" && !errors.Is(err, ErrNotConfirmed):
					t.Fatalf("confirmed %+v (%v), want not confirmed", w, err)
				case step.want != "" && (err != nil || w.By != "HAProxy be/node "+step.want+", 1 session(s)"):
					t.Fatalf("%+v %v, want %q", w, err, step.want)
				}
			}
		})
	}
}

func TestHAProxyErrorsSayWhat(t *testing.T) {
	f := &fakeHAProxy{status: "UP", drained: []string{"UP"}}
	sock := f.serve(t)
	// No such server: HAProxy's own words.
	h := &HAProxy{Socket: sock, Backend: "be", Server: "other"}
	if _, err := h.TakeOut(context.Background(), time.Second); err == nil || !strings.Contains(err.Error(), "HAProxy refused `set server be/other state drain`: No such server.") {
		t.Fatalf("wrong server: %v", err)
	}
	// No socket at all.
	h = &HAProxy{Socket: filepath.Join(t.TempDir(), "none.sock"), Backend: "be", Server: "node"}
	if _, err := h.TakeOut(context.Background(), time.Second); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent socket: %v", err)
	}
	// A socket nobody listens on (HAProxy stopped, its file left).
	dir, _ := os.MkdirTemp("", "pa-hap")
	defer os.RemoveAll(dir)
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	h = &HAProxy{Socket: stale, Backend: "be", Server: "node"}
	if _, err := h.TakeOut(context.Background(), time.Second); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("refusing socket: %v", err)
	}
	// Never out: the deadline, with what HAProxy last said.
	f.mu.Lock()
	f.sessions = 9
	f.mu.Unlock()
	h = &HAProxy{Socket: sock, Backend: "be", Server: "node", Poll: 50 * time.Millisecond}
	if _, err := h.TakeOut(context.Background(), 200*time.Millisecond); !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), `still "UP" with 9 session(s)`) {
		t.Fatalf("not out in time: %v", err)
	}
}

// TestHAProxyStatusWords: every status HAProxy 2.x's stats write for a
// server (src/stats.c), out or in rotation or neither.
func TestHAProxyStatusWords(t *testing.T) {
	for _, tt := range []struct {
		status  string
		out, in bool
	}{
		{"UP", false, true},
		{"no check", false, true},
		{"UP 1/3", false, false},
		{"DOWN 1/2", true, false},
		{"DOWN", true, false},
		{"DOWN (agent)", true, false},
		{"NOLB", true, false},
		{"NOLB 2/3", true, false},
		{"DRAIN", true, false},
		{"DRAIN 1/3", true, false},
		{"DRAIN (agent)", true, false},
		{"MAINT", true, false},
		{"MAINT (via be/other)", true, false},
		{"MAINT (resolution)", true, false},
		{"", false, false},
		{"READY", false, false}, // not HAProxy's: neither
	} {
		if Out(tt.status) != tt.out || InRotation(tt.status) != tt.in {
			t.Errorf("%q: out %v, in rotation %v; want %v, %v", tt.status, Out(tt.status), InRotation(tt.status), tt.out, tt.in)
		}
	}
}

// TestHAProxyBackendStats: one `show stat` gives every server of the
// backend, not its BACKEND line, not another backend's servers.
func TestHAProxyBackendStats(t *testing.T) {
	dir, err := os.MkdirTemp("", "pa-hap")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("unix", filepath.Join(dir, "admin.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("# pxname,svname,scur,status\nfe,FRONTEND,3,OPEN\nbe,n0,2,UP\nbe,n1,0,DRAIN\nbe,n2,1,UP 1/2\nbe,BACKEND,3,UP\nother,n0,0,DOWN\n\n"))
			c.Close()
		}
	}()
	h := &HAProxy{Socket: filepath.Join(dir, "admin.sock"), Backend: "be"}
	all, err := h.BackendStats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]ServerStat{"n0": {"UP", 2}, "n1": {"DRAIN", 0}, "n2": {"UP 1/2", 1}}
	if len(all) != len(want) {
		t.Fatalf("got %v, want %v", all, want)
	}
	for k, v := range want {
		if all[k] != v {
			t.Fatalf("%s: got %+v, want %+v", k, all[k], v)
		}
	}
	h.Server = "n9"
	if _, err := h.Stat(context.Background()); err == nil || !strings.Contains(err.Error(), "HAProxy has no server be/n9") {
		t.Fatalf("absent server: %v", err)
	}
}
