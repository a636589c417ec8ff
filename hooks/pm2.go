package hooks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Defaults for PM2Config's zero values.
const (
	DefaultPM2CallTimeout = 30 * time.Second
	DefaultPM2StopWait    = 5 * time.Second
	DefaultPM2Poll        = 50 * time.Millisecond
	// DefaultPM2Path ends every PATH given to pm2.
	DefaultPM2Path = "/usr/local/bin:/usr/bin:/bin"
)

// pm2 instance states, from pm2_env.status.
const (
	StatusOnline  = "online"
	StatusStopped = "stopped"
	StatusErrored = "errored"
)

var (
	// ErrDaemonNotRunning: the app user's pm2 daemon is not alive, so pm2 was
	// not run (it would have spawned a daemon of our own).
	ErrDaemonNotRunning = errors.New("pm2 daemon not running")
	// ErrUnknownApp: pm2 lists no process of that name.
	ErrUnknownApp = errors.New("unknown pm2 app")
)

// PM2Config says which pm2 to run, as whom, and where its daemon lives.
type PM2Config struct {
	Bin  string  // absolute path of pm2 (see FindPM2)
	User AppUser // pm2 runs as this user, with HOME=User.Home
	// Home is PM2_HOME (default User.Home+"/.pm2").
	Home string
	// Path is the PATH pm2 runs with; it must find node (default DefaultPM2Path).
	Path string
	// CallTimeout bounds each pm2 operation: a listing, a stop or a start
	// with the RPCs it takes (default DefaultPM2CallTimeout).
	CallTimeout time.Duration
	// StopWait bounds how long Stop waits, after pm2 stop, for the app's
	// processes to be gone (default DefaultPM2StopWait).
	StopWait time.Duration
	// Poll is the interval of that wait (default DefaultPM2Poll).
	Poll time.Duration
}

// Process is one pm2 instance of an app (cluster mode has several).
type Process struct {
	Name     string
	ID       int // pm_id
	PID      int // 0 when not running
	Status   string
	Restarts int // restart_time: pm2 adds one at every restart, crash or command
	// Started is pm_uptime, the last start by pm2's wall clock (Date.now()
	// in its daemon); zero if unknown. A step of the clock moves it.
	Started  time.Time
	ExecMode string // fork_mode or cluster_mode
	// MinUptime is pm2_env.min_uptime: pm2 counts an exit before the
	// instance has been up this long as an unstable restart. Zero when pm2
	// does not say (no min_uptime in the app's definition): pm2 then uses
	// PM2DefaultMinUptime.
	MinUptime time.Duration
}

// PM2DefaultMinUptime is the min_uptime pm2 applies to an app that sets
// none (God.js: 1000 ms).
const PM2DefaultMinUptime = time.Second

// PM2 drives the app user's pm2 daemon. It runs pm2 only while that daemon
// is alive, always as the user, with an explicit HOME, PM2_HOME and PATH.
type PM2 struct {
	log  *zap.Logger
	run  Runner
	cred *Credential
	cfg  PM2Config // defaults filled in
}

// NewPM2 returns a PM2 for c. It does not check anything yet.
func NewPM2(log *zap.Logger, run Runner, c PM2Config) *PM2 {
	c.Home = PM2Home(c.User, c.Home)
	if c.Path == "" {
		c.Path = DefaultPM2Path
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultPM2CallTimeout
	}
	if c.StopWait <= 0 {
		c.StopWait = DefaultPM2StopWait
	}
	if c.Poll <= 0 {
		c.Poll = DefaultPM2Poll
	}
	return &PM2{log: log.Named("pm2"), run: run, cred: c.User.Credential(), cfg: c}
}

// maxPidFile caps what is read of a pid file: pm2 writes a pid, a few
// bytes; anything longer is not one of its files.
const maxPidFile = 64

// DaemonAlive reports whether the user's pm2 daemon is running, without
// running pm2: $PM2_HOME/pm2.pid names a live process that is not a zombie,
// and $PM2_HOME/rpc.sock accepts a connection. Otherwise it returns an error
// wrapping ErrDaemonNotRunning.
//
// PM2_HOME is the app user's: pm2.pid is read with readUserFile (a regular
// file, no symlink, at most maxPidFile bytes) and rpc.sock is dialled with
// pm2Sock.dial (the socket entry itself, owned by the user), so a symlink
// there cannot point root elsewhere. Nor can a FIFO hold it past its
// deadline: every open is non-blocking (O_NONBLOCK for the pid file, O_PATH
// for the directories and the socket), what is read is a regular file of a
// few bytes, and the connect is bounded by a second.
func (p *PM2) DaemonAlive() error {
	b, err := readUserFile(p.cfg.Home, "pm2.pid", maxPidFile)
	if err != nil {
		return fmt.Errorf("%w (PM2_HOME=%s): reading pm2.pid: %w", ErrDaemonNotRunning, p.cfg.Home, pidFileErr(err))
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("%w (PM2_HOME=%s): pm2.pid holds no pid", ErrDaemonNotRunning, p.cfg.Home)
	}
	if !pidAlive(pid) {
		return fmt.Errorf("%w (PM2_HOME=%s): pid %d from pm2.pid is gone (stale pid file)", ErrDaemonNotRunning, p.cfg.Home, pid)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	conn, err := p.sock().dial(ctx)
	if err != nil {
		return fmt.Errorf("%w (PM2_HOME=%s): pid %d is alive but rpc.sock accepts no connection: %w", ErrDaemonNotRunning, p.cfg.Home, pid, err)
	}
	conn.Close()
	return nil
}

// pidFileErr adds why a symlink was refused: open(2) with O_NOFOLLOW says
// only ELOOP for a file and ENOTDIR for a directory.
func pidFileErr(err error) error {
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return fmt.Errorf("%w (symlinks below PM2_HOME are not followed)", err)
	}
	return err
}

// sock is the user's pm2 daemon's RPC socket.
func (p *PM2) sock() pm2Sock { return pm2Sock{home: p.cfg.Home, uid: p.cfg.User.UID} }

// Processes lists every pm2 instance named app. If pm2 lists none, the error
// wraps ErrUnknownApp.
func (p *PM2) Processes(ctx context.Context, app string) ([]Process, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	return p.processes(ctx, app)
}

// processes is Processes within the caller's deadline.
func (p *PM2) processes(ctx context.Context, app string) ([]Process, error) {
	if err := checkApp(app); err != nil {
		return nil, err
	}
	all, err := p.list(ctx)
	if err != nil {
		return nil, err
	}
	var out []Process
	for _, pr := range all {
		if pr.Name == app {
			out = append(out, pr)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w %q: pm2 (PM2_HOME=%s) lists %d other process(es)", ErrUnknownApp, app, p.cfg.Home, len(all))
	}
	return out, nil
}

// list is `pm2 jlist`: every process the daemon knows (getMonitorData).
func (p *PM2) list(ctx context.Context) ([]Process, error) {
	var entries []jlistEntry
	if err := p.call(ctx, "getMonitorData", []any{struct{}{}}, &entries); err != nil {
		return nil, fmt.Errorf("listing pm2 processes: %w", err)
	}
	procs := make([]Process, 0, len(entries))
	for _, e := range entries {
		pr := Process{
			Name:     e.Name,
			ID:       e.PMID,
			PID:      e.PID,
			Status:   e.PM2Env.Status,
			Restarts: e.PM2Env.RestartTime,
			ExecMode: e.PM2Env.ExecMode,
			// Checked by pm2's CLI when it read the app's definition
			// (a number of ms, or "2s", "1m", "1h", stored as ms), but
			// a string or nothing here is read rather than refused.
			MinUptime: parseMinUptime(e.PM2Env.MinUptime),
		}
		if e.PM2Env.PMUptime > 0 {
			pr.Started = time.UnixMilli(e.PM2Env.PMUptime)
		}
		procs = append(procs, pr)
	}
	return procs, nil
}

// Stop stops every instance of app as `pm2 stop app` does (stopWatch,
// stopProcessId and notifyByProcessId for each pm_id: pm2 sends SIGINT, then
// SIGKILL after the app's kill_timeout) and verifies that pm2 shows them
// stopped and that every process that was running is gone. It returns the
// instances as they were before the stop.
func (p *PM2) Stop(ctx context.Context, app string) ([]Process, error) {
	// The listing and the stops share one CallTimeout, as one `pm2 stop`
	// did; the verification has StopWait.
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	before, err := p.processes(cctx, app)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var pids []int
	for _, pr := range before {
		if pr.PID > 0 {
			pids = append(pids, pr.PID)
		}
		if pr.Status == StatusStopped {
			continue
		}
		if err := p.call(cctx, "stopWatch", []any{"stopProcessId", pr.ID}); err != nil {
			return nil, fmt.Errorf("stopping pm2 app %q (pm_id %d): %w", app, pr.ID, err)
		}
		if err := p.call(cctx, "stopProcessId", []any{pr.ID}); err != nil {
			return nil, fmt.Errorf("stopping pm2 app %q (pm_id %d): %w", app, pr.ID, err)
		}
		p.notify(cctx, "stop", pr.ID)
	}
	if err := p.verifyStopped(ctx, app, pids); err != nil {
		return nil, fmt.Errorf("stopping pm2 app %q: %w", app, err)
	}
	p.log.Info("app stopped", zap.String("app", app), zap.Ints("pids", pids),
		zap.Int("instances", len(before)), zap.Duration("took", time.Since(start)))
	return before, nil
}

// notify tells pm2's event bus (its log and modules) what was done to id, as
// the CLI does after an action. It is informational: a failure is logged.
func (p *PM2) notify(ctx context.Context, action string, id int) {
	arg := map[string]any{"id": id, "action_name": action, "manually": true}
	if err := p.call(ctx, "notifyByProcessId", []any{arg}); err != nil {
		p.log.Warn("pm2 event not sent", zap.String("action", action), zap.Int("pm_id", id), zap.Error(err))
	}
}

// verifyStopped waits, up to StopWait, until pm2 shows every instance of app
// stopped and none of pids is alive.
func (p *PM2) verifyStopped(ctx context.Context, app string, pids []int) error {
	wctx, cancel := context.WithTimeout(ctx, p.cfg.StopWait)
	defer cancel()
	tick := time.NewTicker(p.cfg.Poll)
	defer tick.Stop()
	var notStopped []Process
	var alive []int
	timedOut := func() error {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("verifying: %w", err)
		}
		if len(notStopped) > 0 {
			return fmt.Errorf("pm2 stop returned but after %s pm2 shows %s", p.cfg.StopWait, describe(notStopped))
		}
		return fmt.Errorf("pm2 shows the app stopped but pid(s) %v still alive after %s", alive, p.cfg.StopWait)
	}
	for {
		now, err := p.processes(wctx, app)
		if err != nil {
			// StopWait ran out during the listing.
			if notStopped != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
				return timedOut()
			}
			return fmt.Errorf("verifying: %w", err)
		}
		// An errored instance (pm2 gave up restarting it) is not running
		// either.
		notStopped = notIn(notIn(now, StatusStopped), StatusErrored)
		alive = alive[:0]
		for _, pid := range pids {
			if pidAlive(pid) {
				alive = append(alive, pid)
			}
		}
		if len(notStopped) == 0 && len(alive) == 0 {
			return nil
		}
		if notStopped == nil {
			notStopped = []Process{} // seen once: a later time-out reports it
		}
		select {
		case <-wctx.Done():
			return timedOut()
		case <-tick.C:
		}
	}
}

// Start starts the instances of app that are not online, by pm_id, as
// `pm2 start app` does for an app pm2 knows (restartProcessId with no
// environment change, which also resets pm2's unstable-restart count). An
// online instance is never restarted.
func (p *PM2) Start(ctx context.Context, app string) error {
	// The listing and the starts share one CallTimeout, as one `pm2 start`
	// did.
	ctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	procs, err := p.processes(ctx, app)
	if err != nil {
		return err
	}
	down := notIn(procs, StatusOnline)
	if len(down) == 0 {
		p.log.Info("app already online", zap.String("app", app), zap.Int("instances", len(procs)))
		return nil
	}
	var ids []int
	for _, pr := range down {
		arg := map[string]any{"id": pr.ID, "env": struct{}{}}
		if err := p.call(ctx, "restartProcessId", []any{arg}); err != nil {
			return fmt.Errorf("starting pm2 app %q (pm_id %d): %w", app, pr.ID, err)
		}
		p.notify(ctx, "restart", pr.ID)
		ids = append(ids, pr.ID)
	}
	p.log.Info("app started", zap.String("app", app), zap.Ints("pm_ids", ids))
	return nil
}

// call makes one RPC to the user's pm2 daemon, after checking that it is
// alive. The caller's deadline bounds it: each operation (a listing, a stop,
// a start) gives all its RPCs one CallTimeout.
func (p *PM2) call(ctx context.Context, method string, args []any, out ...any) error {
	if err := p.DaemonAlive(); err != nil {
		return err
	}
	start := time.Now()
	err := pm2Call(ctx, p.sock(), method, args, out...)
	p.log.Debug("pm2 rpc", zap.String("method", method), zap.Duration("took", time.Since(start)), zap.Error(err))
	return err
}

// pm2 runs the pm2 CLI with args as the user, after checking that the
// daemon is alive, with its own deadline. Only starting an app from its
// ecosystem file needs the CLI (it reads the file); the rest goes over the
// RPC socket.
func (p *PM2) pm2(ctx context.Context, args []string) (Result, error) {
	if err := p.DaemonAlive(); err != nil {
		return Result{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.CallTimeout)
	defer cancel()
	c := Cmd{
		Name: p.cfg.Bin,
		Args: args,
		Dir:  p.cfg.User.home(),
		Env:  []string{"HOME=" + p.cfg.User.home(), "PM2_HOME=" + p.cfg.Home, "PATH=" + p.cfg.Path},
		Cred: p.cred,
	}
	start := time.Now()
	res, err := p.run.Run(cctx, c)
	p.log.Debug("ran pm2", zap.String("command", args[0]), zap.Int("exit_code", res.ExitCode),
		zap.Duration("took", time.Since(start)))
	return res, err
}

// jlistEntry holds only the fields we use; pm2_env's other keys (the app's
// whole environment among them) are never decoded.
type jlistEntry struct {
	Name   string `json:"name"`
	PID    int    `json:"pid"`
	PMID   int    `json:"pm_id"`
	PM2Env struct {
		Status      string `json:"status"`
		PMUptime    int64  `json:"pm_uptime"`
		RestartTime int    `json:"restart_time"`
		ExecMode    string `json:"exec_mode"`
		// A number of ms as pm2 7 stores it, absent when the app's
		// definition sets none (see parseMinUptime).
		MinUptime json.RawMessage `json:"min_uptime"`
	} `json:"pm2_env"`
}

// maxMinUptime caps what is read of min_uptime: a longer window could never
// be waited for within health.deadline anyway, and the cap keeps the
// conversion to a Duration from overflowing.
const maxMinUptime = 24 * time.Hour

// parseMinUptime reads pm2_env.min_uptime: a number of milliseconds (what
// pm2 7 stores: `pm2 jlist` shows min_uptime 2500 for `min_uptime: 2500`,
// 3000 for "3s" and 1500 for "1500" in an ecosystem file [verified on pm2
// 7.0.4]), or, should a definition reach pm2 unconverted, a string in pm2's
// own format: digits, optionally followed by h, m or s. Anything else,
// absent, null, negative or not a number, is 0, and exit then holds the app
// to pm2's default (God.js takes only an undefined min_uptime for 1000 ms,
// and with a value it cannot compare calls no restart unstable: exit is the
// stricter of the two).
func parseMinUptime(raw json.RawMessage) time.Duration {
	if len(raw) == 0 {
		return 0
	}
	var ms float64
	if err := json.Unmarshal(raw, &ms); err != nil {
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return 0
		}
		s = strings.TrimSpace(s)
		unit := 1.0
		if n := len(s); n > 1 {
			switch s[n-1] {
			case 'h':
				unit, s = 3600e3, s[:n-1]
			case 'm':
				unit, s = 60e3, s[:n-1]
			case 's':
				unit, s = 1e3, s[:n-1]
			}
		}
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return 0
		}
		ms = v * unit
	}
	if math.IsNaN(ms) || ms <= 0 {
		return 0
	}
	if ms >= float64(maxMinUptime/time.Millisecond) {
		return maxMinUptime
	}
	return time.Duration(ms * float64(time.Millisecond))
}

// checkApp refuses names pm2 would read as something else: an option, every
// app ("all"), or a pm_id.
func checkApp(app string) error {
	switch {
	case app == "":
		return errors.New("pm2 app name is empty")
	case app == "all":
		return errors.New(`pm2 app name "all" would address every app`)
	case strings.HasPrefix(app, "-"):
		return fmt.Errorf("pm2 app name %q starts with '-'", app)
	case strings.ContainsFunc(app, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return fmt.Errorf("pm2 app name %q contains spaces or control characters", app)
	}
	if _, err := strconv.Atoi(app); err == nil {
		return fmt.Errorf("pm2 app name %q is a number, which pm2 reads as a pm_id", app)
	}
	return nil
}

func notIn(procs []Process, status string) []Process {
	var out []Process
	for _, pr := range procs {
		if pr.Status != status {
			out = append(out, pr)
		}
	}
	return out
}

func describe(procs []Process) string {
	parts := make([]string, len(procs))
	for i, pr := range procs {
		parts[i] = fmt.Sprintf("pm_id %d %s (pid %d)", pr.ID, pr.Status, pr.PID)
	}
	return strings.Join(parts, ", ")
}

// pidAlive reports whether pid is a live process: kill(pid, 0) does not say
// ESRCH and /proc/<pid> is there and not a zombie.
func pidAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return false
	}
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	st, err := parseProcStat(b)
	if err != nil {
		return true // there, but not in a format we know: not known dead
	}
	return !st.dead()
}

// PM2Home is the PM2_HOME pm2 runs with for u: configured (app.pm2_home)
// when set, else ~u/.pm2.
func PM2Home(u AppUser, configured string) string {
	if configured != "" {
		return configured
	}
	return filepath.Join(u.Home, ".pm2")
}

// FindPM2 finds pm2 for user u, and the PATH to run it with (it must find
// node). A configured path is used as it is (absolute, an executable file);
// otherwise pm2 is searched in ~/.npm-global/bin, nvm's
// ~/.nvm/versions/node/*/bin (the newest node first), /usr/local/bin,
// /usr/bin and /opt/*/bin, in that order. The PATH is the directory of pm2,
// that of its symlink target, the directory of node (found next to pm2,
// else in /usr/local/bin or /usr/bin), then DefaultPM2Path.
func FindPM2(u AppUser, configured string) (bin, path string, err error) {
	dirs := []string{}
	if u.Home != "" {
		dirs = append(dirs, filepath.Join(u.Home, ".npm-global", "bin"))
		dirs = append(dirs, nvmBins(filepath.Join(u.Home, ".nvm", "versions", "node"))...)
	}
	dirs = append(dirs, "/usr/local/bin", "/usr/bin")
	if opt, _ := filepath.Glob("/opt/*/bin"); len(opt) > 0 {
		dirs = append(dirs, opt...)
	}
	p := pathProbe{home: filepath.Clean(u.Home)}
	if u.Home != "" {
		if r, err := os.OpenRoot(u.Home); err == nil {
			defer r.Close()
			p.root = r
		}
	}
	return findPM2(p, configured, dirs, []string{"/usr/local/bin", "/usr/bin"})
}

// pathProbe stats paths for FindPM2: those in the app user's home through
// os.Root, so that a symlink of the user's (~/.npm-global/bin/pm2, a node
// version's bin) cannot point root's stat or symlink resolution outside
// the home; others as they are.
type pathProbe struct {
	home string
	root *os.Root // nil: no home to open
}

// rel is path relative to the home, if it is in it.
func (p pathProbe) rel(path string) (string, bool) {
	if p.root == nil {
		return "", false
	}
	rel, err := filepath.Rel(p.home, filepath.Clean(path))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", false
	}
	return rel, true
}

// executable is isExecutable, in the home through the root.
func (p pathProbe) executable(path string) error {
	rel, ok := p.rel(path)
	if !ok {
		return isExecutable(path)
	}
	fi, err := p.root.Stat(rel)
	if err != nil {
		return err
	}
	return modeExecutable(fi)
}

// realPath is filepath.EvalSymlinks of path's last components: in the
// home, link by link through the root, refusing one that leaves the home.
func (p pathProbe) realPath(path string) (string, error) {
	rel, ok := p.rel(path)
	if !ok {
		return filepath.EvalSymlinks(path)
	}
	for range maxSymlinks {
		fi, err := p.root.Lstat(rel)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			return filepath.Join(p.home, rel), nil
		}
		target, err := p.root.Readlink(rel)
		if err != nil {
			return "", err
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(p.home, filepath.Dir(rel), target)
		}
		if rel, ok = p.rel(target); !ok {
			return "", fmt.Errorf("%s: a symlink of the app user's leads out of %s", path, p.home)
		}
	}
	return "", fmt.Errorf("%s: too many symlinks", path)
}

func findPM2(p pathProbe, configured string, searchDirs, nodeDirs []string) (bin, path string, err error) {
	if configured != "" {
		if !filepath.IsAbs(configured) {
			return "", "", fmt.Errorf("pm2 %q: not an absolute path", configured)
		}
		if err := p.executable(configured); err != nil {
			return "", "", fmt.Errorf("pm2 %s: %w", configured, err)
		}
		bin = filepath.Clean(configured)
	} else {
		for _, d := range searchDirs {
			if c := filepath.Join(d, "pm2"); p.executable(c) == nil {
				bin = c
				break
			}
		}
		if bin == "" {
			return "", "", fmt.Errorf("finding pm2: not in %s (set app.pm2)", strings.Join(searchDirs, ", "))
		}
	}
	real, err := p.realPath(bin)
	if err != nil {
		return "", "", fmt.Errorf("pm2 %s: resolving symlinks: %w", bin, err)
	}
	pm2Dirs := []string{filepath.Dir(bin), filepath.Dir(real)}
	nodeDir := ""
	for _, d := range append(pm2Dirs, nodeDirs...) {
		if p.executable(filepath.Join(d, "node")) == nil {
			nodeDir = d
			break
		}
	}
	if nodeDir == "" {
		return "", "", fmt.Errorf("pm2 %s: no node next to it nor in %s", bin, strings.Join(nodeDirs, ", "))
	}
	var parts []string
	seen := map[string]bool{}
	for _, d := range append(append(pm2Dirs, nodeDir), filepath.SplitList(DefaultPM2Path)...) {
		if !seen[d] {
			seen[d] = true
			parts = append(parts, d)
		}
	}
	return bin, strings.Join(parts, string(filepath.ListSeparator)), nil
}

// nvmBins are the bin directories of the node versions nvm installed in
// dir (v20.11.1/bin, ...), the newest version first. dir is the app user's:
// it is walked as openDirPath walks (O_NOFOLLOW, only root's symlinks
// followed: a link of the user's cannot point root at a directory of its
// choosing), opened O_DIRECTORY (a FIFO in its place fails the open instead
// of blocking it), and only its names are read.
func nvmBins(dir string) []string {
	d, err := openDirPath(dir)
	if err != nil {
		return nil
	}
	defer d.Close()
	names, _ := d.f.Readdirnames(-1)
	versions := map[string][]int{}
	for _, n := range names {
		if v, ok := nodeVersion(n); ok {
			versions[n] = v
		}
	}
	bins := make([]string, 0, len(versions))
	for _, n := range slices.SortedFunc(maps.Keys(versions), func(a, b string) int { return slices.Compare(versions[b], versions[a]) }) {
		bins = append(bins, filepath.Join(dir, n, "bin"))
	}
	return bins
}

// nodeVersion reads the name nvm gives a node version's directory, v20.11.1.
func nodeVersion(name string) ([]int, bool) {
	rest, ok := strings.CutPrefix(name, "v")
	parts := strings.Split(rest, ".")
	if !ok || len(parts) != 3 {
		return nil, false
	}
	v := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, false
		}
		v[i] = n
	}
	return v, true
}

// CheckExecutable says why path cannot be run as a program (nil when it
// can): it must be a regular file, after symlinks, with an execute bit.
func CheckExecutable(path string) error {
	err := isExecutable(path)
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// isExecutable: path (after symlinks) is a regular file with an execute bit.
func isExecutable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	return modeExecutable(fi)
}

// modeExecutable says why fi is not a program (nil when it is).
func modeExecutable(fi fs.FileInfo) error {
	if !fi.Mode().IsRegular() {
		return errors.New("not a regular file")
	}
	if fi.Mode().Perm()&0o111 == 0 {
		return errors.New("not executable")
	}
	return nil
}

// StartFromArgs is the argv that starts app from source when pm2 does not
// know it: an ecosystem file (*.config.js, *.json, *.yml, *.yaml) started
// with --only app, or a script started under the name app.
func StartFromArgs(app, source string) []string {
	switch {
	case strings.HasSuffix(source, ".config.js"), strings.HasSuffix(source, ".config.cjs"),
		strings.HasSuffix(source, ".json"), strings.HasSuffix(source, ".yml"), strings.HasSuffix(source, ".yaml"):
		return []string{"start", source, "--only", app, "--no-color"}
	}
	return []string{"start", source, "--name", app, "--no-color"}
}

// StartFrom starts app from an ecosystem file or script, for when pm2 no
// longer knows it (its daemon was restarted without a saved dump). It
// refuses when pm2 knows the app already: Start is for that.
func (p *PM2) StartFrom(ctx context.Context, app, source string) error {
	if err := checkApp(app); err != nil {
		return err
	}
	if _, err := p.Processes(ctx, app); err == nil {
		return fmt.Errorf("starting %q from %s: pm2 knows it already", app, source)
	} else if !errors.Is(err, ErrUnknownApp) {
		return err
	}
	if _, err := p.pm2(ctx, StartFromArgs(app, source)); err != nil {
		return fmt.Errorf("starting pm2 app %q from %s: %w", app, source, err)
	}
	if _, err := p.Processes(ctx, app); err != nil {
		return fmt.Errorf("starting pm2 app %q from %s: %w", app, source, err)
	}
	p.log.Info("app started from its definition", zap.String("app", app), zap.String("source", source))
	return nil
}
