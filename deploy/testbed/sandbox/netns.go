package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// NetnsDir is where iproute2 keeps named network namespaces.
const NetnsDir = "/run/netns"

// CreateNetns creates the named network namespace (as `ip netns add`) with
// loopback up. An existing namespace of that name is reused.
func CreateNetns(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); err != nil {
		if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
			return fmt.Errorf("creating netns %s: %w: %s", name, err, strings.TrimSpace(string(out)))
		}
	}
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("bringing up lo in netns %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// DeleteNetns deletes the named network namespace; a missing one is not an
// error. Processes still inside it keep it alive until they exit.
func DeleteNetns(name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(NetnsDir, name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
		return fmt.Errorf("deleting netns %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// InNetns runs fn on an OS thread switched into the named network namespace.
// Sockets fn opens, and processes it starts with os/exec (including those
// go-iptables starts), belong to that namespace. The thread is never switched
// back: it is discarded when fn returns, so no other goroutine can inherit
// the namespace.
func InNetns(name string, fn func() error) error {
	if err := validName(name); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the runtime kills a thread whose goroutine exits locked.
		f, err := os.Open(filepath.Join(NetnsDir, name))
		if err != nil {
			errc <- fmt.Errorf("opening netns %s: %w", name, err)
			return
		}
		err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
		f.Close()
		if err != nil {
			errc <- fmt.Errorf("entering netns %s: %w", name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// NetnsCommand returns a command that runs argv inside the named namespace.
func NetnsCommand(name string, argv ...string) *exec.Cmd {
	return exec.Command("ip", append([]string{"netns", "exec", name}, argv...)...)
}

func validName(name string) error {
	if name == "" || len(name) > 64 || strings.ContainsAny(name, "/ \t\n") || name == "." || name == ".." {
		return fmt.Errorf("invalid netns name %q", name)
	}
	return nil
}

// NetnsExists reports whether the named namespace is present in NetnsDir.
func NetnsExists(name string) bool {
	_, err := os.Stat(filepath.Join(NetnsDir, name))
	return err == nil
}

// ipRun runs `ip args...` bounded by ctx and returns its combined output in
// the error.
func ipRun(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("running ip %s: %w: %s", strings.Join(args, " "), err, tail(out))
	}
	return nil
}

// linkExists reports whether link is present in namespace ns.
func linkExists(ctx context.Context, ns, link string) bool {
	return ipRun(ctx, "-n", ns, "link", "show", "dev", link) == nil
}

// createVeth creates a veth pair with one end (srvLink) in srvNS and the
// other (cliLink) in cliNS. Both namespaces must exist.
func createVeth(ctx context.Context, srvNS, srvLink, cliNS, cliLink string) error {
	if err := ipRun(ctx, "link", "add", srvLink, "netns", srvNS, "type", "veth", "peer", "name", cliLink, "netns", cliNS); err != nil {
		return fmt.Errorf("creating veth %s/%s: %w", srvLink, cliLink, err)
	}
	return nil
}

// configureLink assigns v4 and v6 (no DAD, so it is usable at once) to link
// in ns and brings it up. Existing addresses are kept (`addr replace`).
func configureLink(ctx context.Context, ns, link string, v4, v6 netip.Prefix) error {
	steps := [][]string{
		{"-n", ns, "addr", "replace", v4.String(), "dev", link},
		{"-n", ns, "-6", "addr", "replace", v6.String(), "dev", link, "nodad"},
		{"-n", ns, "link", "set", link, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ipRun(ctx, s...); err != nil {
			return fmt.Errorf("configuring %s in netns %s: %w", link, ns, err)
		}
	}
	return nil
}

// tail returns the last 2 KiB of out, trimmed, for error messages.
func tail(out []byte) string {
	const max = 2048
	if len(out) > max {
		out = out[len(out)-max:]
	}
	return strings.TrimSpace(string(out))
}

// runBounded runs cmd (e.g. from NetnsCommand) and returns its combined
// output; it kills cmd when ctx ends and waits at most 5 s more for its
// output.
func runBounded(ctx context.Context, cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			_ = cmd.Process.Kill()
		case <-done:
		}
	}()
	err := cmd.Wait()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return out.Bytes(), err
}
