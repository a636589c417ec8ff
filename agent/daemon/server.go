package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/agent/internal/wait"
)

// The control socket protocol. A client (the hook commands `patchagent
// pre|post|exit`) connects, sends ONE request line (a JSON Request ending in
// a newline) and reads JSON lines (Messages) until the connection closes:
// progress lines, then exactly one report, or one error for a refused or
// malformed request.
//
// The phase runs in the daemon on its own goroutine, under the phase context
// (SetPhaseContext), never under the connection: SSM SIGKILLs the hook's
// process group on a hook timeout, and the phase must go on. A request for a
// phase that is already running joins it: the client gets {"joined":true},
// the rest of the progress and the same report. So after a killed `patchagent
// pre`, the next `patchagent pre` either joins the pre still running, or, if
// it has finished, runs pre again, which is idempotent and reports "ok"
// quickly.
const (
	// maxRequestLine bounds a request line (without its newline).
	maxRequestLine = 4 << 10
	// requestTimeout bounds the wait for the request line.
	requestTimeout = 5 * time.Second
	// messageWriteTimeout bounds each write to a client: a client that
	// does not read for that long is detached (the phase goes on).
	messageWriteTimeout = 30 * time.Second
	// clientBacklog is how many progress lines a client may fall behind
	// before lines are dropped for it (with a marker line).
	clientBacklog = 1000
	// maxProgressLine cuts longer progress lines.
	maxProgressLine = 16 << 10
	// msgShuttingDown is the error a request gets once Shutdown started;
	// Call maps it to ErrNoDaemon, so that the CLI runs the phase itself.
	msgShuttingDown = "daemon is shutting down"
)

// PhaseRunner runs one phase to completion and returns its report; progress
// receives live lines.
type PhaseRunner func(ctx context.Context, phase string, opt agent.RunOptions, progress io.Writer) *agent.Report

// Request is what a client asks of the daemon: one line of JSON.
type Request struct {
	Phase  string `json:"phase"`
	DryRun bool   `json:"dry_run,omitempty"`
	// Force (exit only) asks for the break-glass exit; Reason (with Force
	// only) is the operator's, logged and recorded with the caller's
	// credentials as the daemon reads them.
	Force  bool   `json:"force,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Config is the config file the hook command loaded (absolute): the
	// daemon runs phases with its own, so it refuses a request naming
	// another file (issue 13, R7).
	Config string `json:"config,omitempty"`
}

// Message is one line of the daemon's answer: a stream of progress lines,
// then exactly one Report (or one Error for a refused or malformed request).
// Joined says the request joined a run of the phase already in progress.
type Message struct {
	Progress string        `json:"progress,omitempty"`
	Joined   bool          `json:"joined,omitempty"`
	Report   *agent.Report `json:"report,omitempty"`
	Error    string        `json:"error,omitempty"`
}

// ListenControl makes the control socket at path: its directory is created
// (0755) if missing, a stale socket file (a socket nobody answers on) is
// removed, and the socket is restricted to root (0600, owned by root when
// the daemon runs as root). A socket a daemon answers on is an error
// ("another daemon is listening"), and so is a path that is not a socket.
// Between listen and chmod the mode is the umask's: the peer-credential
// check of the Server covers that instant. Closing the listener removes
// the file.
func ListenControl(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating control socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on control socket %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restricting control socket %s to root: %w", path, err)
	}
	if os.Geteuid() == 0 {
		if err := os.Lchown(path, 0, 0); err != nil {
			ln.Close()
			return nil, fmt.Errorf("giving control socket %s to root: %w", path, err)
		}
	}
	return ln, nil
}

// removeStaleSocket removes path if it is a socket nobody listens on.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("checking control socket %s: %w", path, err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("control socket %s: exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("control socket %s: another daemon is listening", path)
	case errors.Is(err, syscall.EAGAIN):
		// The backlog is full: someone is listening, busy.
		return fmt.Errorf("control socket %s: another daemon is listening (busy): %w", path, err)
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("probing control socket %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale control socket %s: %w", path, err)
	}
	return nil
}

// Server answers requests on the control socket.
type Server struct {
	log *zap.Logger
	ln  *net.UnixListener
	run PhaseRunner

	// Limits; tests shorten them.
	readTimeout  time.Duration
	writeTimeout time.Duration
	backlog      int
	// allowUID is the only peer uid served: root.
	allowUID uint32
	// config is the daemon's config file (ServeConfig); a request naming
	// another one is refused.
	config string

	mu       sync.Mutex
	phaseCtx context.Context
	active   map[*phaseExec]struct{}
	// byPhase holds the running real (not dry) run of each phase (by
	// phaseExec.key), the one a request joins.
	byPhase map[string]*phaseExec
	// idle is closed while no phase runs.
	idle     chan struct{}
	conns    map[*net.UnixConn]struct{}
	stopping bool
	// force is closed when Shutdown's ctx ended: handlers give up.
	force     chan struct{}
	forceOnce sync.Once
	handlers  sync.WaitGroup
}

// NewServer returns a Server answering on ln with run.
func NewServer(log *zap.Logger, ln *net.UnixListener, run PhaseRunner) *Server {
	idle := make(chan struct{})
	close(idle)
	return &Server{
		log: log.Named("server"), ln: ln, run: run,
		readTimeout: requestTimeout, writeTimeout: messageWriteTimeout, backlog: clientBacklog,
		phaseCtx: context.Background(),
		active:   map[*phaseExec]struct{}{}, byPhase: map[string]*phaseExec{},
		idle: idle, conns: map[*net.UnixConn]struct{}{}, force: make(chan struct{}),
	}
}

// SetPhaseContext sets the context phases run under (default
// context.Background()); the daemon cancels it to abandon a phase at
// shutdown. It applies to phases started afterwards.
func (s *Server) SetPhaseContext(ctx context.Context) {
	if ctx == nil {
		ctx = context.Background()
	}
	s.mu.Lock()
	s.phaseCtx = ctx
	s.mu.Unlock()
}

// Serve accepts connections until ctx ends or Shutdown is called; both
// return nil. Each connection is served on its own goroutine. Ending ctx
// only stops accepting: connections in progress go on (Shutdown waits for
// them) and phases go on (Wait, or cancel the phase context).
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, s.stopAccepting)
	defer stop()
	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if s.isStopping() {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accepting on control socket: %w", err)
			}
			// EMFILE and friends: back off and retry, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accepting a control connection", zap.Error(err), zap.Duration("retry_in", delay))
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.stopping {
			s.mu.Unlock()
			c.Close()
			return nil
		}
		s.conns[c] = struct{}{}
		s.handlers.Add(1)
		s.mu.Unlock()
		go s.handle(c)
	}
}

func (s *Server) isStopping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopping
}

// stopAccepting closes the listener (which removes the socket file).
func (s *Server) stopAccepting() {
	s.mu.Lock()
	already := s.stopping
	s.stopping = true
	s.mu.Unlock()
	if !already {
		s.ln.Close()
	}
}

// Shutdown stops accepting and waits, up to ctx, for the connection
// handlers to finish. Running phases are not cancelled (the daemon decides:
// Wait for them, or cancel the phase context), so a handler streaming a
// running phase keeps Shutdown waiting until that phase ends. When ctx ends
// first, the remaining connections are closed and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	if wait.Group(ctx, &s.handlers) {
		return nil
	}
	s.forceOnce.Do(func() { close(s.force) })
	s.mu.Lock()
	n := len(s.conns)
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.log.Warn("closed control connections at shutdown", zap.Int("connections", n))
	return fmt.Errorf("waiting for control connections: %w", ctx.Err())
}

// Running says which phase runs now, if any, and since when: the oldest
// real run (dry runs change nothing and are not reported). Two real runs
// can be in progress when one waits for the phase lock.
func (s *Server) Running() (phase string, since time.Time, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.active {
		if p.opt.DryRun {
			continue
		}
		if !ok || p.since.Before(since) {
			phase, since, ok = p.phase, p.since, true
		}
	}
	return phase, since, ok
}

// Wait waits until no phase runs, dry runs included, or ctx ends.
func (s *Server) Wait(ctx context.Context) error {
	s.mu.Lock()
	idle := s.idle
	s.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for the running phase: %w", ctx.Err())
	}
}

// handle serves one connection.
func (s *Server) handle(c *net.UnixConn) {
	defer s.handlers.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	req, caller, log, err := s.admit(c)
	if err != nil {
		s.send(c, Message{Error: err.Error()})
		return
	}
	p, sub, joined, err := s.start(req, caller)
	if err != nil {
		log.Info("control request refused", zap.String("phase", req.Phase), zap.Error(err))
		s.send(c, Message{Error: err.Error()})
		return
	}
	log.Info("control request", zap.String("phase", req.Phase), zap.Bool("dry_run", req.DryRun), zap.Bool("force", req.Force), zap.Bool("joined", joined))
	defer p.unsubscribe(sub)
	if joined {
		if err := s.send(c, Message{Joined: true}); err != nil {
			return
		}
	}
	s.stream(c, sub, req.Phase, log)
}

// admit reads the caller's credentials and request, and refuses what the
// daemon must not run: a caller other than root, a malformed request, a
// hook that loaded another config. The error is what the caller is told;
// admit has logged it.
func (s *Server) admit(c *net.UnixConn) (req Request, caller agent.Caller, log *zap.Logger, err error) {
	cred, err := peerCred(c)
	if err != nil {
		s.log.Warn("control request refused: no peer credentials", zap.Error(err))
		return req, caller, s.log, errors.New("refused: cannot read the caller's credentials")
	}
	log = s.log.With(zap.Int32("pid", cred.Pid), zap.Uint32("uid", cred.Uid))
	if cred.Uid != s.allowUID {
		log.Warn("control request refused: caller is not root")
		return req, caller, log, fmt.Errorf("permission denied: uid %d is not root", cred.Uid)
	}
	req, n, err := readRequest(c, s.readTimeout)
	if err != nil {
		if n == 0 && errors.Is(err, io.EOF) {
			// A bare connect: ListenControl of another daemon probing.
			log.Debug("control connection closed without a request")
		} else {
			log.Warn("malformed control request", zap.Error(err))
		}
		return req, caller, log, err
	}
	if err := s.sameConfig(req.Config); err != nil {
		log.Warn("control request refused", zap.String("phase", req.Phase), zap.Error(err))
		return req, caller, log, err
	}
	if req.Force {
		caller = agent.CallerOf(agent.ViaSocket, int(cred.Pid), cred.Uid)
		log.Warn("break-glass request: exit --force", append(caller.Fields(), zap.String("reason", req.Reason), zap.Bool("dry_run", req.DryRun))...)
	}
	return req, caller, log, nil
}

// stream sends the phase's progress lines, then its report, to the
// client; a client that went away ends it, not the phase.
func (s *Server) stream(c *net.UnixConn, sub *subscriber, phase string, log *zap.Logger) {
	// Notice a client that went away (SIGKILLed) now, not at the next
	// progress line. EOF alone may be a half-close (shutdown(SHUT_WR))
	// of a client still reading: only a hang-up counts then; otherwise
	// the next write finds out.
	gone := make(chan struct{})
	go func() {
		_ = c.SetReadDeadline(time.Time{})
		_, err := io.Copy(io.Discard, c)
		if err != nil || hungUp(c) {
			close(gone)
		}
	}()
	for {
		select {
		case <-sub.wake:
		case <-gone:
			log.Info("client left; the phase goes on", zap.String("phase", phase))
			return
		case <-s.force:
			return
		}
		lines, dropped, rep := sub.take()
		for _, l := range lines {
			if err := s.send(c, Message{Progress: l}); err != nil {
				return
			}
		}
		if dropped > 0 {
			if err := s.send(c, Message{Progress: fmt.Sprintf("... (%d progress lines dropped)", dropped)}); err != nil {
				return
			}
		}
		if rep != nil {
			_ = s.send(c, Message{Report: rep})
			return
		}
	}
}

// send writes one message line, bounded by the write timeout.
func (s *Server) send(c net.Conn, m Message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding control message: %w", err)
	}
	if err := c.SetWriteDeadline(time.Now().Add(s.writeTimeout)); err != nil {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	if _, err := c.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("writing control message: %w", err)
	}
	return nil
}

// hungUp tells whether the peer closed its end entirely.
func hungUp(c *net.UnixConn) bool {
	raw, err := c.SyscallConn()
	if err != nil {
		return true
	}
	hup := false
	if err := raw.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
			hup = fds[0].Revents&unix.POLLHUP != 0
		}
	}); err != nil {
		return true
	}
	return hup
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("getting socket fd: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, fmt.Errorf("getting socket fd: %w", err)
	}
	if cerr != nil {
		return nil, fmt.Errorf("reading SO_PEERCRED: %w", cerr)
	}
	return cred, nil
}

// ServeConfig tells s which config file the daemon runs with: requests
// naming another are refused.
func (s *Server) ServeConfig(path string) { s.config = path }

// ErrOtherConfig is the refusal of a request whose hook loaded another
// config file than the daemon's.
var ErrOtherConfig = errors.New("the daemon runs another config")

// sameConfig refuses a hook's config file that is not the daemon's own (by
// file identity: a symlink to it is the same), naming both: the phase would
// otherwise run, silently, with settings the operator did not name. A
// request naming none (an older CLI) is served.
func (s *Server) sameConfig(hook string) error {
	if hook == "" || s.config == "" {
		return nil
	}
	a, aerr := os.Stat(hook)
	b, berr := os.Stat(s.config)
	if aerr == nil && berr == nil && os.SameFile(a, b) {
		return nil
	}
	return fmt.Errorf("%w: the daemon runs %s, this command names %s: run it with --config %s, or restart the daemon (systemctl restart patchagent) with the other", ErrOtherConfig, s.config, hook, s.config)
}

// readRequest reads and decodes the request line within timeout; n is how
// many bytes were read.
func readRequest(c net.Conn, timeout time.Duration) (Request, int, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Request{}, 0, fmt.Errorf("setting read deadline: %w", err)
	}
	buf := make([]byte, 0, 512)
	chunk := make([]byte, 512)
	for {
		n, err := c.Read(chunk)
		buf = append(buf, chunk[:n]...)
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			if i > maxRequestLine {
				break
			}
			req, derr := decodeRequest(buf[:i])
			return req, len(buf), derr
		}
		if len(buf) > maxRequestLine {
			break
		}
		if err != nil {
			var ne net.Error
			switch {
			case errors.As(err, &ne) && ne.Timeout():
				return Request{}, len(buf), fmt.Errorf("no request line within %s", timeout)
			case errors.Is(err, io.EOF):
				return Request{}, len(buf), fmt.Errorf("connection closed before a complete request line: %w", err)
			}
			return Request{}, len(buf), fmt.Errorf("reading request: %w", err)
		}
	}
	return Request{}, len(buf), fmt.Errorf("request line longer than %d bytes", maxRequestLine)
}

// decodeRequest decodes one request line strictly: one JSON object whose
// keys are exactly "phase" (a string, a known phase) and optionally
// "dry_run" and "force" (booleans; force with exit only), "reason" (a
// string, with force only, one short line: CheckReason) and "config" (an
// absolute path: the hook's config file, which must be the daemon's), each
// once, and
// nothing after it. This is stricter than DisallowUnknownFields, which
// still matches keys case-insensitively and lets a duplicate key win
// silently.
func decodeRequest(line []byte) (Request, error) {
	req, err := decodeRequestObject(line)
	if err != nil {
		return Request{}, err
	}
	if !slices.Contains(agent.Phases, req.Phase) {
		return Request{}, fmt.Errorf("unknown phase %q: want pre, post, exit or reconcile", req.Phase)
	}
	if req.Force && req.Phase != "exit" {
		return Request{}, fmt.Errorf("force: only exit can be forced, not %s", req.Phase)
	}
	if req.Reason != "" && !req.Force {
		return Request{}, errors.New("reason: only with force")
	}
	if err := agent.CheckReason(req.Reason); err != nil {
		return Request{}, fmt.Errorf("decoding request: %w", err)
	}
	return req, nil
}

func decodeRequestObject(line []byte) (Request, error) {
	var req Request
	dec := json.NewDecoder(bytes.NewReader(line))
	tok, err := dec.Token()
	if err != nil {
		return req, fmt.Errorf("decoding request: %w", err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return req, errors.New("decoding request: not a JSON object")
	}
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return req, fmt.Errorf("decoding request: %w", err)
		}
		key, _ := tok.(string)
		if seen[key] {
			return req, fmt.Errorf("decoding request: duplicate field %q", key)
		}
		seen[key] = true
		v, err := dec.Token()
		if err != nil {
			return req, fmt.Errorf("decoding request: %w", err)
		}
		switch key {
		case "phase":
			s, ok := v.(string)
			if !ok {
				return req, errors.New("decoding request: phase: want a string")
			}
			req.Phase = s
		case "dry_run":
			b, ok := v.(bool)
			if !ok {
				return req, errors.New("decoding request: dry_run: want true or false")
			}
			req.DryRun = b
		case "force":
			b, ok := v.(bool)
			if !ok {
				return req, errors.New("decoding request: force: want true or false")
			}
			req.Force = b
		case "reason":
			s, ok := v.(string)
			if !ok {
				return req, errors.New("decoding request: reason: want a string")
			}
			req.Reason = s
		case "config":
			s, ok := v.(string)
			if !ok || !filepath.IsAbs(s) || len(s) > 4096 {
				return req, errors.New("decoding request: config: want an absolute path")
			}
			req.Config = s
		default:
			return req, fmt.Errorf("decoding request: unknown field %q", key)
		}
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return req, fmt.Errorf("decoding request: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return req, errors.New("decoding request: data after the request object")
	}
	return req, nil
}

// start joins the running real run of req.Phase, or starts a run; the
// subscriber receives its progress and report. A forced exit and a plain
// one never join each other: each runs on its own (the phase lock orders
// them); caller is who asked for a forced one.
func (s *Server) start(req Request, caller agent.Caller) (p *phaseExec, sub *subscriber, joined bool, err error) {
	sub = newSubscriber(s.backlog)
	key := req.Phase
	opt := agent.RunOptions{DryRun: req.DryRun}
	if req.Force {
		key += " --force"
		opt.Force = &agent.ForceOptions{Reason: req.Reason, Caller: caller}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !req.DryRun {
		if p := s.byPhase[key]; p != nil {
			p.subscribe(sub)
			return p, sub, true, nil
		}
	}
	if s.stopping {
		return nil, nil, false, errors.New(msgShuttingDown)
	}
	p = &phaseExec{phase: req.Phase, key: key, opt: opt, since: time.Now(), subs: map[*subscriber]struct{}{sub: {}}}
	if len(s.active) == 0 {
		s.idle = make(chan struct{})
	}
	s.active[p] = struct{}{}
	if !req.DryRun {
		s.byPhase[key] = p
	}
	go s.execute(s.phaseCtx, p)
	return p, sub, false, nil
}

// execute runs p to its end and hands its report to every subscriber.
func (s *Server) execute(ctx context.Context, p *phaseExec) {
	rep := s.runSafely(ctx, p)
	p.flush()
	s.mu.Lock()
	delete(s.active, p)
	if s.byPhase[p.key] == p {
		delete(s.byPhase, p.key)
	}
	if len(s.active) == 0 {
		close(s.idle)
	}
	s.mu.Unlock()
	p.finish(rep)
}

// runSafely runs the phase; a panic or a missing report becomes an
// "internal error" report (exit 1) and the server goes on.
func (s *Server) runSafely(ctx context.Context, p *phaseExec) (rep *agent.Report) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("phase runner panicked", zap.String("phase", p.phase), zap.Any("panic", v), zap.StackSkip("stack", 1))
			rep = agent.FailedReport(p.phase, time.Since(p.since), fmt.Errorf("internal error: the phase panicked: %v (see the daemon's journal)", v))
		}
	}()
	rep = s.run(ctx, p.phase, p.opt, p)
	if rep == nil {
		s.log.Error("phase runner returned no report", zap.String("phase", p.phase))
		rep = agent.FailedReport(p.phase, time.Since(p.since), errors.New("internal error: the phase returned no report"))
	}
	return rep
}

// phaseExec is one run of a phase: the progress writer its runner gets, and
// the clients attached to it.
type phaseExec struct {
	phase string
	// key is what a request joins: the phase, "exit --force" for a forced exit.
	key   string
	opt   agent.RunOptions
	since time.Time

	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	partial []byte
	report  *agent.Report
}

// Write splits progress into lines and hands each to every subscriber; it
// never blocks on a client. Empty lines are skipped, longer lines than
// maxProgressLine cut.
func (p *phaseExec) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			p.partial = append(p.partial, b...)
			break
		}
		p.partial = append(p.partial, b[:i]...)
		p.emitLocked(string(p.partial))
		p.partial = p.partial[:0]
		b = b[i+1:]
	}
	for len(p.partial) > maxProgressLine {
		p.emitLocked(string(p.partial[:maxProgressLine]))
		p.partial = append(p.partial[:0], p.partial[maxProgressLine:]...)
	}
	return n, nil
}

func (p *phaseExec) emitLocked(line string) {
	if line == "" {
		return
	}
	for sub := range p.subs {
		sub.push(line)
	}
}

// flush emits a last line the runner did not end.
func (p *phaseExec) flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.emitLocked(string(p.partial))
	p.partial = nil
}

func (p *phaseExec) subscribe(sub *subscriber) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.report != nil {
		sub.finish(p.report)
		return
	}
	p.subs[sub] = struct{}{}
}

func (p *phaseExec) unsubscribe(sub *subscriber) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.subs, sub)
}

func (p *phaseExec) finish(rep *agent.Report) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.report = rep
	for sub := range p.subs {
		sub.finish(rep)
	}
}

// subscriber is one client's queue of progress lines: bounded, so a slow
// client never holds up the phase; lines beyond the bound are counted and
// reported as dropped.
type subscriber struct {
	max  int
	wake chan struct{}

	mu      sync.Mutex
	lines   []string
	dropped int
	report  *agent.Report
}

func newSubscriber(max int) *subscriber {
	return &subscriber{max: max, wake: make(chan struct{}, 1)}
}

func (s *subscriber) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) push(line string) {
	s.mu.Lock()
	if len(s.lines) >= s.max {
		s.dropped++
	} else {
		s.lines = append(s.lines, line)
	}
	s.mu.Unlock()
	s.signal()
}

func (s *subscriber) finish(rep *agent.Report) {
	s.mu.Lock()
	s.report = rep
	s.mu.Unlock()
	s.signal()
}

// take returns the queued lines, how many were dropped after them, and the
// report once the run has ended (it comes after every line).
func (s *subscriber) take() (lines []string, dropped int, rep *agent.Report) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lines, dropped, rep = s.lines, s.dropped, s.report
	s.lines, s.dropped = nil, 0
	return lines, dropped, rep
}
