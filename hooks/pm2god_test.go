package hooks_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchagent/patchagent/hooks"
)

// god is a fake pm2 daemon: a PM2_HOME whose pm2.pid names this test process
// and whose rpc.sock answers pm2's RPCs the way pm2 7's God does, from a
// list of instances it keeps up to date.
type god struct {
	home string

	mu    sync.Mutex
	procs []inst
	calls []string // "method args-JSON"
	// onStop runs in stopProcessId before the instance is marked stopped
	// (pm2 kills it there).
	onStop func(in inst)
	// stopLeaves, when set, makes stopProcessId leave the instance as it is.
	stopLeaves bool
	// delay holds every answer back this long (see slow).
	delay time.Duration
	// reply overrides the answer to a method: its result is sent as the
	// reply's JSON body ({"args":[...]} or {"error":...}); a []byte result
	// is sent as the whole first frame argument; errHang never replies;
	// errClose closes the connection.
	reply map[string]func(args []json.RawMessage) any
}

var (
	errHang  = errors.New("never reply")
	errClose = errors.New("close the connection")
)

// newGod starts a fake daemon with instances procs.
func newGod(t *testing.T, procs ...inst) *god {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-pm2-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	writePid(t, dir, os.Getpid())
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "rpc.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	appUsersSocket(t, filepath.Join(dir, "rpc.sock"))
	g := &god{home: dir, procs: procs, reply: map[string]func([]json.RawMessage) any{}}
	done := make(chan struct{})
	var wg sync.WaitGroup
	t.Cleanup(func() { close(done); ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); g.serve(c, done) }()
		}
	}()
	return g
}

func (g *god) serve(c net.Conn, done <-chan struct{}) {
	defer c.Close()
	go func() { <-done; c.Close() }()
	r := bufio.NewReader(c)
	for {
		msg, err := hooks.ReadAMP(r)
		if err != nil || len(msg) != 2 || !strings.HasPrefix(string(msg[0]), "j:") {
			return
		}
		var req struct {
			Type, Method string
			Args         []json.RawMessage
		}
		if json.Unmarshal(msg[0][2:], &req) != nil || req.Type != "call" {
			return
		}
		g.mu.Lock()
		delay := g.delay
		g.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-done:
			return
		}
		out := g.handle(req.Method, req.Args)
		var body []byte
		switch o := out.(type) {
		case error:
			if o == errClose {
				return
			}
			<-done
			return
		case []byte:
			body = o
		default:
			b, err := json.Marshal(o)
			if err != nil {
				panic(err)
			}
			body = append([]byte("j:"), b...)
		}
		if _, err := c.Write(hooks.EncodeAMP(body, msg[1])); err != nil {
			return
		}
	}
}

func (g *god) handle(method string, args []json.RawMessage) any {
	g.mu.Lock()
	defer g.mu.Unlock()
	a, _ := json.Marshal(args)
	g.calls = append(g.calls, method+" "+string(a))
	if f := g.reply[method]; f != nil {
		return f(args)
	}
	ok := func(res ...any) any {
		if res == nil {
			res = []any{}
		}
		return map[string]any{"args": res}
	}
	switch method {
	case "getMonitorData":
		return ok(json.RawMessage(jlist(g.procs...)))
	case "stopWatch", "notifyByProcessId":
		return ok()
	case "stopProcessId":
		var id int
		if json.Unmarshal(args[0], &id) != nil {
			return map[string]any{"error": "bad id"}
		}
		i := g.find(id)
		if i < 0 {
			return map[string]any{"error": fmt.Sprintf("%d : id unknown", id)}
		}
		if g.onStop != nil {
			g.onStop(g.procs[i])
		}
		if !g.stopLeaves {
			g.procs[i].status, g.procs[i].pid = "stopped", 0
		}
		return ok(json.RawMessage(jlist(g.procs[i])[1 : len(jlist(g.procs[i]))-1]))
	case "restartProcessId":
		var o struct {
			ID  *int            `json:"id"`
			Env json.RawMessage `json:"env"`
		}
		if json.Unmarshal(args[0], &o) != nil || o.ID == nil {
			return map[string]any{"error": "opts.id not passed to restartProcessId"}
		}
		i := g.find(*o.ID)
		if i < 0 {
			return map[string]any{"error": "God db process id unknown"}
		}
		g.procs[i].status, g.procs[i].pid = "online", 7000+*o.ID
		return ok(json.RawMessage(jlist(g.procs[i])[1 : len(jlist(g.procs[i]))-1]))
	}
	return map[string]any{"error": fmt.Sprintf("method %q does not exist", method)}
}

func (g *god) find(id int) int {
	return slices.IndexFunc(g.procs, func(in inst) bool { return in.id == id })
}

// Calls returns the RPCs made so far, as "method args-JSON".
func (g *god) Calls() []string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.calls)
}

// on sets how method is answered (nil: as pm2 would).
func (g *god) on(method string, f func(args []json.RawMessage) any) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if f == nil {
		delete(g.reply, method)
		return
	}
	g.reply[method] = f
}

// slow makes the daemon take d to answer each RPC from now on.
func (g *god) slow(d time.Duration) {
	g.mu.Lock()
	g.delay = d
	g.mu.Unlock()
}

func (g *god) set(procs ...inst) {
	g.mu.Lock()
	g.procs = procs
	g.mu.Unlock()
}

func (g *god) assertCalls(t *testing.T, want ...string) {
	t.Helper()
	if got := g.Calls(); !slices.Equal(got, want) {
		t.Errorf("pm2 RPCs:\n got %q\nwant %q", got, want)
	}
}
