//go:build integration

package lb

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// realHAProxy runs the installed haproxy in the foreground on a config of
// the test's own: its admin socket, its frontend and its servers are unix
// sockets in a temporary directory, and the agent-check's agent listens on
// an ephemeral loopback port; it creates nothing else and is killed, by
// its pid, when t ends. The app behind every server answers 200 at once,
// and holds /slow until hold is closed.
func realHAProxy(t *testing.T, hold chan struct{}) (dir string) {
	t.Helper()
	bin, err := exec.LookPath("haproxy")
	if err != nil {
		t.Skip("haproxy is not installed")
	}
	dir, err = os.MkdirTemp("", "pa-hapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	app, err := net.Listen("unix", filepath.Join(dir, "app.sock"))
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-hold
		}
	})}
	go srv.Serve(app)
	t.Cleanup(func() { srv.Close() })
	agent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	go func() {
		for {
			c, err := agent.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("up\n")) // health only: "ready" would undo a drain
			c.Close()
		}
	}()
	agentCheck := fmt.Sprintf("agent-check agent-addr 127.0.0.1 agent-port %d agent-inter 100ms", agent.Addr().(*net.TCPAddr).Port)
	appSock := "unix@" + filepath.Join(dir, "app.sock")
	cfg := fmt.Sprintf(`global
	stats socket %[1]s/admin.sock mode 600 level admin
defaults
	mode http
	timeout connect 2s
	timeout client 30s
	timeout server 30s
frontend fe
	bind unix@%[1]s/fe.sock
	default_backend long
backend long
	server node %[2]s check inter 100ms
backend be
	option httpchk GET /health
	server checked %[2]s check inter 100ms rise 2 fall 2
	server nocheck %[2]s
	server agent %[2]s %[3]s
	server both %[2]s check inter 100ms %[3]s
	server dead unix@%[1]s/none.sock check inter 100ms rise 2 fall 2
	server off %[2]s check inter 100ms disabled
`, dir, appSock, agentCheck)
	if err := os.WriteFile(filepath.Join(dir, "haproxy.cfg"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "haproxy.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "-db", "-f", filepath.Join(dir, "haproxy.cfg"))
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, s := range []string{"checked", "nocheck", "agent", "both"} {
		h := &HAProxy{Socket: filepath.Join(dir, "admin.sock"), Backend: "be", Server: s}
		if err := Poll(ctx, 50*time.Millisecond, func() (bool, error) {
			st, err := h.Stat(ctx)
			return err == nil && InRotation(st.Status), nil
		}); err != nil {
			b, _ := os.ReadFile(filepath.Join(dir, "haproxy.log"))
			t.Fatalf("be/%s never in rotation: %v\n%s", s, err, b)
		}
	}
	return dir
}

// TestRealHAProxyTakesEveryKindOfServerOutAndBack: the statuses the
// installed HAProxy reports for a server with a check, without one, with
// an agent-check and with both, drained and ready again; lb-out and lb-in
// confirm each. Before, a server without check ("no check") never passed
// lb-in and one with an agent-check ("DRAIN (agent)") never passed lb-out.
func TestRealHAProxyTakesEveryKindOfServerOutAndBack(t *testing.T) {
	dir := realHAProxy(t, make(chan struct{}))
	for _, tt := range []struct{ server, out, in string }{
		{"checked", "DRAIN", "UP"},
		{"nocheck", "DRAIN", "no check"},
		{"agent", "DRAIN (agent)", "no check"},
		{"both", "DRAIN (agent)", "UP"},
	} {
		t.Run(tt.server, func(t *testing.T) {
			h := &HAProxy{Socket: filepath.Join(dir, "admin.sock"), Backend: "be", Server: tt.server, Poll: 20 * time.Millisecond}
			w, err := h.TakeOut(context.Background(), 5*time.Second)
			if err != nil || w.By != "HAProxy be/"+tt.server+" "+tt.out+", 0 session(s)" {
				t.Fatalf("take out: %+v %v", w, err)
			}
			w, err = h.PutBack(context.Background(), 5*time.Second)
			if err != nil || w.By != "HAProxy be/"+tt.server+" "+tt.in+", 0 session(s)" {
				t.Fatalf("put back: %+v %v", w, err)
			}
		})
	}
	// A drained server whose checks fail is never in rotation once
	// ready: never confirmed. (One leaving maintenance, "UP 1/2" until its
	// first check, is the unit test's: PutBack leaves a maint alone.)
	h := &HAProxy{Socket: filepath.Join(dir, "admin.sock"), Backend: "be", Server: "dead", Poll: 5 * time.Millisecond}
	if err := h.setState(context.Background(), "drain"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.PutBack(context.Background(), time.Second); !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), `still "DOWN"`) {
		t.Fatalf("a dead server readied: %v", err)
	}
}

// TestRealHAProxyLeavesAnOperatorsStateAlone: a server an operator set to
// maint or drain through the runtime API, or that the config file starts
// disabled, is recorded so from the installed HAProxy's `show servers
// state` and stays so through TakeOut, PutBack and SetOut(false), each
// reporting it in no rotation; once the operator sets it ready, the next
// record drains and readies it. Before, every put back (and the boot's
// SetOut) set it ready.
func TestRealHAProxyLeavesAnOperatorsStateAlone(t *testing.T) {
	dir := realHAProxy(t, make(chan struct{}))
	sock := filepath.Join(dir, "admin.sock")
	ctx := context.Background()
	for _, tt := range []struct{ server, set, admin, status string }{
		{"checked", "maint", AdminMaint, "MAINT"},
		{"checked", "drain", AdminDrain, "DRAIN"},
		{"off", "", AdminMaint, "MAINT"},
		{"checked", "ready", AdminReady, "UP"},
	} {
		t.Run(tt.server+" "+cmp.Or(tt.set, "from the config"), func(t *testing.T) {
			operator := &HAProxy{Socket: sock, Backend: "be", Server: tt.server}
			if tt.set != "" {
				if err := operator.setState(ctx, tt.set); err != nil {
					t.Fatal(err)
				}
			}
			h := &HAProxy{Socket: sock, Backend: "be", Server: tt.server, Poll: 20 * time.Millisecond}
			rec, err := HAProxies{h}.Record(ctx, nil)
			if err != nil || decodeRecord(t, rec) != (HAProxyRecord{Socket: sock, Server: "be/" + tt.server, Admin: tt.admin}) {
				t.Fatalf("record %s %v", rec, err)
			}
			if err := (HAProxies{h}).Restore(rec); err != nil {
				t.Fatal(err)
			}
			out, err := h.TakeOut(ctx, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if tt.admin == AdminReady {
				if out.NotIn || !strings.HasPrefix(out.By, "HAProxy be/checked DRAIN") {
					t.Fatalf("take out of a ready server: %+v", out)
				}
			}
			in, err := h.PutBack(ctx, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			h.SetOut(false)
			st, err := h.Stat(ctx)
			if word, _, _ := strings.Cut(st.Status, " "); err != nil || word != tt.status { // "DRAIN 1/2": out of maint, checks not passed yet
				t.Fatalf("status %q (%v), want %q", st.Status, err, tt.status)
			}
			if a, err := h.admin(ctx); err != nil || a != tt.admin {
				t.Fatalf("admin %q (%v) after the cycle, want %q", a, err, tt.admin)
			}
			if tt.admin != AdminReady && (!out.NotIn || !in.NotIn) {
				t.Fatalf("out %+v, in %+v: want both in no rotation", out, in)
			}
		})
	}
	// Ready at pre, drained by TakeOut, then the operator steps in: the
	// put back leaves the maint.
	h := &HAProxy{Socket: sock, Backend: "be", Server: "checked", Poll: 20 * time.Millisecond}
	if err := (HAProxies{h}).Restore(json.RawMessage(`{"haproxy_server":"be/checked","admin":"ready"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.TakeOut(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h.setState(ctx, "maint"); err != nil {
		t.Fatal(err)
	}
	if w, err := h.PutBack(ctx, 5*time.Second); err != nil || !w.NotIn {
		t.Fatalf("put back after the operator's maint: %+v %v", w, err)
	}
	if st, err := h.Stat(ctx); err != nil || st.Status != "MAINT" {
		t.Fatalf("status %q (%v), want MAINT", st.Status, err)
	}
}

// TestRealHAProxyTakeOutLeavesSessionsToTheDrain: a request in flight
// (a long download, a WebSocket) holds a session past lb.deadline: lb-out
// is confirmed once HAProxy has the server drained, saying how many
// sessions the agent's drain then waits for; the request completes.
// Before, pre failed here, the node drained and not patched.
func TestRealHAProxyTakeOutLeavesSessionsToTheDrain(t *testing.T) {
	hold := make(chan struct{})
	dir := realHAProxy(t, hold)
	c, err := net.Dial("unix", filepath.Join(dir, "fe.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	h := &HAProxy{Socket: filepath.Join(dir, "admin.sock"), Backend: "long", Server: "node", Poll: 20 * time.Millisecond}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := Poll(ctx, 20*time.Millisecond, func() (bool, error) {
		st, err := h.Stat(ctx)
		return err == nil && st.Sessions == 1, nil
	}); err != nil {
		t.Fatal("the request never reached the server")
	}
	w, err := h.TakeOut(context.Background(), 500*time.Millisecond)
	if err != nil || w.By != "HAProxy long/node DRAIN, 1 session(s)" {
		t.Fatalf("take out with a session in flight: %+v %v", w, err)
	}
	close(hold)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := bufio.NewReader(c).ReadString('\n'); err != nil || !strings.HasPrefix(line, "HTTP/1.1 200") {
		t.Fatalf("the request in flight: %q %v", line, err)
	}
	if _, err := h.PutBack(context.Background(), 5*time.Second); err != nil {
		t.Fatal(err)
	}
}
