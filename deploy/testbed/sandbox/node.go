package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Bounds on the waits of this package.
const (
	pm2Timeout    = 60 * time.Second
	healthTimeout = 20 * time.Second
	healthAttempt = 2 * time.Second
	stopTimeout   = 10 * time.Second
	undoTimeout   = 60 * time.Second
)

// Node is a sandbox: a server netns running the sample app under pm2 as
// AppUser, and a client netns joined to it by a veth pair.
type Node struct {
	Opts                  Options
	ServerNS, ClientNS    string
	ServerV4, ServerV6    netip.Addr // server side of the veth
	ClientV4, ClientV6    netip.Addr // client side of the veth
	AppUser               string
	UID, GID              uint32 // 0 when the user does not exist (Attach)
	Home, PM2Home, AppDir string
	NodeBin, PM2Bin       string // absolute paths; NodeBin is "" if node is not in PATH

	srvLink, cliLink string
	userKnown        bool

	regMu      sync.Mutex
	registries []*Registry // started by this Node and not stopped yet
}

// AppInfo is the part of one `pm2 jlist` entry the sandbox uses. It never
// holds the app's environment.
type AppInfo struct {
	Name     string
	PID      int
	Status   string // online, stopped, stopping, launching, errored, ...
	Restarts int
}

// newNode validates o and fills in every derived field without side effects.
func newNode(o Options) (*Node, error) {
	o = o.WithDefaults()
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("validating sandbox options: %w", err)
	}
	n := &Node{
		Opts:     o,
		ServerNS: o.Prefix + "-srv",
		ClientNS: o.Prefix + "-cli",
		ServerV4: ServerV4, ServerV6: ServerV6,
		ClientV4: ClientV4, ClientV6: ClientV6,
		AppUser: o.AppUser,
		Home:    filepath.Join(o.Dir, "home"),
		AppDir:  filepath.Join(o.Dir, "app"),
		PM2Bin:  pm2BinIn(o.PM2Dir),
		srvLink: o.Prefix + "-s",
		cliLink: o.Prefix + "-c",
	}
	n.PM2Home = filepath.Join(n.Home, ".pm2")
	if p, err := exec.LookPath("node"); err == nil {
		if abs, err := filepath.Abs(p); err == nil {
			n.NodeBin = abs
		}
	}
	n.lookupUser()
	return n, nil
}

func (n *Node) lookupUser() {
	u, err := user.Lookup(n.AppUser)
	if err != nil {
		return
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil || uid == 0 {
		return
	}
	n.UID, n.GID, n.userKnown = uint32(uid), uint32(gid), true
}

// Attach describes the sandbox o names without changing anything. It fails
// only on invalid options; missing parts (user, namespaces, pm2) are allowed
// so that Teardown can clean up a half-built sandbox.
func Attach(o Options) (*Node, error) {
	return newNode(o)
}

// Setup builds the sandbox (or reuses what exists of it), writes a boot id
// to BootIDPath if there is none, starts the pm2 daemon as the app user
// inside the server netns, starts the app under pm2 unless it is online
// already, waits until /health-check answers 200 from the client netns over
// IPv4 and IPv6, and saves the pm2 dump (see StartApp). On failure it undoes
// what this call created, in reverse order.
func Setup(ctx context.Context, o Options) (_ *Node, err error) {
	n, err := newNode(o)
	if err != nil {
		return nil, err
	}
	if n.NodeBin == "" {
		return nil, errors.New("setting up sandbox: node not found in PATH")
	}
	var undo []func(context.Context) error
	defer func() {
		if err == nil {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), undoTimeout)
		defer cancel()
		var errs []error
		for i := len(undo) - 1; i >= 0; i-- {
			errs = append(errs, undo[i](uctx))
		}
		if uerr := errors.Join(errs...); uerr != nil {
			err = fmt.Errorf("%w (undoing: %w)", err, uerr)
		}
	}()
	step := func(name string) error {
		if n.Opts.afterStep != nil {
			if err := n.Opts.afterStep(name); err != nil {
				return fmt.Errorf("setting up sandbox after %s: %w", name, err)
			}
		}
		return nil
	}

	for _, ns := range []string{n.ServerNS, n.ClientNS} {
		if !NetnsExists(ns) {
			undo = append(undo, func(context.Context) error { return DeleteNetns(ns) })
		}
		if err := CreateNetns(ns); err != nil {
			return nil, fmt.Errorf("setting up sandbox: %w", err)
		}
	}
	if err := n.setupNetwork(ctx); err != nil {
		return nil, err
	}
	if err := step("network"); err != nil {
		return nil, err
	}

	created, err := n.ensureUser(ctx)
	if created {
		undo = append(undo, n.deleteUser)
	}
	if err != nil {
		return nil, err
	}
	if err := n.ensureFiles(&undo); err != nil {
		return nil, err
	}
	if err := n.ensureBootID(); err != nil {
		return nil, fmt.Errorf("setting up sandbox: %w", err)
	}
	if err := step("files"); err != nil {
		return nil, err
	}

	if n.PM2Bin, err = EnsurePM2(ctx, n.Opts.PM2Dir); err != nil {
		return nil, fmt.Errorf("setting up sandbox: %w", err)
	}
	if err := step("pm2"); err != nil {
		return nil, err
	}

	if n.DaemonPID() == 0 {
		undo = append(undo, n.stopDaemon)
	}
	if err := n.StartApp(ctx); err != nil {
		return nil, fmt.Errorf("setting up sandbox: %w", err)
	}
	if err := step("app"); err != nil {
		return nil, err
	}
	return n, nil
}

// SetupNetwork is Setup's network alone, for a server netns that runs
// something else than the sandbox's app (deploy/testbed/node boots a machine in
// it): it creates the two namespaces and the veth pair between them if
// missing, assigns the addresses and lets unprivileged users bind low ports
// inside the server netns. Client, Health, Probe and Load then work from
// the client netns; Teardown deletes the namespaces.
func (n *Node) SetupNetwork(ctx context.Context) error {
	for _, ns := range []string{n.ServerNS, n.ClientNS} {
		if err := CreateNetns(ns); err != nil {
			return fmt.Errorf("setting up sandbox: %w", err)
		}
	}
	return n.setupNetwork(ctx)
}

// setupNetwork creates the veth pair if missing, assigns the addresses and
// lets unprivileged users bind low ports inside the server netns.
func (n *Node) setupNetwork(ctx context.Context) error {
	if !linkExists(ctx, n.ServerNS, n.srvLink) {
		// A lone peer left in the client netns would block the name.
		if linkExists(ctx, n.ClientNS, n.cliLink) {
			if err := ipRun(ctx, "-n", n.ClientNS, "link", "del", n.cliLink); err != nil {
				return fmt.Errorf("setting up sandbox: %w", err)
			}
		}
		if err := createVeth(ctx, n.ServerNS, n.srvLink, n.ClientNS, n.cliLink); err != nil {
			return fmt.Errorf("setting up sandbox: %w", err)
		}
	}
	if err := configureLink(ctx, n.ServerNS, n.srvLink,
		netip.PrefixFrom(n.ServerV4, v4Bits), netip.PrefixFrom(n.ServerV6, v6Bits)); err != nil {
		return fmt.Errorf("setting up sandbox: %w", err)
	}
	if err := configureLink(ctx, n.ClientNS, n.cliLink,
		netip.PrefixFrom(n.ClientV4, v4Bits), netip.PrefixFrom(n.ClientV6, v6Bits)); err != nil {
		return fmt.Errorf("setting up sandbox: %w", err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(sctx, "ip", "netns", "exec", n.ServerNS,
		"sysctl", "-w", "net.ipv4.ip_unprivileged_port_start=0").CombinedOutput()
	if err != nil {
		return fmt.Errorf("setting up sandbox: setting ip_unprivileged_port_start in netns %s: %w: %s", n.ServerNS, err, tail(out))
	}
	return nil
}

// ensureUser creates the app user (system, nologin, own group) if missing.
func (n *Node) ensureUser(ctx context.Context) (created bool, err error) {
	if n.userKnown {
		return false, nil
	}
	if _, err := user.Lookup(n.AppUser); err == nil {
		return false, fmt.Errorf("setting up sandbox: user %s exists but is unusable (root uid or bad ids)", n.AppUser)
	}
	shell := "/usr/sbin/nologin"
	if _, err := os.Stat(shell); err != nil {
		shell = "/sbin/nologin"
	}
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(uctx, "useradd", "--system", "--user-group", "--no-create-home",
		"--home-dir", n.Home, "--shell", shell, n.AppUser).CombinedOutput()
	if err != nil {
		// A concurrent Setup (another prefix, same user) may have won the race.
		if n.lookupUser(); n.userKnown {
			return false, nil
		}
		return false, fmt.Errorf("setting up sandbox: creating user %s: %w: %s", n.AppUser, err, tail(out))
	}
	n.lookupUser()
	if !n.userKnown {
		return true, fmt.Errorf("setting up sandbox: user %s not found after useradd", n.AppUser)
	}
	return true, nil
}

func (n *Node) deleteUser(ctx context.Context) error {
	uctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// --force: a zombie of the user (left by an init that does not reap)
	// would otherwise make userdel refuse.
	out, err := exec.CommandContext(uctx, "userdel", "--force", n.AppUser).CombinedOutput()
	if err != nil {
		return fmt.Errorf("deleting user %s: %w: %s", n.AppUser, err, tail(out))
	}
	n.UID, n.GID, n.userKnown = 0, 0, false
	return nil
}

// ensureFiles creates Dir (root, 0755), Home, PM2Home and AppDir (owned by
// the user) and copies the sample app into AppDir. Directories this call
// creates are removed by undo.
func (n *Node) ensureFiles(undo *[]func(context.Context) error) error {
	if _, err := os.Stat(n.Opts.Dir); errors.Is(err, fs.ErrNotExist) {
		dir := n.Opts.Dir
		*undo = append(*undo, func(context.Context) error { return os.RemoveAll(dir) })
	}
	if err := mkdirAll0755(n.Opts.Dir); err != nil {
		return fmt.Errorf("setting up sandbox: creating %s: %w", n.Opts.Dir, err)
	}
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{{n.Home, 0o750}, {n.PM2Home, 0o750}, {n.AppDir, 0o755}} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("setting up sandbox: creating %s: %w", d.path, err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("setting up sandbox: %w", err)
		}
		if err := os.Lchown(d.path, int(n.UID), int(n.GID)); err != nil {
			return fmt.Errorf("setting up sandbox: %w", err)
		}
	}
	for _, name := range []string{"server.js", "package.json"} {
		b, err := assets.ReadFile("app/" + name)
		if err != nil {
			return fmt.Errorf("setting up sandbox: reading embedded app: %w", err)
		}
		dst := filepath.Join(n.AppDir, name)
		if cur, err := os.ReadFile(dst); err != nil || !bytes.Equal(cur, b) {
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return fmt.Errorf("setting up sandbox: writing %s: %w", dst, err)
			}
		}
		if err := os.Lchown(dst, int(n.UID), int(n.GID)); err != nil {
			return fmt.Errorf("setting up sandbox: %w", err)
		}
	}
	return nil
}

// Teardown stops the registries (Registry.Stop, and a verdaccio of this
// node left by another process), stops pm2 (`pm2 kill` as the user),
// SIGKILLs whatever is left of the daemon named by PM2Home/pm2.pid and its
// descendants, and deletes both namespaces. The user, the state dir and the pm2 install are kept. It is
// idempotent and works on a half-built sandbox.
func (n *Node) Teardown(ctx context.Context) error {
	errs := []error{n.stopRegistries(ctx), n.stopDaemon(ctx)}
	for _, ns := range []string{n.ServerNS, n.ClientNS} {
		errs = append(errs, DeleteNetns(ns))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tearing down sandbox %s: %w", n.Opts.Prefix, err)
	}
	return nil
}

// InServer runs fn on a thread inside the server netns (see InNetns).
func (n *Node) InServer(fn func() error) error { return InNetns(n.ServerNS, fn) }

// InClient runs fn on a thread inside the client netns (see InNetns).
func (n *Node) InClient(fn func() error) error { return InNetns(n.ClientNS, fn) }

// pm2Env is the whole environment of every pm2 command.
func (n *Node) pm2Env(extra ...string) []string {
	return n.userEnv(append([]string{"PM2_HOME=" + n.PM2Home}, extra...)...)
}

// userEnv is HOME and a PATH holding node's dir, plus extra: the whole
// environment of what the sandbox runs as the app user.
func (n *Node) userEnv(extra ...string) []string {
	path := "/usr/bin:/bin"
	if d := filepath.Dir(n.NodeBin); d != "/usr/bin" && d != "/bin" {
		path = d + ":" + path
	}
	return append([]string{"HOME=" + n.Home, "PATH=" + path}, extra...)
}

// PM2 runs the pinned pm2 with args (argv, no shell) as the app user inside
// the server netns, with only HOME, PM2_HOME and PATH set, and returns its
// stdout. It refuses to run pm2 as root. Note that any pm2 command spawns
// the daemon if it is not running.
func (n *Node) PM2(ctx context.Context, args ...string) ([]byte, error) {
	return n.pm2(ctx, nil, args...)
}

func (n *Node) pm2(ctx context.Context, extraEnv []string, args ...string) ([]byte, error) {
	what := "pm2 " + strings.Join(args, " ")
	if err := n.canRunAsUser(); err != nil {
		return nil, fmt.Errorf("running %s: %w", what, err)
	}
	return n.runAsUser(ctx, pm2Timeout, what, n.PM2Bin, n.Home, n.pm2Env(extraEnv...), args)
}

// canRunAsUser reports what is missing to run node programs (pm2, npm,
// verdaccio) as the app user inside the server netns: the user, node, the
// netns.
func (n *Node) canRunAsUser() error {
	switch {
	case !n.userKnown || n.UID == 0:
		return fmt.Errorf("app user %s does not exist", n.AppUser)
	case n.NodeBin == "":
		return errors.New("node not found in PATH")
	case !NetnsExists(n.ServerNS):
		return fmt.Errorf("netns %s does not exist", n.ServerNS)
	}
	return nil
}

// runAsUser runs bin with args as the app user inside the server netns, in
// dir with exactly env, bounded by timeout (its process group is killed at
// the end), and returns its stdout; what names it in errors.
func (n *Node) runAsUser(ctx context.Context, timeout time.Duration, what, bin, dir string, env, args []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr bytes.Buffer
	err := n.InServer(func() error {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Env = env
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: n.UID, Gid: n.GID, Groups: []uint32{}},
			Setpgid:    true,
		}
		// A pm2 daemon calls setsid, so killing the CLI's group never
		// reaches it.
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 5 * time.Second
		return cmd.Run()
	})
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("running %s as %s in netns %s: %w: %s %s",
			what, n.AppUser, n.ServerNS, err, tail(stderr.Bytes()), tail(stdout.Bytes()))
	}
	return stdout.Bytes(), nil
}

// apps lists the pm2 apps (`pm2 jlist`). Like every pm2 command it spawns
// the daemon if none runs.
func (n *Node) apps(ctx context.Context) ([]AppInfo, error) {
	out, err := n.PM2(ctx, "jlist")
	if err != nil {
		return nil, err
	}
	return parseJlist(out)
}

// parseJlist decodes `pm2 jlist` output, skipping any banner before the JSON
// line. Errors never quote the output: it holds the apps' environment.
func parseJlist(out []byte) ([]AppInfo, error) {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		l := bytes.TrimSpace(lines[i])
		if len(l) == 0 || l[0] != '[' {
			continue
		}
		var raw []struct {
			Name   string `json:"name"`
			PID    int    `json:"pid"`
			PM2Env struct {
				Status      string `json:"status"`
				RestartTime int    `json:"restart_time"`
			} `json:"pm2_env"`
		}
		if err := json.Unmarshal(l, &raw); err != nil {
			continue
		}
		apps := make([]AppInfo, 0, len(raw))
		for _, r := range raw {
			apps = append(apps, AppInfo{Name: r.Name, PID: r.PID, Status: r.PM2Env.Status, Restarts: r.PM2Env.RestartTime})
		}
		return apps, nil
	}
	return nil, fmt.Errorf("parsing pm2 jlist: no JSON array in %d bytes of output", len(out))
}

// App returns the sandbox app's pm2 entry; ok is false if pm2 does not know it.
func (n *Node) App(ctx context.Context) (info AppInfo, ok bool, err error) {
	apps, err := n.apps(ctx)
	if err != nil {
		return AppInfo{}, false, err
	}
	for _, a := range apps {
		if a.Name == n.Opts.AppName {
			return a, true, nil
		}
	}
	return AppInfo{}, false, nil
}

// appEnv is what `pm2 start` adds to pm2Env; pm2 hands the CLI's env to the app.
func (n *Node) appEnv() []string {
	env := []string{"PORT=" + portString(n.Opts.Port)}
	for k, v := range n.Opts.Env {
		env = append(env, k+"="+v)
	}
	return env
}

// StartApp starts the pm2 daemon (as the user, in the server netns) if it is
// not running, starts the app unless it is online already (a `pm2 start` of
// an online app would restart it), and waits until it is healthy. Then, as
// an operator does after `pm2 startup`, it runs `pm2 save` (if it started
// the app or no dump exists) so that `pm2 resurrect` (Reboot) brings the app
// back.
func (n *Node) StartApp(ctx context.Context) error {
	if _, err := n.PM2(ctx, "ping"); err != nil {
		return fmt.Errorf("starting app: %w", err)
	}
	info, ok, err := n.App(ctx)
	if err != nil {
		return fmt.Errorf("starting app: %w", err)
	}
	started := true
	switch {
	case !ok:
		err = n.launchApp(ctx)
	case info.Status != "online":
		_, err = n.pm2(ctx, n.appEnv(), "restart", n.Opts.AppName, "--update-env")
	default:
		started = false
	}
	if err != nil {
		return fmt.Errorf("starting app: %w", err)
	}
	if err := n.WaitHealthy(ctx, healthTimeout); err != nil {
		return fmt.Errorf("starting app: %w", err)
	}
	if _, err := os.Stat(n.dumpPath()); started || err != nil {
		if _, err := n.PM2(ctx, "save"); err != nil {
			return fmt.Errorf("starting app: %w", err)
		}
	}
	return nil
}

// dumpPath is pm2's dump file (PM2Home/dump.pm2), written by `pm2 save` and
// read by `pm2 resurrect`.
func (n *Node) dumpPath() string { return filepath.Join(n.PM2Home, "dump.pm2") }

// KillPM2 runs `pm2 kill` as the user, which stops the app and the daemon
// (what a reboot does to pm2), and waits until the daemon is gone. It does
// nothing if the daemon is not running.
func (n *Node) KillPM2(ctx context.Context) error {
	pid := n.DaemonPID()
	if pid == 0 {
		return nil
	}
	if _, err := n.PM2(ctx, "kill"); err != nil {
		return fmt.Errorf("killing pm2: %w", err)
	}
	if err := waitGone(ctx, []int{pid}, stopTimeout); err != nil {
		return fmt.Errorf("killing pm2: %w", err)
	}
	return nil
}

// DaemonPID returns the pid in PM2Home/pm2.pid if that process is alive and
// runs as the app user, else 0. It never spawns anything.
func (n *Node) DaemonPID() int {
	if !n.userKnown {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(n.PM2Home, "pm2.pid"))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0
	}
	if uid, ok := procUID(pid); !ok || uid != n.UID || !procAlive(pid) {
		return 0
	}
	return pid
}

// procAlive reports whether pid exists and is not a zombie (this machine's
// init may never reap the orphaned daemon).
func procAlive(pid int) bool {
	st := procState(pid)
	return st != "" && st != "Z"
}

// stopDaemon runs `pm2 kill` and then SIGKILLs what is left of the daemon
// recorded in pm2.pid and of its descendants.
func (n *Node) stopDaemon(ctx context.Context) error {
	pid := n.DaemonPID()
	if pid == 0 {
		return nil
	}
	var errs []error
	if _, err := os.Stat(n.PM2Bin); err == nil && NetnsExists(n.ServerNS) {
		if _, err := n.PM2(ctx, "kill"); err != nil {
			errs = append(errs, err)
		}
	}
	if uid, ok := procUID(pid); ok && uid == n.UID && procAlive(pid) {
		pids := append([]int{pid}, descendants(pid)...)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		if err := waitGone(ctx, pids, stopTimeout); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stopping pm2 daemon %d: %w", pid, err)
	}
	return nil
}

// procUID returns the real uid of pid from /proc/<pid>/status.
func procUID(pid int) (uint32, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "Uid:" {
			u, err := strconv.ParseUint(f[1], 10, 32)
			return uint32(u), err == nil
		}
	}
	return 0, false
}

// procState returns the state letter of pid ("Z" for a zombie), "" if gone.
func procState(pid int) string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// descendants lists every live descendant of pid.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if pp, err := strconv.Atoi(f[1]); err == nil {
			children[pp] = append(children[pp], p)
		}
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// waitGone waits until every pid has exited (zombies count as gone).
func waitGone(ctx context.Context, pids []int, max time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		var alive []int
		for _, p := range pids {
			if procAlive(p) {
				alive = append(alive, p)
			}
		}
		if len(alive) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for pids %v to exit: %w", alive, ctx.Err())
		case <-t.C:
		}
	}
}

// transport returns an http.Transport whose sockets are opened in the client
// netns, restricted to IPv6 or IPv4, with no proxy.
func (n *Node) transport(v6, keepAlive bool) *http.Transport {
	network := "tcp4"
	if v6 {
		network = "tcp6"
	}
	return nsTransport(n.ClientNS, network, keepAlive)
}

// nsTransport returns an http.Transport whose sockets are opened in netns
// ns over network ("tcp", "tcp4" or "tcp6"), with no proxy.
func nsTransport(ns, network string, keepAlive bool) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			var c net.Conn
			err := InNetns(ns, func() error {
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
		DisableKeepAlives:   !keepAlive,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	}
}

// Client returns an http.Client that connects from the client netns, over
// IPv6 if v6 else IPv4 (use the matching URL). It has no timeout: bound
// requests with their context.
func (n *Node) Client(v6 bool) *http.Client {
	return &http.Client{Transport: n.transport(v6, true)}
}

// Health does one GET /health-check from the client netns and returns nil
// on 200. If the app env has TLS_CERT (see TLSEnv) it uses HTTPS and trusts
// only that certificate.
func (n *Node) Health(ctx context.Context, v6 bool) error {
	ctx, cancel := context.WithTimeout(ctx, healthAttempt)
	defer cancel()
	u := n.URL("/health-check", v6)
	tr := n.transport(v6, false)
	defer tr.CloseIdleConnections()
	if ca := n.Opts.Env["TLS_CERT"]; ca != "" {
		u = n.HTTPSURL("/health-check", v6)
		cfg, err := caConfig(ca)
		if err != nil {
			return fmt.Errorf("probing %s: %w", u, err)
		}
		tr.TLSClientConfig = cfg
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("probing %s: %w", u, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("probing %s: %w", u, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probing %s: status %d", u, resp.StatusCode)
	}
	return nil
}

// AppStartTime is the app's own start-to-healthy time, unblocked, seen
// from outside: it runs `pm2 stop` then `pm2 start` on the app and polls
// Health over IPv4 every 5 ms; it returns the time from the start of `pm2
// start` to the first 200, and fails if none comes within max.
func (n *Node) AppStartTime(ctx context.Context, max time.Duration) (time.Duration, error) {
	if _, err := n.PM2(ctx, "stop", n.Opts.AppName); err != nil {
		return 0, fmt.Errorf("measuring the app's start: %w", err)
	}
	t0 := time.Now()
	if _, err := n.PM2(ctx, "start", n.Opts.AppName); err != nil {
		return 0, fmt.Errorf("measuring the app's start: %w", err)
	}
	ctx, cancel := context.WithDeadline(ctx, t0.Add(max))
	defer cancel()
	for {
		err := n.Health(ctx, false)
		if err == nil {
			return time.Since(t0), nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("measuring the app's start: not healthy within %s of pm2 start: %w", max, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// WaitHealthy polls Health over IPv4 and IPv6 every 100 ms until both pass,
// for at most max.
func (n *Node) WaitHealthy(ctx context.Context, max time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, max)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := errors.Join(n.Health(ctx, false), n.Health(ctx, true))
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the app to become healthy (%s): %w", max, err)
		case <-t.C:
		}
	}
}
