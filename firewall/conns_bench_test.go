//go:build integration

package firewall

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
	"golang.org/x/sys/unix"
)

// Count returns the number of ESTABLISHED TCP sockets, IPv4 and IPv6, whose
// local port is in ports (every port if ports is empty), loopback peers
// included: the benchmark's "count only" row. It asks for no tcp_info.
func (s *SockDiag) Count(ctx context.Context, ports []uint16) (int, error) {
	n := 0
	err := s.dump(ctx, diagQuery{states: 1 << diagTCPEstablished, ports: ports},
		func() { n = 0 },
		func(*diagMsg) { n++ })
	if err != nil {
		return 0, fmt.Errorf("counting established connections: %w", err)
	}
	return n, nil
}

// Benchmark setup: in netns pa-cn-bench, connBenchConns connections to a
// dual-stack [::]:443 (half over IPv4, arriving v4-mapped, half over IPv6),
// from non-loopback addresses, that is 2×connBenchConns ESTABLISHED sockets
// of which connBenchConns have local port 443 (the others are the client
// ends). PA_CN_BENCH_OTHER=n adds n connections to port 8443. Every
// connBenchBusyEvery-th connection to 443 carries one unread byte, so it is
// busy. The fd hard limit (20,000 here, not raisable without
// CAP_SYS_RESOURCE) is below what one process needs, so the sockets live in
// helper processes (this test binary re-executed with connBenchEnv set),
// each holding about 2×connBenchPerHelper fds; this process holds none.
const (
	connBenchNS         = "pa-cn-bench"
	connBenchEnv        = "PA_CN_BENCH_HELPER"
	connBenchOtherEnv   = "PA_CN_BENCH_OTHER"
	connBenchConns      = 20000
	connBenchPerHelper  = 5000
	connBenchBusyEvery  = 200
	connBenchDialers    = 16 // concurrent dials per helper, so the accept backlog never overflows
	connBenchSetupLimit = 90 * time.Second
)

// TestHelperProcessCNBench is not a test: it is the body of a benchmark
// helper process (see connBenchSetup). Its environment says what to open:
// "<ipv4 conns to 443> <ipv6 conns to 443> <conns to 8443>".
func TestHelperProcessCNBench(t *testing.T) {
	spec := os.Getenv(connBenchEnv)
	if spec == "" {
		t.Skip("benchmark helper process only")
	}
	if err := connBenchHelper(spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stdout, "error", err)
		t.Fatal(err)
	}
}

func connBenchHelper(spec string, in io.Reader, out io.Writer) error {
	var n4, n6, nOther int
	if _, err := fmt.Sscan(spec, &n4, &n6, &nOther); err != nil {
		return fmt.Errorf("parsing %q: %w", spec, err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn // keep every conn reachable: a collected net.Conn closes its fd
	)
	keep := func(c net.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	lc := net.ListenConfig{
		KeepAlive: -1,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
	for _, addr := range []string{"[::]:443", "[::]:8443"} {
		ln, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				keep(c)
			}
		}()
	}
	fmt.Fprintln(out, "listening")
	r := bufio.NewReader(in)
	if line, err := r.ReadString('\n'); err != nil || line != "dial\n" {
		return fmt.Errorf("waiting for dial: %q, %w", line, err)
	}

	type job struct {
		addr string
		busy bool
	}
	jobs := make(chan job)
	go func() {
		defer close(jobs)
		for i := range n4 + n6 {
			addr := "192.0.2.1:443" // a dual-stack listener: arrives as ::ffff:192.0.2.1
			if i >= n4 {
				addr = "[fd70:7061:9::1]:443"
			}
			jobs <- job{addr: addr, busy: i%connBenchBusyEvery == 0}
		}
		for range nOther {
			jobs <- job{addr: "192.0.2.1:8443"}
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, connBenchDialers)
	d := net.Dialer{KeepAlive: -1, Timeout: 10 * time.Second}
	for range connBenchDialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range jobs {
				c, err := d.Dial("tcp", j.addr)
				if err != nil {
					errc <- err
					for range jobs {
					}
					return
				}
				if j.busy {
					if _, err := c.Write([]byte{'x'}); err != nil {
						errc <- err
					}
				}
				keep(c)
			}
		}()
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return fmt.Errorf("dialing: %w", err)
	}
	fmt.Fprintln(out, "ready")
	// Hold the sockets until the parent closes stdin (or dies), bounded.
	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, r)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Minute):
	}
	mu.Lock()
	for _, c := range conns {
		c.Close()
	}
	mu.Unlock()
	return nil
}

type connBenchProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines *bufio.Scanner
}

func (p *connBenchProc) expect(want string) error {
	if !p.lines.Scan() {
		return fmt.Errorf("helper %d: no %q: %w", p.cmd.Process.Pid, want, p.lines.Err())
	}
	if got := p.lines.Text(); got != want {
		return fmt.Errorf("helper %d: got %q, want %q", p.cmd.Process.Pid, got, want)
	}
	return nil
}

// connBenchSetup builds the namespace and its sockets and returns the
// number of established sockets expected on port 443 and how many of those
// are busy.
func connBenchSetup(b *testing.B) (want443, wantBusy int) {
	start := time.Now()
	other := 0
	if v := os.Getenv(connBenchOtherEnv); v != "" {
		var err error
		if other, err = strconv.Atoi(v); err != nil || other < 0 {
			b.Fatalf("%s=%q: want a count", connBenchOtherEnv, v)
		}
	}
	connTestNetns(b, connBenchNS)
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	total := connBenchConns + other
	nHelpers := (total + connBenchPerHelper - 1) / connBenchPerHelper
	var procs []*connBenchProc
	b.Cleanup(func() {
		for _, p := range procs {
			p.stdin.Close()
			p.cmd.Process.Kill() // by PID; these are our children
			p.cmd.Wait()
		}
	})
	// Start the helpers from a thread inside the namespace: they inherit it.
	err = sandbox.InNetns(connBenchNS, func() error {
		for i := range nHelpers {
			share := func(n int) int { return n/nHelpers + btoi(i < n%nHelpers) }
			n443 := share(connBenchConns)
			wantBusy += (n443 + connBenchBusyEvery - 1) / connBenchBusyEvery
			cmd := exec.Command(exe, "-test.run=^TestHelperProcessCNBench$", "-test.count=1")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%d %d %d", connBenchEnv, n443-n443/2, n443/2, share(other)))
			cmd.Stderr = os.Stderr
			stdin, err := cmd.StdinPipe()
			if err != nil {
				return err
			}
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				return err
			}
			if err := cmd.Start(); err != nil {
				return err
			}
			procs = append(procs, &connBenchProc{cmd: cmd, stdin: stdin, lines: bufio.NewScanner(stdout)})
		}
		return nil
	})
	if err != nil {
		b.Fatalf("starting helpers: %v", err)
	}
	// Every wait below is bounded: the helpers are killed at the limit.
	timer := time.AfterFunc(connBenchSetupLimit, func() {
		for _, p := range procs {
			p.cmd.Process.Kill()
		}
	})
	defer timer.Stop()
	for _, p := range procs {
		if err := p.expect("listening"); err != nil {
			b.Fatal(err)
		}
	}
	for _, p := range procs {
		if _, err := io.WriteString(p.stdin, "dial\n"); err != nil {
			b.Fatal(err)
		}
	}
	for _, p := range procs {
		if err := p.expect("ready"); err != nil {
			b.Fatal(err)
		}
	}
	// All dials are done; wait for the server ends to be accepted and
	// check the kernel's count in this namespace.
	want443, wantAll := connBenchConns, 2*total
	sd := NewSockDiag()
	var n443, nAll int
	for {
		err := sandbox.InNetns(connBenchNS, func() (err error) {
			if n443, err = sd.Count(b.Context(), []uint16{443}); err != nil {
				return err
			}
			nAll, err = sd.Count(b.Context(), nil)
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
		if n443 == want443 && nAll == wantAll {
			break
		}
		if time.Since(start) > connBenchSetupLimit {
			b.Fatalf("after %v: %d established on 443 (want %d), %d in all (want %d)",
				time.Since(start), n443, want443, nAll, wantAll)
		}
		time.Sleep(100 * time.Millisecond)
	}
	b.Logf("setup: %d helpers, %d ESTABLISHED sockets in %s (%d with local port 443), in %v",
		nHelpers, nAll, connBenchNS, n443, time.Since(start).Round(time.Millisecond))
	return want443, wantBusy
}

func btoi(v bool) int {
	if v {
		return 1
	}
	return 0
}

func BenchmarkConns(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for network namespaces")
	}
	want443, wantBusy := connBenchSetup(b)
	ports := []uint16{443}
	sd := NewSockDiag()
	pn := &ProcNet{Root: "/proc/thread-self"} // /proc/net follows the main thread's netns

	// run runs op b.N times on one thread inside the namespace; op returns
	// the number of connections it found.
	run := func(b *testing.B, op func(ctx context.Context) (int, error)) {
		var n int
		err := sandbox.InNetns(connBenchNS, func() error {
			b.ResetTimer()
			for range b.N {
				var err error
				if n, err = op(b.Context()); err != nil {
					return err
				}
				if n != want443 {
					return fmt.Errorf("found %d connections, want %d", n, want443)
				}
			}
			b.StopTimer()
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n), "conns")
	}
	classify := func(b *testing.B, src ConnSource, wantBusy, wantIdle int) func(ctx context.Context) (int, error) {
		return func(ctx context.Context) (int, error) {
			conns, err := src.Established(ctx, ports)
			if err != nil {
				return 0, err
			}
			s := NewTracker().Summarize(conns, time.Millisecond, time.Millisecond)
			if s.Busy != wantBusy || s.Idle != wantIdle || s.Loopback != 0 {
				return 0, fmt.Errorf("summary %+v, want %d busy, %d idle", s, wantBusy, wantIdle)
			}
			b.ReportMetric(float64(s.Busy), "busy")
			return s.Total, nil
		}
	}

	b.Run("SockDiag", func(b *testing.B) {
		run(b, classify(b, sd, wantBusy, want443-wantBusy))
	})
	b.Run("SockDiagV2", func(b *testing.B) {
		// One SOCK_DIAG_BY_FAMILY request per family: two hash walks.
		run(b, classify(b, &SockDiag{forceV2: true}, wantBusy, want443-wantBusy))
	})
	b.Run("SockDiagCountOnly", func(b *testing.B) {
		run(b, func(ctx context.Context) (int, error) { return sd.Count(ctx, ports) })
	})
	noMatch := func(sd *SockDiag) func(ctx context.Context) (int, error) {
		// The fixed cost: for a port nothing uses, the kernel still walks
		// the established hash.
		return func(ctx context.Context) (int, error) {
			n, err := sd.Count(ctx, []uint16{9})
			if err != nil || n != 0 {
				return 0, fmt.Errorf("port 9: %d conns, %w", n, err)
			}
			return want443, nil
		}
	}
	b.Run("SockDiagNoMatch", func(b *testing.B) { run(b, noMatch(sd)) })
	b.Run("SockDiagV2NoMatch", func(b *testing.B) { run(b, noMatch(&SockDiag{forceV2: true})) })
	b.Run("ProcNet", func(b *testing.B) {
		// Queues only: the unread bytes are seen, nothing is ever idle.
		run(b, classify(b, pn, wantBusy, 0))
	})
	b.Run("SS", func(b *testing.B) {
		run(b, func(ctx context.Context) (int, error) {
			out, err := exec.CommandContext(ctx, "ss", "-Htn", "state", "established", "( sport = :443 )").Output()
			if err != nil {
				var ee *exec.ExitError
				if errors.As(err, &ee) {
					err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
				}
				return 0, fmt.Errorf("running ss: %w", err)
			}
			return bytes.Count(out, []byte("\n")), nil
		})
	})
}
