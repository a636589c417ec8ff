package lb

import (
	"bufio"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeHAProxy answers the runtime API on a unix socket the way HAProxy 2.6
// does (one command per connection, the answer, then EOF), for a backend
// be with a server node whose state the commands change; sessions drain
// one per stats read.
type fakeHAProxy struct {
	mu       sync.Mutex
	state    string // UP, DRAIN
	sessions int
	cmds     []string
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
		f.state = "DRAIN"
		return "\n"
	case "set server be/node state ready":
		f.state = "UP"
		return "\n"
	case "show stat":
		if f.state == "DRAIN" && f.sessions > 0 {
			f.sessions--
		}
		return "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status\n" +
			"be,node,0,0," + strconv.Itoa(f.sessions) + ",5,,10,0,0,0,0,,0,0,0,0," + f.state + "\n" +
			"be,BACKEND,0,0,0,5,,10,0,0,0,0,,0,0,0,0,UP\n\n"
	}
	if strings.HasPrefix(cmd, "set server ") {
		return "No such server.\n\n"
	}
	return "Unknown command.\n\n"
}

func TestHAProxyDrainsThenReadies(t *testing.T) {
	f := &fakeHAProxy{state: "UP", sessions: 3}
	h := &HAProxy{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}
	w, err := h.TakeOut(context.Background(), 5*time.Second)
	if err != nil || w.By != "HAProxy be/node DRAIN, 0 session(s)" {
		t.Fatalf("take out: %+v %v", w, err)
	}
	if f.cmds[0] != "set server be/node state drain" || len(f.cmds) < 4 {
		t.Fatalf("commands %q: want the drain, then stats until the sessions are gone", f.cmds)
	}
	w, err = h.PutBack(context.Background(), 5*time.Second)
	if err != nil || w.By != "HAProxy be/node UP, 0 session(s)" {
		t.Fatalf("put back: %+v %v", w, err)
	}
}

func TestHAProxyErrorsSayWhat(t *testing.T) {
	f := &fakeHAProxy{state: "UP"}
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
	// Drained never: the deadline, with what HAProxy last said.
	f.mu.Lock()
	f.sessions = 9
	f.mu.Unlock()
	h = &HAProxy{Socket: sock, Backend: "be", Server: "node", Poll: 50 * time.Millisecond}
	if _, err := h.TakeOut(context.Background(), 200*time.Millisecond); !errors.Is(err, ErrNotConfirmed) || !strings.Contains(err.Error(), `"DRAIN"`) {
		t.Fatalf("not drained in time: %v", err)
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
