package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// BasePackages are installed into the cached root.
// nftables: its boot unit, enabled by the test, flushes the ruleset as
// Debian's default /etc/nftables.conf does.
var BasePackages = []string{"systemd", "systemd-sysv", "dbus", "iptables", "nftables", "iproute2", "ca-certificates", "procps", "curl"}

// Mirror reads the Debian mirror from the machine's apt sources, so no host
// name is written into the repository.
func Mirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	files = append(files, "/etc/apt/sources.list")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(strings.NewReader(string(b)))
		for sc.Scan() {
			l := strings.TrimSpace(sc.Text())
			var u string
			switch {
			case strings.HasPrefix(l, "URIs:"):
				u = strings.Fields(strings.TrimPrefix(l, "URIs:"))[0]
			case strings.HasPrefix(l, "deb "):
				for _, w := range strings.Fields(l)[1:] {
					if strings.Contains(w, "://") {
						u = w
						break
					}
				}
			}
			if u != "" && !strings.Contains(u, "security") {
				return strings.TrimSuffix(u, "/"), nil
			}
		}
	}
	return "", errors.New("no Debian mirror in /etc/apt/sources.list{,.d}")
}

func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, tail(out))
	}
	return nil
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 1500 {
		s = "..." + s[len(s)-1500:]
	}
	return s
}

// EnsureBase builds (once) a Debian 12 root with systemd and node into
// cache/base; a marker file holds what it was built with.
func EnsureBase(ctx context.Context, cache string) (string, error) {
	base := filepath.Join(cache, "base")
	want := "bookworm " + strings.Join(BasePackages, ",") + " nodejs\n"
	if b, err := os.ReadFile(filepath.Join(cache, "base.ok")); err == nil && string(b) == want {
		return base, nil
	}
	mirror, err := Mirror()
	if err != nil {
		return "", err
	}
	tmp := base + ".tmp"
	os.RemoveAll(tmp)
	os.RemoveAll(base)
	os.Remove(filepath.Join(cache, "base.ok"))
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	if err := run(ctx, "debootstrap", "--variant=minbase", "--include="+strings.Join(BasePackages, ","), "bookworm", tmp, mirror); err != nil {
		return "", err
	}
	security := strings.Replace(mirror, "/debian", "/debian-security", 1)
	src := fmt.Sprintf("deb %s bookworm main\ndeb %s bookworm-security main\n", mirror, security)
	if err := os.WriteFile(filepath.Join(tmp, "etc/apt/sources.list"), []byte(src), 0o644); err != nil {
		return "", err
	}
	if err := run(ctx, "chroot", tmp, "/bin/sh", "-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs && apt-get clean"); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, base); err != nil {
		return "", err
	}
	return base, os.WriteFile(filepath.Join(cache, "base.ok"), []byte(want), 0o644)
}

// Machine is a booted container.
type Machine struct {
	Dir, Netns string
	cmd        *exec.Cmd
	done       chan error
	log        *os.File
}

// Boot starts systemd in dir inside netns and waits until it is running.
func Boot(ctx context.Context, dir, netns, logPath string) (*Machine, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	m := &Machine{Dir: dir, Netns: netns, log: f, done: make(chan error, 1)}
	m.cmd = exec.Command("systemd-nspawn", "--boot", "--register=no", "--keep-unit", "-q", "-D", dir,
		"--network-namespace-path=/run/netns/"+netns, "--capability=CAP_NET_ADMIN", "--console=pipe")
	m.cmd.Stdout, m.cmd.Stderr = f, f
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting systemd-nspawn: %w", err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _ := m.Output(ctx, "systemctl", "is-system-running")
		s := strings.TrimSpace(out)
		if s == "running" || s == "degraded" {
			return m, nil
		}
		if time.Now().After(deadline) {
			m.Kill()
			return nil, fmt.Errorf("container did not finish booting in 90s (state %q)", s)
		}
		select {
		case err := <-m.done:
			m.done <- err
			return nil, fmt.Errorf("systemd-nspawn exited while booting: %v", err)
		case <-time.After(300 * time.Millisecond):
		}
	}
}

// leader is the container's PID 1 as seen from the host.
func (m *Machine) leader() (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", m.cmd.Process.Pid, m.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("no container leader yet")
	}
	return strconv.Atoi(f[0])
}

// Command returns argv to run inside the container (all namespaces), with
// exactly env.
func (m *Machine) Command(ctx context.Context, env []string, argv ...string) (*exec.Cmd, error) {
	pid, err := m.leader()
	if err != nil {
		return nil, err
	}
	args := append([]string{"-t", strconv.Itoa(pid), "-a", "env", "-i"}, env...)
	c := exec.CommandContext(ctx, "nsenter", append(args, argv...)...)
	return c, nil
}

// Output runs argv in the container with a minimal PATH.
func (m *Machine) Output(ctx context.Context, argv ...string) (string, error) {
	c, err := m.Command(ctx, []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}, argv...)
	if err != nil {
		return "", err
	}
	out, err := c.CombinedOutput()
	return string(out), err
}

// Reboot asks systemd inside for a reboot and waits for nspawn to exit
// (status 133), then boots the same root again.
func (m *Machine) Reboot(ctx context.Context) (*Machine, error) {
	_, _ = m.Output(ctx, "systemctl", "reboot")
	select {
	case <-m.done:
	case <-time.After(60 * time.Second):
		m.Kill()
		return nil, errors.New("container did not go down within 60s of systemctl reboot")
	}
	m.log.Close()
	return Boot(ctx, m.Dir, m.Netns, m.log.Name())
}

// Kill ends the container (its nspawn process group, started by us).
func (m *Machine) Kill() {
	if m.cmd.ProcessState == nil {
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-m.done:
		case <-time.After(10 * time.Second):
		}
	}
	m.log.Close()
}

// Poweroff shuts the container down cleanly.
func (m *Machine) Poweroff(ctx context.Context) {
	_, _ = m.Output(ctx, "systemctl", "poweroff")
	select {
	case <-m.done:
		m.log.Close()
	case <-time.After(30 * time.Second):
		m.Kill()
	}
}
