package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
	"github.com/patchagent/patchagent/firewall/lb"
	"github.com/patchagent/patchagent/firewall/lb/awslb"
	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// Build composes an Agent from cfg with the real seams: pm2 of the app user,
// iptables for each family, netlink sock_diag (falling back to /proc when
// the kernel refuses it), the state file and the phase lock in
// daemon.state_dir. It changes nothing on the node. A problem in what cfg
// names (user, pm2) is a configuration error.
func Build(cfg Config, log *zap.Logger, progress io.Writer, afterSave func(step string), m *Metrics) (*Agent, error) {
	pm2, u, path, err := newPM2(cfg, log)
	if err != nil {
		return nil, configError(err)
	}
	if u.UID == 0 {
		log.Warn("pm2 runs as root: set app.user (or app.dir owned by the app's user) if the app has its own user")
	}

	fw, err := newFirewall(cfg, log)
	if err != nil {
		return nil, err
	}
	hc, err := healthcheck.NewHTTP(cfg.Health.probeOptions())
	if err != nil {
		return nil, configError(fmt.Errorf("health: %w", err))
	}
	// Behind a load balancer: the readiness signal the daemon serves, in
	// service answering as the app's own health check.
	var rot Rotation
	if a := cfg.LB.AWS; cfg.LB.aws() {
		count, pct, _ := parseMinHealthy(a.MinHealthy) // validated
		rot = &awslb.TargetGroups{ARNs: a.TargetGroups.ARNs(), AutoTargetGroups: a.TargetGroups.Auto(),
			Standby: a.Standby == "auto", DecrementDesired: a.DecrementDesiredCapacity,
			Connect:    awslb.Connected(awslb.Endpoints{IMDS: a.Endpoints.IMDS, ELBv2: a.Endpoints.ELBv2, AutoScaling: a.Endpoints.AutoScaling, EC2: a.Endpoints.EC2}),
			MinHealthy: awslb.MinHealthy{Count: count, Percent: pct}}
	} else if h := cfg.LB.HAProxy; h.set() {
		rot = haproxies(h)
	} else if cfg.LB.HealthListen != "" {
		rot = lb.NewReadiness(hc, lb.Options{Interval: cfg.LB.Interval.D(), Unhealthy: cfg.LB.UnhealthyThreshold,
			Healthy: cfg.LB.HealthyThreshold, ProbeTimeout: cfg.Health.Timeout.D()})
	}
	run := &hooks.ExecRunner{}
	var pkgs Packages
	if cfg.App.Dir != "" {
		pkgs = &npmPackages{dir: cfg.App.Dir, uid: u.UID, log: log, npm: hooks.NewNPM(log, run, hooks.NPMConfig{
			Bin: cfg.App.NPM, User: u, Dir: cfg.App.Dir, Path: path, AllowRoot: u.UID == 0,
			FetchTimeout: cfg.Post.NPM.FetchTimeout.D(), FetchRetries: cfg.Post.NPM.FetchRetries,
		})}
	}
	return New(cfg, Deps{
		Log:          log,
		Firewall:     fw,
		Conns:        connSource(log),
		App:          pm2,
		AppUser:      u.Name,
		Health:       hc,
		HealthPolicy: healthcheck.Policy{Interval: cfg.Health.Interval.D(), Deadline: cfg.Health.Deadline.D(), Successes: cfg.Health.Successes},
		HealthName:   "health-check " + hc.String(),
		Units:        hooks.NewUnits(log, run, "", 0),
		Commands:     hooks.NewCommands(log, run, 0),
		Packages:     pkgs,
		Rotation:     rot,
		Metrics:      m,
		State:        NewStateStore(cfg.Daemon.StateDir),
		Lock:         NewPhaseLock(cfg.Daemon.StateDir),
		LockWait:     PhaseLockWait,
		BootID:       func() (string, error) { return ReadBootID(cfg.Daemon.BootIDFile) },
		Progress:     progress,
		AfterSave:    afterSave,
	}), nil
}

// haproxies is every HAProxy server to drive: each of lb.haproxy's servers
// in each of its instances.
func haproxies(h HAProxyConfig) lb.HAProxies {
	var hs lb.HAProxies
	for _, s := range h.sockets() {
		for _, bs := range h.servers() {
			b, srv, _ := strings.Cut(bs, "/") // validated
			hs = append(hs, &lb.HAProxy{Socket: s, Backend: b, Server: srv})
		}
	}
	return hs
}

// newPM2 is the app's pm2: that of the app's user (returned with the PATH
// pm2 and npm run with).
func newPM2(cfg Config, log *zap.Logger) (*hooks.PM2, hooks.AppUser, string, error) {
	u, err := appUser(cfg.App)
	if err != nil {
		return nil, u, "", err
	}
	bin, path, err := hooks.FindPM2(u, cfg.App.PM2)
	if err != nil {
		return nil, u, "", fmt.Errorf("app.pm2: %w", err)
	}
	return hooks.NewPM2(log, &hooks.ExecRunner{}, hooks.PM2Config{Bin: bin, User: u, Home: cfg.App.PM2Home, Path: path}), u, path, nil
}

// BuildStatus composes the Agent `patchagent status` reads through. Unlike
// Build it cannot fail: a seam it cannot make (no pm2, iptables unusable,
// or, when root is false, iptables at all: it needs root) is one whose
// reads fail with why, which Status reports.
func BuildStatus(cfg Config, log *zap.Logger, root bool) *Agent {
	pm2, u, _, err := newPM2(cfg, log)
	d := Deps{Log: log, State: NewStateStore(cfg.Daemon.StateDir), App: pm2, AppUser: cmp.Or(u.Name, cfg.App.User),
		BootID: func() (string, error) { return ReadBootID(cfg.Daemon.BootIDFile) }}
	if err != nil {
		d.App = unreadableApp{err: err}
	}
	d.Firewall = unreadableFirewall{err: ErrNeedsRoot}
	if root {
		if fw, err := newFirewall(cfg, log); err != nil {
			d.Firewall = unreadableFirewall{err: err}
		} else {
			d.Firewall = fw
		}
	}
	return New(cfg, d)
}

// unreadableFirewall and unreadableApp are the seams of BuildStatus that
// could not be made: Status reads only through Status and Processes, which
// fail with why; a call of any other method is a bug (nil interface).
type (
	unreadableFirewall struct {
		Firewall
		err error
	}
	unreadableApp struct {
		AppManager
		err error
	}
)

func (f unreadableFirewall) Status(context.Context) (firewall.Status, error) {
	return firewall.Status{}, f.err
}

func (a unreadableApp) Processes(context.Context, string) ([]hooks.Process, error) {
	return nil, a.err
}

// npmPackages is Packages for an npm app: hooks.NPM and hooks' snapshots.
type npmPackages struct {
	dir string
	uid uint32 // the app user, who runs npm
	log *zap.Logger
	npm *hooks.NPM
}

func (p *npmPackages) Check(ctx context.Context) error  { return p.npm.Check(ctx) }
func (p *npmPackages) Update(ctx context.Context) error { return p.npm.Update(ctx) }
func (p *npmPackages) UpgradeMajor(ctx context.Context) ([]string, error) {
	return p.npm.UpgradeMajor(ctx)
}

func (p *npmPackages) Lockfile() ([]byte, error) { return p.npm.Lockfile() }

func (p *npmPackages) Snapshot(dst string) (SnapshotInfo, error) {
	if err := os.RemoveAll(dst); err != nil {
		return SnapshotInfo{}, fmt.Errorf("removing the old snapshot %s: %w", dst, err)
	}
	_, st, err := hooks.TakeSnapshot(p.dir, dst)
	if err != nil {
		return SnapshotInfo{}, err
	}
	return SnapshotInfo{Files: st.Files, Bytes: st.Bytes, Copied: st.Copied, Hardlinked: st.Hardlinked, Took: st.Took}, nil
}

func (p *npmPackages) Restore(snapshot string) error {
	// An npm whose patchagent was killed mid-update may still run, in a
	// process group of its own: it would write into the tree being put
	// back. No npm of ours runs at a restore (post restores after its npm
	// ended; exit runs none).
	if pids := hooks.KillStrayNPM(p.dir, p.uid); len(pids) > 0 {
		p.log.Warn("killed an npm left running in the app dir before restoring its snapshot", zap.Ints("pids", pids))
	}
	return hooks.Snapshot{Dir: snapshot, App: p.dir}.Restore()
}

func (p *npmPackages) Prune(root string, keep int) (int, int64, error) {
	return hooks.PruneSnapshots(root, keep)
}

// appUser is the app user on this node (see NodeChecker.findAppUser), the
// error naming its key.
func appUser(c AppConfig) (hooks.AppUser, error) {
	u, key, _, err := HostNode().findAppUser(c)
	if err != nil {
		return u, fmt.Errorf("%s: %w", key, err)
	}
	return u, nil
}

// connSource prefers sock_diag and falls back to /proc/net/tcp{,6} when the
// kernel refuses netlink sock_diag (seccomp, no tcp_diag module).
func connSource(log *zap.Logger) firewall.ConnSource {
	sd := firewall.NewSockDiag()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := sd.Listening(ctx, []uint16{1}); errors.Is(err, firewall.ErrSockDiagUnavailable) {
		log.Warn("netlink sock_diag unavailable, reading /proc/net/tcp instead (no idleness data: only closed connections count as drained)", zap.Error(err))
		return &firewall.ProcNet{Root: "/proc"}
	}
	return sd
}

// newFirewall is the real Firewall of cfg's traffic section: iptables for
// each family, the other backend watched. It needs nothing but iptables
// and cfg, so that the boot re-block can use it before anything else.
func newFirewall(cfg Config, log *zap.Logger) (*firewall.Firewall, error) {
	fams := []firewall.Family{firewall.IPv4}
	if cfg.Traffic.IPv6 {
		fams = append(fams, firewall.IPv6)
	}
	tables := map[firewall.Family]firewall.Tables{}
	for _, f := range fams {
		t, err := firewall.NewTables(f, cfg.Traffic.LockWait.D())
		if err != nil {
			return nil, fmt.Errorf("nothing was changed: %s unusable: %w", f.Command(), err)
		}
		tables[f] = t
	}
	fw, err := firewall.New(log, tables, firewall.Rules{Ports: ports16(cfg.Traffic.Ports), Action: firewall.Action(cfg.Traffic.Action)})
	if err != nil {
		return nil, configError(err)
	}
	// A block made under a config that managed IPv6 (traffic.ipv6 turned
	// off during a cycle) is seen, and removed by exit.
	if !cfg.Traffic.IPv6 {
		if t, err := firewall.NewTables(firewall.IPv6, cfg.Traffic.LockWait.D()); err == nil {
			if err := fw.WatchUnmanaged(firewall.IPv6, t); err != nil {
				return nil, err
			}
		}
	}
	// A block made before the OS update switched the iptables backend is
	// seen, and removed by exit, through the other backend's binary.
	if others, err := firewall.OtherBackends([]firewall.Family{firewall.IPv4, firewall.IPv6}, cfg.Traffic.LockWait.D()); err != nil {
		log.Warn("the other iptables backend is not watched", zap.Error(err))
	} else {
		fw.WatchOtherBackends(others)
	}
	return fw, nil
}
