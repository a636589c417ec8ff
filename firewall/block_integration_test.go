//go:build integration

package firewall

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// The test network: a server namespace and a client namespace joined by a
// veth pair. Nothing here touches the host's own namespace; the test checks
// that the host's ruleset is the same at the end.
const (
	fwSrvNS = "pa-fw-srv"
	fwCliNS = "pa-fw-cli"
	fwSrvIf = "pa-fw-s"
	fwCliIf = "pa-fw-c"
	fwSrv4  = "192.0.2.1"
	fwCli4  = "192.0.2.2"
	fwSrv6  = "fd70:7061:1::1"
	fwCli6  = "fd70:7061:1::2"
	fwPort  = 8443
)

// TestFirewallBlockUnblockNetns runs the real iptables and ip6tables
// (whatever backend the host's alternatives select) against a dual-stack Go
// echo server in a private network namespace, for both actions.
func TestFirewallBlockUnblockNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, iptables)")
	}
	for _, bin := range []string{"ip", "iptables", "ip6tables"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed", bin)
		}
	}
	fwHostRulesUnchanged(t)
	setupFirewallNetns(t)
	fwStartEchoServer(t)

	tables := map[Family]Tables{}
	for _, fam := range fwBothFamilies {
		tb, err := NewTables(fam, 2*time.Second)
		if err != nil {
			t.Fatalf("NewTables(%s): %v", fam, err)
		}
		tables[fam] = tb
	}

	// The network needs a moment after the links come up.
	for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
		fwWaitDialable(t, fwCliNS, addr)
	}

	for _, tt := range []struct {
		action  Action
		target  string
		refused func(error, time.Duration) bool
	}{
		{Reject, "-j REJECT --reject-with tcp-reset", func(err error, took time.Duration) bool {
			return errors.Is(err, syscall.ECONNREFUSED) && took < time.Second
		}},
		{Drop, "-j DROP", func(err error, _ time.Duration) bool {
			var ne net.Error
			return errors.As(err, &ne) && ne.Timeout()
		}},
	} {
		t.Run(string(tt.action), func(t *testing.T) {
			fw, err := New(zaptest.NewLogger(t), tables, Rules{Ports: []uint16{fwPort}, Action: tt.action})
			if err != nil {
				t.Fatal(err)
			}
			ctx := t.Context()
			wantRule := "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 8443 --tcp-flags FIN,SYN,RST,ACK SYN " + tt.target
			t.Cleanup(func() {
				// Leave nothing behind even if the test failed half-way.
				if err := fwInSrv(func() error { return fw.Unblock(context.Background()) }); err != nil {
					t.Errorf("cleanup Unblock: %v", err)
				}
			})

			// Before the block: both families connect; one connection each
			// is kept open across the block.
			var established []net.Conn
			for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				c, err := fwDialIn(fwCliNS, addr, 2*time.Second)
				if err != nil {
					t.Fatalf("dial %s before the block: %v", addr, err)
				}
				t.Cleanup(func() { c.Close() })
				fwEcho(t, c, "before")
				established = append(established, c)
			}

			for i := range 2 {
				if err := fwInSrv(func() error { return fw.Block(ctx) }); err != nil {
					t.Fatalf("Block %d: %v", i+1, err)
				}
			}
			for _, fam := range fwBothFamilies {
				inputChain, chain := fwRulesInNetns(t, fam)
				fwEqual(t, string(fam)+" INPUT after Block", inputChain, []string{fwJump})
				fwEqual(t, string(fam)+" chain after Block", chain, []string{wantRule})
			}
			fwAssertStatus(t, fw, true, false)

			// New connections from the client are refused, in both families.
			for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				start := time.Now()
				c, err := fwDialIn(fwCliNS, addr, 500*time.Millisecond)
				took := time.Since(start)
				if err == nil {
					c.Close()
					t.Errorf("dial %s while blocked: connected", addr)
				} else if !tt.refused(err, took) {
					t.Errorf("dial %s while blocked: %v after %v, want it refused by %s", addr, err, took, tt.action)
				} else {
					t.Logf("dial %s while blocked: %v after %v", addr, err, took)
				}
			}
			// Established connections keep flowing both ways.
			for i, c := range established {
				for j := range 3 {
					fwEcho(t, c, fmt.Sprintf("during-%d-%d", i, j))
				}
			}
			// The node reaches itself: loopback and its own veth addresses
			// arrive on lo, which the block exempts.
			for _, addr := range []string{"127.0.0.1:8443", "[::1]:8443", net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				c, err := fwDialIn(fwSrvNS, addr, time.Second)
				if err != nil {
					t.Errorf("dial %s from the server itself while blocked: %v", addr, err)
					continue
				}
				fwEcho(t, c, "self")
				c.Close()
			}

			// A duplicate jump (a crash between insert and record, or a
			// person) is folded back into one.
			for _, fam := range fwBothFamilies {
				fwRunInSrv(t, fam.Command(), "-I", "INPUT", "1", "-j", Chain)
			}
			fwAssertStatus(t, fw, false, true)
			if err := fwInSrv(func() error { return fw.Block(ctx) }); err != nil {
				t.Fatalf("Block over a duplicate jump: %v", err)
			}
			for _, fam := range fwBothFamilies {
				inputChain, chain := fwRulesInNetns(t, fam)
				fwEqual(t, string(fam)+" INPUT after re-Block", inputChain, []string{fwJump})
				fwEqual(t, string(fam)+" chain after re-Block", chain, []string{wantRule})
			}

			// Another tool inserts, above the jump, a rule that accepts the
			// port: new connections pass it. Status says so, and Block puts
			// the jump back on top (iptables-restore, one transaction), the
			// tool's rule kept below it: refused again.
			accept := []string{"-I", "INPUT", "1", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT"}
			for _, fam := range fwBothFamilies {
				fwRunInSrv(t, append([]string{fam.Command()}, accept...)...)
			}
			fwAssertStatus(t, fw, false, true)
			for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				c, err := fwDialIn(fwCliNS, addr, time.Second)
				if err != nil {
					t.Fatalf("dial %s past the ACCEPT above the jump: %v (the test proves nothing)", addr, err)
				}
				c.Close()
			}
			if err := fwInSrv(func() error { return fw.Block(ctx) }); err != nil {
				t.Fatalf("Block under a rule above the jump: %v", err)
			}
			for _, fam := range fwBothFamilies {
				inputChain, _ := fwRulesInNetns(t, fam) // and the jump first
				fwEqual(t, string(fam)+" jumps after the jump moved back", inputChain, []string{fwJump})
				if out := fwRunInSrv(t, fam.Command(), "-S", "INPUT"); !strings.Contains(out, "-A INPUT -p tcp -m tcp --dport 8443 -j ACCEPT") {
					t.Errorf("%s: the other tool's rule is gone:\n%s", fam, out)
				}
			}
			fwAssertStatus(t, fw, true, false)
			for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				start := time.Now()
				c, err := fwDialIn(fwCliNS, addr, 500*time.Millisecond)
				if err == nil {
					c.Close()
					t.Errorf("dial %s with the jump back on top: connected", addr)
				} else if !tt.refused(err, time.Since(start)) {
					t.Errorf("dial %s with the jump back on top: %v", addr, err)
				}
			}
			for _, fam := range fwBothFamilies {
				fwRunInSrv(t, fam.Command(), "-D", "INPUT", "-p", "tcp", "--dport", "8443", "-j", "ACCEPT")
			}

			for i := range 2 {
				if err := fwInSrv(func() error { return fw.Unblock(ctx) }); err != nil {
					t.Fatalf("Unblock %d: %v", i+1, err)
				}
			}
			for _, fam := range fwBothFamilies {
				out := fwRunInSrv(t, fam.Command(), "-S")
				if strings.Contains(out, Chain) {
					t.Errorf("%s -S after Unblock still mentions %s:\n%s", fam.Command(), Chain, out)
				}
			}
			fwAssertStatus(t, fw, false, false)

			for _, addr := range []string{net.JoinHostPort(fwSrv4, "8443"), net.JoinHostPort(fwSrv6, "8443")} {
				c, err := fwDialIn(fwCliNS, addr, 2*time.Second)
				if err != nil {
					t.Errorf("dial %s after Unblock: %v", addr, err)
					continue
				}
				fwEcho(t, c, "after")
				c.Close()
			}
			for _, c := range established {
				fwEcho(t, c, "after")
			}
		})
	}
}

// hostRulesUnchanged records the host's own ruleset and checks, when the
// test ends, that it is the same and holds nothing of ours.
func fwHostRulesUnchanged(t *testing.T) {
	t.Helper()
	save := func() map[string]string {
		out := map[string]string{}
		for _, bin := range []string{"iptables", "ip6tables"} {
			b, err := exec.Command(bin, "-S").Output()
			if err != nil {
				t.Fatalf("host %s -S: %v", bin, err)
			}
			out[bin] = string(b)
		}
		return out
	}
	before := save()
	t.Cleanup(func() {
		after := save()
		for bin, b := range before {
			if after[bin] != b {
				t.Errorf("host %s -S changed during the test:\nbefore:\n%s\nafter:\n%s", bin, b, after[bin])
			}
			if strings.Contains(after[bin], Chain) {
				t.Errorf("host %s -S mentions %s:\n%s", bin, Chain, after[bin])
			}
		}
	})
}

func setupFirewallNetns(t *testing.T) {
	t.Helper()
	for _, ns := range []string{fwSrvNS, fwCliNS} {
		if err := sandbox.DeleteNetns(ns); err != nil { // left over from a killed run
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, ns := range []string{fwSrvNS, fwCliNS} {
			if err := sandbox.DeleteNetns(ns); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	for _, ns := range []string{fwSrvNS, fwCliNS} {
		if err := sandbox.CreateNetns(ns); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{
		// Created inside the server namespace, so the host never sees it.
		{"-n", fwSrvNS, "link", "add", fwSrvIf, "type", "veth", "peer", "name", fwCliIf},
		{"-n", fwSrvNS, "link", "set", fwCliIf, "netns", fwCliNS},
		{"-n", fwSrvNS, "addr", "add", fwSrv4 + "/24", "dev", fwSrvIf},
		{"-n", fwCliNS, "addr", "add", fwCli4 + "/24", "dev", fwCliIf},
		{"-n", fwSrvNS, "-6", "addr", "add", fwSrv6 + "/64", "dev", fwSrvIf, "nodad"},
		{"-n", fwCliNS, "-6", "addr", "add", fwCli6 + "/64", "dev", fwCliIf, "nodad"},
		{"-n", fwSrvNS, "link", "set", fwSrvIf, "up"},
		{"-n", fwCliNS, "link", "set", fwCliIf, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
}

// startEchoServer listens on [::]:8443 (dual stack) in the server namespace
// and echoes every line back.
func fwStartEchoServer(t *testing.T) {
	t.Helper()
	var ln net.Listener
	if err := fwInSrv(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf("[::]:%d", fwPort))
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", fwSrvNS, err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

func fwInSrv(fn func() error) error { return sandbox.InNetns(fwSrvNS, fn) }

// dialIn connects from inside a namespace; the connection stays there.
func fwDialIn(ns, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := sandbox.InNetns(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

func fwWaitDialable(t *testing.T, ns, addr string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := fwDialIn(ns, addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s unreachable from %s: %v", addr, ns, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// echo sends a line and expects it back within a second.
func fwEcho(t *testing.T, c net.Conn, msg string) {
	t.Helper()
	if err := c.SetDeadline(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	defer c.SetDeadline(time.Time{})
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		t.Errorf("write to %s: %v", c.RemoteAddr(), err)
		return
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != msg+"\n" {
		t.Errorf("echo over %s->%s: got %q, %v; want %q", c.LocalAddr(), c.RemoteAddr(), got, err, msg)
	}
}

// runInSrv runs a command in the server namespace and returns its output.
func fwRunInSrv(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := sandbox.NetnsCommand(fwSrvNS, argv...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s in %s: %v: %s", strings.Join(argv, " "), fwSrvNS, err, out)
	}
	return string(out)
}

// rulesInNetns returns, from the binary's own -S output in the server
// namespace, the INPUT rules that mention our chain and our chain's rules.
func fwRulesInNetns(t *testing.T, fam Family) (inputChain, chain []string) {
	t.Helper()
	for _, l := range strings.Split(fwRunInSrv(t, fam.Command(), "-S"), "\n") {
		switch {
		case strings.HasPrefix(l, "-A INPUT ") && strings.Contains(l, Chain):
			inputChain = append(inputChain, l)
		case strings.HasPrefix(l, "-A "+Chain+" "):
			chain = append(chain, l)
		}
	}
	// The jump must also be the first rule of INPUT.
	lines := strings.Split(fwRunInSrv(t, fam.Command(), "-S", "INPUT"), "\n")
	first := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, "-A INPUT ") })
	if len(inputChain) > 0 && first >= 0 && lines[first] != fwJump {
		t.Errorf("%s: first INPUT rule is %q, want the jump", fam, lines[first])
	}
	return inputChain, chain
}

func fwAssertStatus(t *testing.T, fw *Firewall, blocked, partial bool) {
	t.Helper()
	var st Status
	err := fwInSrv(func() error {
		var err error
		st, err = fw.Status(t.Context())
		return err
	})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.Blocked() != blocked || st.Partial() != partial {
		t.Errorf("Status: Blocked=%v Partial=%v, want %v %v (%+v)", st.Blocked(), st.Partial(), blocked, partial, st)
	}
}

func TestNewTablesFindsIptablesOutsidePATH(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	t.Setenv("PATH", "/nonexistent")
	for _, f := range []Family{IPv4, IPv6} {
		if _, err := NewTables(f, time.Second); err != nil {
			t.Fatalf("%s with PATH=/nonexistent: %v", f, err)
		}
	}
}
