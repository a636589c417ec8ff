package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/internal/testkit"
)

// sockDir is a short directory for sockets (sun_path holds 108 bytes).
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-sock")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type testServer struct {
	*Server
	path string
}

// startServer serves run on a fresh socket until the test ends; the
// cleanup waits for the phases and the handlers.
func startServer(t *testing.T, log *zap.Logger, run PhaseRunner, tune func(*Server)) *testServer {
	t.Helper()
	path := filepath.Join(sockDir(t), "c.sock")
	ln, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	if log == nil {
		log = zaptest.NewLogger(t)
	}
	s := NewServer(log, ln, run)
	// Unprivileged runs serve their own uid (the uid check is tested as root).
	s.allowUID = uint32(os.Geteuid())
	if tune != nil {
		tune(s)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- s.Serve(ctx) }()
	t.Cleanup(func() {
		wctx, wcancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer wcancel()
		if err := s.Wait(wctx); err != nil {
			t.Errorf("phases still running at the end: %v", err)
		}
		cancel()
		if err := s.Shutdown(wctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-wctx.Done():
			t.Error("Serve did not return")
		}
	})
	return &testServer{Server: s, path: path}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func okReport(phase string) *agent.Report {
	return &agent.Report{Phase: phase, App: "app", Result: agent.ResultOK, ExitCode: agent.ExitOK, Duration: 1500 * time.Millisecond,
		Summary: []string{"did " + phase}, Steps: []agent.StepReport{{Name: "block", Result: agent.ResultOK, Dur: 250 * time.Millisecond}}}
}

func sameJSON(t *testing.T, got, want *agent.Report) {
	t.Helper()
	if got == nil {
		t.Fatal("no report")
	}
	if g, w := string(got.JSON()), string(want.JSON()); g != w {
		t.Errorf("report:\n got %s\nwant %s", g, w)
	}
}

// eventually and syncBuffer: testkit's, under the names the tests use.
var eventually = testkit.Eventually

type syncBuffer = testkit.SyncBuffer

// blocker is a fake runner that writes "start <phase>", waits for release
// (or its ctx), writes "end <phase>" and reports ok; it counts its calls.
type blocker struct {
	release chan struct{}
	calls   atomic.Int32
	ctxErr  atomic.Value
}

func newBlocker() *blocker { return &blocker{release: make(chan struct{})} }

func (b *blocker) run(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
	b.calls.Add(1)
	fmt.Fprintf(progress, "start %s\n", phase)
	select {
	case <-b.release:
	case <-ctx.Done():
		b.ctxErr.Store(ctx.Err())
		return &agent.Report{Phase: phase, Result: agent.ResultFailed, ExitCode: agent.ExitFailed, Error: ctx.Err().Error(), Steps: []agent.StepReport{}}
	case <-time.After(10 * time.Second):
	}
	fmt.Fprintf(progress, "end %s\n", phase)
	return okReport(phase)
}

func TestServerRoundTrip(t *testing.T) {
	want := okReport("pre")
	var calls atomic.Int32
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		calls.Add(1)
		if phase != "pre" || opt.DryRun {
			t.Errorf("runner got %q %+v", phase, opt)
		}
		// Lines may come in pieces; the last one without its newline.
		io.WriteString(progress, "block: one\nstop: t")
		io.WriteString(progress, "wo\n\n")
		io.WriteString(progress, "three")
		return want
	}, nil)
	var progress bytes.Buffer
	got, err := Call(testCtx(t), srv.path, Request{Phase: "pre"}, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if p, w := progress.String(), "block: one\nstop: two\nthree\n"; p != w {
		t.Errorf("progress %q, want %q", p, w)
	}
	sameJSON(t, got, want)
	if got.Duration != want.Duration || got.Steps[0].Dur != want.Steps[0].Dur {
		t.Errorf("durations not restored: %s, %s", got.Duration, got.Steps[0].Dur)
	}
	if calls.Load() != 1 {
		t.Errorf("runner called %d times", calls.Load())
	}
}

// rawRequest connects and sends line as is.
func rawRequest(t *testing.T, path, line string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if line != "" {
		if _, err := io.WriteString(c, line); err != nil {
			t.Fatal(err)
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	return c, bufio.NewReader(c)
}

func readMessage(t *testing.T, r *bufio.Reader) Message {
	t.Helper()
	line, err := r.ReadBytes('\n')
	if err != nil {
		t.Fatalf("reading a message: %v (got %q)", err, line)
	}
	var m Message
	if err := json.Unmarshal(line, &m); err != nil {
		t.Fatalf("decoding %q: %v", line, err)
	}
	return m
}

func TestServerClientKilledMidPhaseKeepsThePhaseRunning(t *testing.T) {
	b := newBlocker()
	srv := startServer(t, nil, b.run, nil)
	c, r := rawRequest(t, srv.path, `{"phase":"pre"}`+"\n")
	if m := readMessage(t, r); m.Progress != "start pre" {
		t.Fatalf("first message %+v", m)
	}
	c.Close() // as a SIGKILLed hook would
	// The handler notices the hang-up and detaches.
	eventually(t, "the handler to detach", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		return len(srv.conns) == 0
	})
	phase, since, ok := srv.Running()
	if !ok || phase != "pre" || since.IsZero() {
		t.Fatalf("Running() = %q %v %v, want pre running", phase, since, ok)
	}
	close(b.release)
	if err := srv.Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := srv.Running(); ok {
		t.Error("still running after Wait")
	}
	if n := b.calls.Load(); n != 1 {
		t.Errorf("runner called %d times", n)
	}
	if err, _ := b.ctxErr.Load().(error); err != nil {
		t.Errorf("the phase was cancelled: %v", err)
	}
}

func TestServerJoinsTheRunningPhase(t *testing.T) {
	b := newBlocker()
	srv := startServer(t, nil, b.run, nil)
	ctx := testCtx(t)
	type result struct {
		rep *agent.Report
		err error
	}
	var p1, p2 syncBuffer
	r1, r2 := make(chan result, 1), make(chan result, 1)
	go func() {
		rep, err := Call(ctx, srv.path, Request{Phase: "pre"}, &p1)
		r1 <- result{rep, err}
	}()
	eventually(t, "the first pre to start", func() bool { return strings.Contains(p1.String(), "start pre") })
	go func() {
		rep, err := Call(ctx, srv.path, Request{Phase: "pre"}, &p2)
		r2 <- result{rep, err}
	}()
	eventually(t, "the second pre to join", func() bool { return strings.Contains(p2.String(), "joined the pre") })
	close(b.release)
	a, z := <-r1, <-r2
	if a.err != nil || z.err != nil {
		t.Fatalf("calls: %v, %v", a.err, z.err)
	}
	sameJSON(t, a.rep, okReport("pre"))
	sameJSON(t, z.rep, a.rep)
	if n := b.calls.Load(); n != 1 {
		t.Errorf("runner called %d times, want 1", n)
	}
	if got, want := p1.String(), "start pre\nend pre\n"; got != want {
		t.Errorf("first progress %q, want %q", got, want)
	}
	if got, want := p2.String(), "joined the pre already running in the patchagent daemon\nend pre\n"; got != want {
		t.Errorf("second progress %q, want %q", got, want)
	}
	// Finished: the next pre runs again.
	if _, err := Call(ctx, srv.path, Request{Phase: "pre"}, io.Discard); err != nil {
		t.Fatal(err)
	}
	if n := b.calls.Load(); n != 2 {
		t.Errorf("runner called %d times, want 2", n)
	}
}

func TestServerRunsDifferentPhasesAndDryRunsSide(t *testing.T) {
	var lock sync.Mutex // the phase lock, as the runner has it
	var inside, overlaps atomic.Int32
	var mu sync.Mutex
	calls := map[string]int{}
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		mu.Lock()
		calls[fmt.Sprintf("%s dry=%v", phase, opt.DryRun)]++
		mu.Unlock()
		if opt.DryRun {
			time.Sleep(100 * time.Millisecond) // overlapping dry runs must not join
			return &agent.Report{Phase: phase, Result: agent.ResultDryRun, Steps: []agent.StepReport{}}
		}
		lock.Lock()
		defer lock.Unlock()
		if inside.Add(1) > 1 {
			overlaps.Add(1)
		}
		time.Sleep(50 * time.Millisecond)
		inside.Add(-1)
		return okReport(phase)
	}, nil)
	ctx := testCtx(t)
	var wg sync.WaitGroup
	reqs := []Request{{Phase: "pre"}, {Phase: "post"}, {Phase: "exit", DryRun: true}, {Phase: "exit", DryRun: true}}
	for _, req := range reqs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, err := Call(ctx, srv.path, req, io.Discard)
			if err != nil {
				t.Errorf("%+v: %v", req, err)
				return
			}
			if rep.Phase != req.Phase {
				t.Errorf("%+v: report of %q", req, rep.Phase)
			}
		}()
	}
	wg.Wait()
	want := map[string]int{"pre dry=false": 1, "post dry=false": 1, "exit dry=true": 2}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Errorf("calls %v, want %v", calls, want)
	}
	if overlaps.Load() != 0 {
		t.Error("phases overlapped")
	}
}

func TestServerPanickingRunnerReportsInternalError(t *testing.T) {
	var n atomic.Int32
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		if n.Add(1) == 1 {
			panic("boom")
		}
		return okReport(phase)
	}, nil)
	ctx := testCtx(t)
	rep, err := Call(ctx, srv.path, Request{Phase: "exit"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ExitCode != agent.ExitFailed || rep.Result != agent.ResultFailed || !strings.Contains(rep.Error, "internal error") {
		t.Errorf("report %s", rep.JSON())
	}
	if _, err := Call(ctx, srv.path, Request{Phase: "exit"}, io.Discard); err != nil {
		t.Errorf("the server did not survive: %v", err)
	}
}

func TestServerRefusesMalformedRequests(t *testing.T) {
	var calls atomic.Int32
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		calls.Add(1)
		return okReport(phase)
	}, func(s *Server) { s.readTimeout = 200 * time.Millisecond })
	tests := []struct {
		name, send string
		closeWrite bool
		want       string
	}{
		{name: "bad JSON", send: "{phase\n", want: "decoding request"},
		{name: "not an object", send: "[\"pre\"]\n", want: "not a JSON object"},
		{name: "unknown field", send: `{"phase":"pre","now":true}` + "\n", want: `unknown field "now"`},
		{name: "force, not exit", send: `{"phase":"pre","force":true}` + "\n", want: "force: only exit can be forced, not pre"},
		{name: "reason without force", send: `{"phase":"exit","reason":"why"}` + "\n", want: "reason: only with force"},
		{name: "reason on two lines", send: `{"phase":"exit","force":true,"reason":"a\nb"}` + "\n", want: "reason: control characters"},
		{name: "force not a boolean", send: `{"phase":"exit","force":"yes"}` + "\n", want: "force: want true or false"},
		{name: "reason not a string", send: `{"phase":"exit","force":true,"reason":7}` + "\n", want: "reason: want a string"},
		{name: "wrong case", send: `{"Phase":"pre"}` + "\n", want: `unknown field "Phase"`},
		{name: "duplicate", send: `{"phase":"exit","phase":"pre"}` + "\n", want: "duplicate field"},
		{name: "wrong type", send: `{"phase":"pre","dry_run":"yes"}` + "\n", want: "dry_run"},
		{name: "trailing data", send: `{"phase":"pre"} {}` + "\n", want: "data after"},
		{name: "unknown phase", send: `{"phase":"reboot"}` + "\n", want: `unknown phase "reboot"`},
		{name: "no phase", send: `{}` + "\n", want: `unknown phase ""`},
		{name: "too long", send: `{"phase":"pre","x":"` + strings.Repeat("a", 5<<10) + "\"}\n", want: "longer than 4096"},
		{name: "too long, no newline", send: strings.Repeat("a", 5<<10), want: "longer than 4096"},
		{name: "silence", send: "", want: "no request line within 200ms"},
		{name: "no newline", send: `{"phase":"pre"}`, want: "no request line within"},
		{name: "closed before newline", send: `{"phase":"pre"}`, closeWrite: true, want: "connection closed before a complete request line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, r := rawRequest(t, srv.path, tt.send)
			if tt.closeWrite {
				c.(*net.UnixConn).CloseWrite()
			}
			m := readMessage(t, r)
			if !strings.Contains(m.Error, tt.want) || m.Report != nil || m.Progress != "" {
				t.Errorf("got %+v, want an error with %q", m, tt.want)
			}
			// Then the server closes (EOF, or ECONNRESET when our
			// request was left unread).
			if line, err := r.ReadBytes('\n'); err == nil {
				t.Errorf("more after the error: %q", line)
			}
		})
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("runner called %d times", n)
	}
	rep, err := Call(testCtx(t), srv.path, Request{Phase: "pre", DryRun: true}, io.Discard)
	if err != nil || rep.Phase != "pre" {
		t.Fatalf("a good request after the bad ones: %v", err)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"phase":"pre"}`, `{"phase":"exit","dry_run":true}`, `{"dry_run":false,"phase":"reconcile"}`,
		`{"phase":"post","dry_run":null}`, `{"PHASE":"pre"}`, `{"phase":"pre"}{}`, `{"phase":"pre","phase":"post"}`,
		`{"phase":["pre"]}`, `{"phase":"pr\u0065"}`, ` {"phase" : "pre" } `, `{`, `null`, `"pre"`, ``,
		`{"phase":"exit","force":true,"reason":"health URL wrong"}`, `{"phase":"exit","force":false}`, `{"phase":"post","force":true}`,
		`{"phase":"exit","reason":"x"}`, `{"phase":"exit","force":true,"reason":"a\tb"}`, `{"phase":"exit","force":true,"Force":true}`,
		`{"phase":"pre","config":"/etc/patchagent/config.yaml"}`, `{"phase":"pre","config":"config.yaml"}`, `{"phase":"pre","config":7}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		req, err := decodeRequest(line)
		if err != nil {
			if req != (Request{}) {
				t.Fatalf("error %v with a non-zero request %+v", err, req)
			}
			return
		}
		if !slices.Contains(agent.Phases, req.Phase) {
			t.Fatalf("accepted phase %q", req.Phase)
		}
		// What is accepted is exactly what the standard decoder sees.
		var std Request
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&std); err != nil || std != req {
			t.Fatalf("accepted %q as %+v; encoding/json: %+v, %v", line, req, std, err)
		}
		again, err := decodeRequest(mustJSON(t, req))
		if err != nil || again != req {
			t.Fatalf("round trip of %+v: %+v, %v", req, again, err)
		}
	})
}

func mustJSON(t *testing.T, v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestListenControl(t *testing.T) {
	dir := sockDir(t)
	path := filepath.Join(dir, "run", "patchagent.sock")
	ln, err := ListenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %s, want a socket 0600", fi.Mode())
	}
	if os.Geteuid() == 0 {
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || st.Gid != 0 {
			t.Errorf("socket owned by %d:%d", st.Uid, st.Gid)
		}
	}
	if di, err := os.Stat(filepath.Dir(path)); err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("socket dir: %v %v", di.Mode(), err)
	}
	// Live: refused, and the socket stays.
	if _, err := ListenControl(path); err == nil || !strings.Contains(err.Error(), "another daemon is listening") {
		t.Errorf("second listener: %v", err)
	}
	// Stale (the daemon was SIGKILLed: the file stays): replaced.
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("stale socket gone: %v", err)
	}
	ln2, err := ListenControl(path)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	ln2.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left the socket: %v", err)
	}
	// Not a socket: left alone.
	if err := os.WriteFile(path, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ListenControl(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a regular file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Error("the regular file was touched")
	}
}

func TestCallWithoutDaemon(t *testing.T) {
	dir := sockDir(t)
	ctx := testCtx(t)
	_, err := Call(ctx, filepath.Join(dir, "none.sock"), Request{Phase: "pre"}, io.Discard)
	if !errors.Is(err, ErrNoDaemon) {
		t.Errorf("no socket: %v", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err = Call(ctx, stale, Request{Phase: "pre"}, io.Discard); !errors.Is(err, ErrNoDaemon) {
		t.Errorf("nobody listening: %v", err)
	}
}

func TestServerShutdownLeavesThePhaseAndPhaseContextCancelsIt(t *testing.T) {
	b := newBlocker()
	phaseCtx, abandon := context.WithCancel(context.Background())
	defer abandon()
	srv := startServer(t, nil, b.run, func(s *Server) { s.SetPhaseContext(phaseCtx) })
	var progress syncBuffer
	done := make(chan error, 1)
	go func() {
		_, err := Call(testCtx(t), srv.path, Request{Phase: "post"}, &progress)
		done <- err
	}()
	eventually(t, "post to start", func() bool { return strings.Contains(progress.String(), "start post") })
	sctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown with a phase streaming: %v", err)
	}
	if _, err := os.Lstat(srv.path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after Shutdown: %v", err)
	}
	if err := <-done; err == nil {
		t.Error("Call survived the closed connection")
	}
	if phase, _, ok := srv.Running(); !ok || phase != "post" {
		t.Fatalf("Shutdown stopped the phase: %q %v", phase, ok)
	}
	abandon()
	if err := srv.Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if err, _ := b.ctxErr.Load().(error); !errors.Is(err, context.Canceled) {
		t.Errorf("phase ctx error %v, want canceled", err)
	}
}

func TestSubscriberDropsBeyondItsBacklog(t *testing.T) {
	p := &phaseExec{phase: "pre", subs: map[*subscriber]struct{}{}}
	slow, fast := newSubscriber(1000), newSubscriber(1000)
	p.subscribe(slow)
	p.subscribe(fast)
	for i := range 1500 {
		fmt.Fprintf(p, "line %d\n", i)
		if i == 499 {
			if lines, dropped, _ := fast.take(); len(lines) != 500 || dropped != 0 {
				t.Fatalf("fast: %d lines, %d dropped", len(lines), dropped)
			}
		}
	}
	p.finish(okReport("pre"))
	lines, dropped, rep := slow.take()
	if len(lines) != 1000 || lines[999] != "line 999" || dropped != 500 || rep == nil {
		t.Errorf("slow: %d lines (last %q), %d dropped, report %v", len(lines), lines[len(lines)-1], dropped, rep != nil)
	}
	lines, dropped, _ = fast.take()
	if len(lines) != 1000 || lines[0] != "line 500" || dropped != 0 {
		t.Errorf("fast: %d lines, %d dropped", len(lines), dropped)
	}
}

func TestServerSlowClientGetsADropMarker(t *testing.T) {
	release := make(chan struct{})
	srv := startServer(t, nil, func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		io.WriteString(progress, "first\n")
		<-release
		for i := range 3000 {
			fmt.Fprintf(progress, "line %d\n", i)
		}
		return okReport(phase)
	}, func(s *Server) { s.backlog = 10 })
	c, r := rawRequest(t, srv.path, `{"phase":"pre"}`+"\n")
	if m := readMessage(t, r); m.Progress != "first" {
		t.Fatalf("first %+v", m)
	}
	// Block the handler on a write the client does not read, then let
	// the phase write 3000 lines: it must not wait for the client.
	srv.Server.mu.Lock()
	for p := range srv.active {
		p.mu.Lock()
		for sub := range p.subs {
			sub.mu.Lock()
			sub.lines = append(sub.lines, strings.Repeat("x", 1<<20))
			sub.mu.Unlock()
			sub.signal()
		}
		p.mu.Unlock()
	}
	srv.Server.mu.Unlock()
	time.Sleep(50 * time.Millisecond)
	close(release)
	if err := srv.Wait(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var marker string
	var got *agent.Report
	for got == nil {
		m := readMessage(t, r)
		if strings.HasPrefix(m.Progress, "... (") {
			marker = m.Progress
		}
		got = m.Report
	}
	if !strings.HasSuffix(marker, "progress lines dropped)") {
		t.Errorf("no drop marker (last %q)", marker)
	}
}

// Running the control client as another user.

const clientHelperEnv = "PATCHAGENT_TEST_CONTROL_CLIENT"

// TestControlClientHelper is the client the non-root test runs as uid
// 65534; it does nothing in a normal run.
func TestControlClientHelper(t *testing.T) {
	path := os.Getenv(clientHelperEnv)
	if path == "" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Call(ctx, path, Request{Phase: "pre"}, io.Discard)
	fmt.Printf("RESULT uid=%d eacces=%v err=%v\n", os.Getuid(), errors.Is(err, syscall.EACCES), err)
}

func TestServerRefusesNonRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as uid 65534")
	}
	core, logs := observer.New(zapcore.InfoLevel)
	var calls atomic.Int32
	srv := startServer(t, zap.New(core), func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report {
		calls.Add(1)
		return okReport(phase)
	}, func(s *Server) { s.allowUID = 0 })
	// The test binary must be reachable by uid 65534.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(filepath.Dir(srv.path), "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Dir(srv.path), 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func() string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "-test.run=^TestControlClientHelper$", "-test.v")
		cmd.Dir = "/"
		cmd.Env = []string{clientHelperEnv + "=" + srv.path, "PATH=/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		for l := range strings.Lines(string(out)) {
			if strings.HasPrefix(l, "RESULT ") {
				return strings.TrimSpace(l)
			}
		}
		t.Fatalf("helper printed no result:\n%s", out)
		return ""
	}

	// The real mode: the kernel refuses the connect.
	got := asNobody()
	if !strings.Contains(got, "uid=65534 eacces=true") || !strings.Contains(got, "root-only") {
		t.Errorf("0600 socket: %s", got)
	}
	// Opened up by mistake: the peer credentials refuse.
	if err := os.Chmod(srv.path, 0o666); err != nil {
		t.Fatal(err)
	}
	got = asNobody()
	if !strings.Contains(got, "uid=65534 eacces=false") || !strings.Contains(got, "permission denied: uid 65534 is not root") {
		t.Errorf("0666 socket: %s", got)
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("runner called %d times for a non-root caller", n)
	}
	refused := logs.FilterMessage("control request refused: caller is not root").All()
	if len(refused) != 1 {
		t.Fatalf("refusals logged: %d", len(refused))
	}
	f := refused[0].ContextMap()
	if f["uid"] != uint32(65534) || f["pid"] == int32(0) || f["pid"] == nil {
		t.Errorf("refusal logged with %v", f)
	}
	// Root still served.
	if _, err := Call(testCtx(t), srv.path, Request{Phase: "pre"}, io.Discard); err != nil {
		t.Errorf("root refused: %v", err)
	}
}
