package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/hooks"
)

// events records the order of side effects across fakes.
type events struct {
	mu  sync.Mutex
	log []string
}

func (e *events) add(s string) { e.mu.Lock(); e.log = append(e.log, s); e.mu.Unlock() }
func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.log...)
}

type fakeFirewall struct {
	ev       *events
	state    *StateStore // to check that intent was recorded before acting
	blocked  bool
	blockErr error
}

func (f *fakeFirewall) Families() []firewall.Family {
	return []firewall.Family{firewall.IPv4, firewall.IPv6}
}
func (f *fakeFirewall) Plan() []string {
	return []string{"iptables -t filter -N PATCHAGENT-BLOCK", "iptables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK"}
}
func (f *fakeFirewall) Block(ctx context.Context) error {
	st, _ := f.state.Load()
	f.ev.add(fmt.Sprintf("block (state: open=%v step=%s)", st.Open, st.Step))
	if f.blockErr != nil {
		return f.blockErr
	}
	f.blocked = true
	return nil
}
func (f *fakeFirewall) Unblock(ctx context.Context) error {
	f.ev.add("unblock")
	f.blocked = false
	return nil
}
func (f *fakeFirewall) Status(ctx context.Context) (firewall.Status, error) {
	fs := firewall.FamilyStatus{}
	if f.blocked {
		fs = firewall.FamilyStatus{Chain: true, Jumps: 1, RulesOK: true}
	}
	return firewall.Status{Families: map[firewall.Family]firewall.FamilyStatus{firewall.IPv4: fs, firewall.IPv6: fs}}, nil
}

// fakeConns replays connection snapshots, one per poll; the last repeats.
type fakeConns struct {
	snaps     [][]firewall.Conn
	polls     int
	listening []firewall.Listener
	// listenUntil: Listening reports the listener until this many calls.
	listenCalls, listenUntil int
}

func (c *fakeConns) Established(ctx context.Context, ports []uint16) ([]firewall.Conn, error) {
	i := min(c.polls, len(c.snaps)-1)
	c.polls++
	if i < 0 {
		return nil, nil
	}
	return c.snaps[i], nil
}
func (c *fakeConns) Listening(ctx context.Context, ports []uint16) ([]firewall.Listener, error) {
	c.listenCalls++
	if c.listenCalls <= c.listenUntil {
		return c.listening, nil
	}
	return nil, nil
}

type fakeApp struct {
	ev      *events
	state   *StateStore
	procs   []hooks.Process
	listErr error
	stopErr error
}

func (a *fakeApp) DaemonAlive() error { return a.listErr }
func (a *fakeApp) Processes(ctx context.Context, app string) ([]hooks.Process, error) {
	if a.listErr != nil {
		return nil, a.listErr
	}
	if app != "web" {
		return nil, fmt.Errorf("%w %q", hooks.ErrUnknownApp, app)
	}
	return a.procs, nil
}
func (a *fakeApp) Stop(ctx context.Context, app string) ([]hooks.Process, error) {
	st, _ := a.state.Load()
	a.ev.add(fmt.Sprintf("stop %s (state: step=%s stopped=%v)", app, st.Step, st.Stopped != nil))
	if a.stopErr != nil {
		return nil, a.stopErr
	}
	before := a.procs
	for i := range a.procs {
		a.procs[i].Status, a.procs[i].PID = hooks.StatusStopped, 0
	}
	return before, nil
}
func (a *fakeApp) Start(ctx context.Context, app string) error {
	a.ev.add("start " + app)
	return nil
}

// conn builds a non-loopback connection; busy ones have a pending request.
func conn(busy bool, idle time.Duration) firewall.Conn {
	c := firewall.Conn{Local: netip.MustParseAddrPort("192.0.2.1:443"), Remote: netip.MustParseAddrPort("192.0.2.2:40000"),
		LastDataSent: idle, LastDataRecv: idle, HasInfo: true}
	if busy {
		c.LastDataSent, c.LastDataRecv = time.Second, 10*time.Millisecond
	}
	return c
}

type testEnv struct {
	cfg   Config
	ev    *events
	fw    *fakeFirewall
	conns *fakeConns
	app   *fakeApp
	state *StateStore
	lock  *PhaseLock
	boot  string
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	cfg := DefaultConfig()
	cfg.App.Name = "web"
	cfg.Drain.Interval = Duration(time.Millisecond)
	cfg.Drain.Idle = Duration(100 * time.Millisecond)
	cfg.Drain.Timeout = Duration(300 * time.Millisecond)
	dir := t.TempDir()
	ev := &events{}
	st := NewStateStore(dir)
	return &testEnv{
		cfg: cfg, ev: ev, state: st, lock: NewPhaseLock(dir), boot: "boot-1",
		fw:    &fakeFirewall{ev: ev, state: st},
		conns: &fakeConns{snaps: [][]firewall.Conn{{}}},
		app:   &fakeApp{ev: ev, state: st, procs: []hooks.Process{{Name: "web", ID: 0, PID: 4242, Status: hooks.StatusOnline}}},
	}
}

func (e *testEnv) agent(t *testing.T) *Agent {
	a := New(e.cfg, Deps{
		Log: zaptest.NewLogger(t), Firewall: e.fw, Conns: e.conns, App: e.app, AppUser: "node",
		State: e.state, Lock: e.lock, BootID: func() (string, error) { return e.boot, nil },
	})
	a.listenWait = 200 * time.Millisecond
	return a
}

var errBoom = errors.New("boom")
