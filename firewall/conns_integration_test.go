//go:build integration

package firewall

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// Addresses added to lo inside the test namespaces, so that peers are not
// loopback addresses.
var (
	connTestSrv4 = netip.MustParseAddr("192.0.2.1")
	connTestCli4 = netip.MustParseAddr("192.0.2.2")
	connTestSrv6 = netip.MustParseAddr("fd70:7061:9::1")
	connTestCli6 = netip.MustParseAddr("fd70:7061:9::2")
)

// connTestNetns creates a network namespace with lo up and the test
// addresses on it, deleted when the test ends.
func connTestNetns(tb testing.TB, name string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces")
	}
	if err := sandbox.CreateNetns(name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := sandbox.DeleteNetns(name); err != nil {
			tb.Errorf("deleting netns: %v", err)
		}
	})
	for _, args := range [][]string{
		{"addr", "add", connTestSrv4.String() + "/32", "dev", "lo"},
		{"addr", "add", connTestCli4.String() + "/32", "dev", "lo"},
		{"addr", "add", connTestSrv6.String() + "/128", "dev", "lo", "nodad"},
		{"addr", "add", connTestCli6.String() + "/128", "dev", "lo", "nodad"},
	} {
		out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput()
		if err != nil && !strings.Contains(string(out), "File exists") {
			tb.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
}

// connTestServer is a line-protocol server. The first line of a connection
// selects its behaviour, and the server answers "ok":
//
//	idle:   then answers every further line with "ok" (keep-alive requests)
//	hold:   then reads further lines and never answers (request in progress)
//	noread: then stops reading (unread data piles up in the receive queue)
type connTestServer struct {
	ln   net.Listener
	quit chan struct{}
	wg   sync.WaitGroup
}

// connTestListen listens on addr in the current thread's namespace (call it
// inside sandbox.InNetns) and serves until the test ends. It must not call
// tb.Fatal: it runs on the InNetns goroutine.
func connTestListen(tb testing.TB, addr string) (*connTestServer, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	s := &connTestServer{ln: ln, quit: make(chan struct{})}
	s.wg.Add(1)
	go s.serve()
	tb.Cleanup(s.close)
	return s, nil
}

func (s *connTestServer) port() uint16 { return uint16(s.ln.Addr().(*net.TCPAddr).Port) }

func (s *connTestServer) close() {
	select {
	case <-s.quit:
		return
	default:
	}
	close(s.quit)
	s.ln.Close()
	s.wg.Wait()
}

func (s *connTestServer) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(2)
		go func() {
			defer s.wg.Done()
			<-s.quit
			c.Close()
		}()
		go func() {
			defer s.wg.Done()
			defer c.Close()
			r := bufio.NewReader(c)
			mode, err := r.ReadString('\n')
			if err != nil {
				return
			}
			if _, err := io.WriteString(c, "ok\n"); err != nil {
				return
			}
			switch strings.TrimSpace(mode) {
			case "idle":
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					if _, err := io.WriteString(c, "ok\n"); err != nil {
						return
					}
				}
			case "hold":
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
				}
			case "noread":
				<-s.quit
			}
		}()
	}
}

// connTestDial connects from local to remote (in the current thread's
// namespace), sends mode and waits for the answer. It returns the client
// conn, closed when the test ends. It must not call tb.Fatal.
func connTestDial(tb testing.TB, local, remote netip.AddrPort, mode string) (net.Conn, error) {
	d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(local), KeepAlive: -1, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", remote.String())
	if err != nil {
		return nil, fmt.Errorf("dialing %s from %s: %w", remote, local, err)
	}
	tb.Cleanup(func() { c.Close() })
	return c, connTestRoundTrip(c, mode)
}

func connTestRoundTrip(c net.Conn, line string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		return fmt.Errorf("writing %q: %w", line, err)
	}
	buf := make([]byte, 3)
	if _, err := io.ReadFull(c, buf); err != nil {
		return fmt.Errorf("reading answer to %q: %w", line, err)
	}
	if string(buf) != "ok\n" {
		return fmt.Errorf("answer to %q: %q", line, buf)
	}
	return nil
}

// connTestIn runs fn inside the namespace.
func connTestIn(tb testing.TB, ns string, fn func() error) {
	tb.Helper()
	if err := sandbox.InNetns(ns, fn); err != nil {
		tb.Fatal(err)
	}
}

func TestConnsSockDiagAndProcNet(t *testing.T) {
	const ns = "pa-cn-test"
	connTestNetns(t, ns)
	ctx := t.Context()
	sd := NewSockDiag()
	pn := &ProcNet{Root: "/proc/thread-self"} // /proc/net follows the main thread's netns
	const idle = 500 * time.Millisecond
	const nIdle4, nIdle6 = 5, 3

	var (
		idleConns      []net.Conn
		hold, noread   net.Conn
		srv, srvOther  *connTestServer
		listenAddrPort = func(a netip.Addr, s *connTestServer) netip.AddrPort { return netip.AddrPortFrom(a, s.port()) }
	)
	connTestIn(t, ns, func() (err error) {
		if srv, err = connTestListen(t, "[::]:443"); err != nil { // dual stack
			return err
		}
		if srvOther, err = connTestListen(t, "[::]:8443"); err != nil { // another port
			return err
		}
		dial := func(local netip.Addr, remote netip.AddrPort, mode string) net.Conn {
			if err != nil {
				return nil
			}
			var c net.Conn
			c, err = connTestDial(t, netip.AddrPortFrom(local, 0), remote, mode)
			return c
		}
		for range nIdle4 {
			idleConns = append(idleConns, dial(connTestCli4, listenAddrPort(connTestSrv4, srv), "idle"))
		}
		for range nIdle6 {
			idleConns = append(idleConns, dial(connTestCli6, listenAddrPort(connTestSrv6, srv), "idle"))
		}
		dial(netip.MustParseAddr("127.0.0.1"), netip.MustParseAddrPort("127.0.0.1:443"), "idle")
		dial(netip.MustParseAddr("::1"), netip.MustParseAddrPort("[::1]:443"), "idle")
		hold = dial(connTestCli4, listenAddrPort(connTestSrv4, srv), "hold")
		noread = dial(connTestCli6, listenAddrPort(connTestSrv6, srv), "noread")
		dial(connTestCli4, listenAddrPort(connTestSrv4, srvOther), "idle")
		return err
	})

	// Make every idle connection carry a request/response now, then
	// start a request that stays unanswered and send data nobody reads.
	for _, c := range idleConns {
		if err := connTestRoundTrip(c, "get"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // > one jiffy at any HZ
	if _, err := io.WriteString(hold, "request\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := noread.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let loopback deliver

	const wantTotal = nIdle4 + nIdle6 + 2 + 2 // + hold, noread; loopback apart
	query := func() []Conn {
		t.Helper()
		var conns []Conn
		connTestIn(t, ns, func() (err error) {
			conns, err = sd.Established(ctx, []uint16{443})
			return err
		})
		return conns
	}
	byPeer := func(conns []Conn, c net.Conn) (Conn, bool) {
		want := c.LocalAddr().(*net.TCPAddr).AddrPort()
		want = netip.AddrPortFrom(want.Addr().Unmap(), want.Port())
		for _, x := range conns {
			if x.Remote == want {
				return x, true
			}
		}
		return Conn{}, false
	}

	// One Tracker across the polls, as the drain uses it.
	tr := NewTracker()
	t.Run("fresh: busy ones found, idle ones not idle yet", func(t *testing.T) {
		conns := query()
		if len(conns) != wantTotal {
			t.Fatalf("got %d conns, want %d: %+v", len(conns), wantTotal, conns)
		}
		s := tr.Summarize(conns, idle, idle)
		if s.Total != wantTotal-2 || s.Loopback != 2 || s.Busy != 2 || s.Idle != 0 || s.Drained() {
			t.Errorf("Summarize = %+v, want Total %d, Loopback 2, Busy 2, Idle 0, not drained", s, wantTotal-2)
		}
	})

	time.Sleep(idle + 100*time.Millisecond)

	t.Run("after idle period", func(t *testing.T) {
		conns := query()
		if len(conns) != wantTotal {
			t.Fatalf("got %d conns, want %d", len(conns), wantTotal)
		}
		v4 := 0
		for _, c := range conns {
			if c.Local.Port() != 443 {
				t.Errorf("conn with local port %d returned: %+v", c.Local.Port(), c)
			}
			if !c.HasInfo {
				t.Errorf("no tcp_info: %+v", c)
			}
			if c.Remote.Addr().Is4In6() || c.Local.Addr().Is4In6() {
				t.Errorf("v4-mapped address not unmapped: %+v", c)
			}
			if c.Remote.Addr() == connTestCli4 {
				v4++
				if c.Local.Addr() != connTestSrv4 {
					t.Errorf("IPv4 peer with local %v", c.Local)
				}
			}
		}
		if v4 != nIdle4+1 {
			t.Errorf("found %d IPv4 peers on the dual-stack listener, want %d", v4, nIdle4+1)
		}
		s := tr.Summarize(conns, idle, idle)
		// Every non-busy one idle long enough: none still to come (NextIdle 0).
		want := Summary{Total: wantTotal - 2, Busy: 2, Idle: nIdle4 + nIdle6, Loopback: 2}
		if s != want || s.Drained() {
			t.Errorf("Summarize = %+v, want %+v, not drained", s, want)
		}
		for _, c := range idleConns {
			x, ok := byPeer(conns, c)
			if !ok {
				t.Fatalf("idle conn from %v not found", c.LocalAddr())
			}
			if x.Busy() || x.IdleFor() < idle || x.BytesReceived == 0 || x.BytesAcked == 0 {
				t.Errorf("idle conn %+v: busy %v, idle for %v", x, x.Busy(), x.IdleFor())
			}
		}
		h, ok := byPeer(conns, hold)
		if !ok {
			t.Fatal("held conn not found")
		}
		if !h.Busy() || h.RecvQ != 0 || !(h.LastDataRecv < h.LastDataSent) {
			t.Errorf("held conn (request read, not answered) = %+v, want busy by LastDataRecv < LastDataSent", h)
		}
		n, ok := byPeer(conns, noread)
		if !ok {
			t.Fatal("unread conn not found")
		}
		if !n.Busy() || n.RecvQ != 1000 {
			t.Errorf("unread conn = %+v, want busy with RecvQ 1000", n)
		}
		if n.Local.Addr() != connTestSrv6 {
			t.Errorf("IPv6 conn local = %v", n.Local)
		}
		lo := 0
		for _, c := range conns {
			if c.Loopback() {
				lo++
			}
		}
		if lo != 2 {
			t.Errorf("%d loopback conns, want 2", lo)
		}
	})

	t.Run("ProcNet agrees", func(t *testing.T) {
		var sdConns, pnConns []Conn
		connTestIn(t, ns, func() (err error) {
			if sdConns, err = sd.Established(ctx, []uint16{443}); err != nil {
				return err
			}
			pnConns, err = pn.Established(ctx, []uint16{443})
			return err
		})
		if len(pnConns) != len(sdConns) || len(pnConns) != wantTotal {
			t.Fatalf("ProcNet %d conns, SockDiag %d, want %d", len(pnConns), len(sdConns), wantTotal)
		}
		key := func(cs []Conn) []string {
			var ks []string
			for _, c := range cs {
				ks = append(ks, c.Local.String()+" "+c.Remote.String())
			}
			sort.Strings(ks)
			return ks
		}
		if a, b := key(sdConns), key(pnConns); strings.Join(a, ",") != strings.Join(b, ",") {
			t.Errorf("address sets differ:\nsock_diag %v\nprocfs    %v", a, b)
		}
		n, ok := byPeer(pnConns, noread)
		if !ok || n.RecvQ != 1000 || n.HasInfo {
			t.Errorf("ProcNet unread conn = %+v, %v; want RecvQ 1000, no info", n, ok)
		}
	})

	t.Run("ports filter", func(t *testing.T) {
		var both, all, none []Conn
		var count int
		connTestIn(t, ns, func() (err error) {
			if both, err = sd.Established(ctx, []uint16{443, 8443}); err != nil {
				return err
			}
			if all, err = sd.Established(ctx, nil); err != nil {
				return err
			}
			if none, err = sd.Established(ctx, []uint16{9}); err != nil {
				return err
			}
			count, err = sd.Count(ctx, []uint16{443})
			return err
		})
		if len(both) != wantTotal+1 {
			t.Errorf("ports 443+8443: %d conns, want %d", len(both), wantTotal+1)
		}
		if len(all) != 2*(wantTotal+1) { // both ends of every connection, nothing from outside the netns
			t.Errorf("all ports: %d sockets, want %d", len(all), 2*(wantTotal+1))
		}
		if len(none) != 0 {
			t.Errorf("port 9: %d conns, want 0", len(none))
		}
		if count != wantTotal {
			t.Errorf("Count = %d, want %d", count, wantTotal)
		}
	})

	t.Run("per-family v2 requests agree with the single compat request", func(t *testing.T) {
		v2 := &SockDiag{forceV2: true}
		key := func(cs []Conn) string {
			var ks []string
			for _, c := range cs {
				ks = append(ks, c.Local.String()+" "+c.Remote.String())
			}
			sort.Strings(ks)
			return strings.Join(ks, ",")
		}
		for _, ports := range [][]uint16{{443}, {443, 8443}, nil, {9}} {
			var a, b []Conn
			connTestIn(t, ns, func() (err error) {
				if a, err = sd.Established(ctx, ports); err != nil {
					return err
				}
				b, err = v2.Established(ctx, ports)
				return err
			})
			if ka, kb := key(a), key(b); ka != kb {
				t.Errorf("ports %v:\ncompat %s\nv2     %s", ports, ka, kb)
			}
		}
		if sd.noCompat.Load() {
			t.Error("this kernel refused TCPDIAG_GETSOCK: the default SockDiag fell back to v2 requests")
		}
	})

	t.Run("drains when busy ones close", func(t *testing.T) {
		hold.Close()
		noread.Close()
		deadline := time.Now().Add(5 * time.Second)
		for {
			s := tr.Summarize(query(), idle, idle)
			if s.Drained() {
				if s.Total != nIdle4+nIdle6 || s.Busy != 0 {
					t.Errorf("drained summary = %+v", s)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("not drained after 5s: %+v", s)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})

	t.Run("canceled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		connTestIn(t, ns, func() error {
			if _, err := sd.Established(cctx, []uint16{443}); !errors.Is(err, context.Canceled) {
				t.Errorf("err = %v, want context.Canceled", err)
			}
			return nil
		})
	})
}

func TestListeningSockDiagAndProcNet(t *testing.T) {
	const ns = "pa-cn-test-listen"
	connTestNetns(t, ns)
	ctx := t.Context()
	sd := NewSockDiag()
	pn := &ProcNet{Root: "/proc/thread-self"}
	var lns []net.Listener
	connTestIn(t, ns, func() error {
		for _, a := range []string{"127.0.0.1:7000", "[::1]:7000", "[::]:443", "127.0.0.1:7001"} {
			ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", a)
			if err != nil {
				return err
			}
			lns = append(lns, ln)
			t.Cleanup(func() { ln.Close() })
		}
		return nil
	})
	list := func(t *testing.T, src ConnSource, ports []uint16) []string {
		t.Helper()
		var ls []Listener
		connTestIn(t, ns, func() (err error) {
			ls, err = src.Listening(ctx, ports)
			return err
		})
		var out []string
		for _, l := range ls {
			if l.Inode == 0 || l.UID != 0 {
				t.Errorf("listener %+v: want inode set, uid 0", l)
			}
			out = append(out, l.Local.String())
		}
		sort.Strings(out)
		return out
	}
	for _, tt := range []struct {
		name  string
		ports []uint16
		want  string
	}{
		{"one port, both families", []uint16{7000}, "127.0.0.1:7000 [::1]:7000"},
		{"dual stack", []uint16{443}, "[::]:443"},
		{"several ports", []uint16{443, 7001}, "127.0.0.1:7001 [::]:443"},
		{"all ports, nothing from the host", nil, "127.0.0.1:7000 127.0.0.1:7001 [::1]:7000 [::]:443"},
		{"no match", []uint16{7002}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for name, src := range map[string]ConnSource{"SockDiag": sd, "SockDiagV2": &SockDiag{forceV2: true}, "ProcNet": pn} {
				if got := strings.Join(list(t, src, tt.ports), " "); got != tt.want {
					t.Errorf("%s: got %q, want %q", name, got, tt.want)
				}
			}
		})
	}
	for _, ln := range lns {
		ln.Close()
	}
	t.Run("closed", func(t *testing.T) {
		for name, src := range map[string]ConnSource{"SockDiag": sd, "SockDiagV2": &SockDiag{forceV2: true}, "ProcNet": pn} {
			if got := list(t, src, nil); len(got) != 0 {
				t.Errorf("%s after close: %v", name, got)
			}
		}
	})
}
