package sandbox

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// iptablesTimeout bounds each iptables command Reboot runs.
const iptablesTimeout = 15 * time.Second

// BootIDPath is the file holding this node's boot id (Dir/boot_id), the
// sandbox's stand-in for /proc/sys/kernel/random/boot_id: Setup creates it if
// missing and Reboot writes a fresh one.
func (n *Node) BootIDPath() string { return filepath.Join(n.Opts.Dir, "boot_id") }

// BootID returns the current boot id from BootIDPath.
func (n *Node) BootID() (string, error) {
	b, err := os.ReadFile(n.BootIDPath())
	if err != nil {
		return "", fmt.Errorf("reading boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ensureBootID writes a boot id unless BootIDPath exists already.
func (n *Node) ensureBootID() error {
	if _, err := os.Stat(n.BootIDPath()); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("checking boot id: %w", err)
	}
	return n.writeBootID()
}

// writeBootID writes a new random boot id (the kernel's format, a version 4
// UUID, plus a newline) to BootIDPath.
func (n *Node) writeBootID() error {
	if err := writeFileAtomic(n.BootIDPath(), []byte(newUUID()+"\n"), 0o644, 0, 0); err != nil {
		return fmt.Errorf("writing boot id: %w", err)
	}
	return nil
}

func newUUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics instead)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// SetAppEnv is a test fixture: it replaces the app's extra environment
// (Options.Env) with env and relaunches the app under pm2 with it
// (`pm2 delete` then `pm2 start`, so removed keys are gone too, unlike
// `restart --update-env`, which merges), then runs `pm2 save` so that a
// resurrect (Reboot) restores the new env. The pm2 daemon must be running;
// it is never spawned here. SetAppEnv returns once pm2 lists the app,
// without waiting for health: a bad HEALTH_MODE never becomes healthy, a
// START_DELAY_MS app refuses connections for a while. Use WaitHealthy.
func (n *Node) SetAppEnv(ctx context.Context, env map[string]string) error {
	o := n.Opts
	o.Env = maps.Clone(env)
	if err := o.Validate(); err != nil {
		return fmt.Errorf("setting app env: %w", err)
	}
	if n.DaemonPID() == 0 {
		return errors.New("setting app env: the pm2 daemon is not running (start it with StartApp)")
	}
	n.Opts.Env = o.Env
	// One pm2 call fewer than asking jlist first: a missing app is fine.
	// (The error quotes pm2's output: "Process or Namespace X not found".)
	if _, err := n.PM2(ctx, "delete", n.Opts.AppName); err != nil && !strings.Contains(err.Error(), "not found") {
		return fmt.Errorf("setting app env: %w", err)
	}
	// `pm2 start` exits 0 once the daemon has launched the process.
	if err := n.launchApp(ctx); err != nil {
		return fmt.Errorf("setting app env: %w", err)
	}
	if _, err := n.PM2(ctx, "save"); err != nil {
		return fmt.Errorf("setting app env: %w", err)
	}
	return nil
}

// launchApp runs `pm2 start server.js --name AppName` with the app env.
func (n *Node) launchApp(ctx context.Context) error {
	_, err := n.pm2(ctx, n.appEnv(), "start", filepath.Join(n.AppDir, "server.js"), "--name", n.Opts.AppName)
	return err
}

// Reboot does to the node what a reboot does, in this order:
//
//  1. `pm2 kill` as the user (KillPM2): the app and the daemon are gone;
//  2. every iptables and ip6tables rule and user chain of table filter in
//     the server netns (never the host's) is flushed and deleted, and the
//     built-in chains' policies are reset to ACCEPT;
//  3. a fresh boot id is written to BootIDPath;
//  4. beforePM2, if not nil, runs (the agent's boot-time reconciliation,
//     which is ordered before pm2's boot service); its error fails Reboot;
//  5. `pm2 resurrect` as the user in the server netns, which spawns the
//     daemon and restores the apps of the last `pm2 save`: what the
//     pm2-<user>.service unit from `pm2 startup` runs at boot.
//
// It returns once the new daemon runs, without waiting for the app's health.
func (n *Node) Reboot(ctx context.Context, beforePM2 func() error) error {
	if !NetnsExists(n.ServerNS) {
		return fmt.Errorf("rebooting sandbox: netns %s does not exist", n.ServerNS)
	}
	if err := n.KillPM2(ctx); err != nil {
		return fmt.Errorf("rebooting sandbox: %w", err)
	}
	if err := n.FlushFirewall(ctx); err != nil {
		return fmt.Errorf("rebooting sandbox: %w", err)
	}
	if err := n.writeBootID(); err != nil {
		return fmt.Errorf("rebooting sandbox: %w", err)
	}
	if beforePM2 != nil {
		if err := beforePM2(); err != nil {
			return fmt.Errorf("rebooting sandbox: before pm2: %w", err)
		}
	}
	if _, err := n.PM2(ctx, "resurrect"); err != nil {
		return fmt.Errorf("rebooting sandbox: %w", err)
	}
	if n.DaemonPID() == 0 {
		return errors.New("rebooting sandbox: no pm2 daemon after pm2 resurrect")
	}
	return nil
}

// FlushFirewall empties table filter in the server netns (never the
// host's), IPv4 and IPv6: policies ACCEPT, rules flushed, user chains
// deleted. It is what a reboot does to the rules (see Reboot).
func (n *Node) FlushFirewall(ctx context.Context) error {
	var errs []error
	for _, bin := range []string{"iptables", "ip6tables"} {
		cmds := [][]string{
			{bin, "-w", "5", "-t", "filter", "-P", "INPUT", "ACCEPT"},
			{bin, "-w", "5", "-t", "filter", "-P", "FORWARD", "ACCEPT"},
			{bin, "-w", "5", "-t", "filter", "-P", "OUTPUT", "ACCEPT"},
			{bin, "-w", "5", "-t", "filter", "-F"},
			{bin, "-w", "5", "-t", "filter", "-X"},
		}
		for _, c := range cmds {
			if _, err := n.serverRun(ctx, c...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("flushing the firewall of netns %s: %w", n.ServerNS, err)
	}
	return nil
}

// serverRun runs argv as root inside the server netns (NetnsCommand),
// bounded by ctx and iptablesTimeout, and returns its combined output. It
// refuses to run if the netns is missing: `ip netns exec` would fail anyway,
// but nothing must ever reach the host's own namespace.
func (n *Node) serverRun(ctx context.Context, argv ...string) ([]byte, error) {
	what := strings.Join(argv, " ")
	if !NetnsExists(n.ServerNS) {
		return nil, fmt.Errorf("running %s: netns %s does not exist", what, n.ServerNS)
	}
	ctx, cancel := context.WithTimeout(ctx, iptablesTimeout)
	defer cancel()
	cmd := NetnsCommand(n.ServerNS, argv...)
	out, err := runBounded(ctx, cmd)
	if err != nil {
		return out, fmt.Errorf("running %s in netns %s: %w: %s", what, n.ServerNS, err, tail(out))
	}
	return out, nil
}

// ServerFirewall returns `iptables -S` (or `ip6tables -S` if v6) of table
// filter in the server netns.
func (n *Node) ServerFirewall(ctx context.Context, v6 bool) (string, error) {
	bin := "iptables"
	if v6 {
		bin = "ip6tables"
	}
	out, err := n.serverRun(ctx, bin, "-w", "5", "-t", "filter", "-S")
	return string(out), err
}
