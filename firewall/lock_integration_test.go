//go:build integration

package firewall

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// TestFirewallXtablesLockHeldLegacy: issue 13's row 3, against the real
// iptables-legacy (whose xtables lock is a flock on a file) instead of a
// fake: while another program holds the lock, Block waits the lock wait
// per command, retries exit status 4 a few times and then fails with
// iptables' own message, having changed nothing; when the holder lets go
// during the retries, Block completes. The lock file is the test's own
// (XTABLES_LOCKFILE), so the host's iptables users are never held up.
func TestFirewallXtablesLockHeldLegacy(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, iptables)")
	}
	bins := t.TempDir()
	for _, name := range []string{"iptables", "ip6tables"} {
		legacy, err := exec.LookPath(name + "-legacy")
		if err != nil {
			t.Skipf("%s-legacy not installed", name)
		}
		// Found the way NewTables finds the binary: first on PATH.
		if err := os.Symlink(legacy, filepath.Join(bins, name)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bins+":"+os.Getenv("PATH"))
	lockFile := filepath.Join(t.TempDir(), "xtables.lock")
	t.Setenv("XTABLES_LOCKFILE", lockFile)
	setupFirewallNetns(t)

	tables := map[Family]Tables{}
	for _, fam := range fwBothFamilies {
		tb, err := NewTables(fam, time.Second)
		if err != nil {
			t.Fatalf("NewTables(%s): %v", fam, err)
		}
		tables[fam] = tb
	}
	fw, err := New(zaptest.NewLogger(t), tables, Rules{Ports: []uint16{fwPort}, Action: Reject})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fwInSrv(func() error { return fw.Unblock(context.Background()) }); err != nil {
			t.Errorf("cleanup Unblock: %v", err)
		}
	})
	hold := func() (release func()) {
		f, err := os.OpenFile(lockFile, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
			t.Fatal(err)
		}
		return func() { f.Close() }
	}
	ours := func() string {
		var out strings.Builder
		for _, bin := range []string{"iptables-legacy", "ip6tables-legacy"} {
			b, err := exec.Command("ip", "netns", "exec", fwSrvNS, bin, "-S").CombinedOutput()
			if err != nil {
				t.Fatalf("%s -S: %v\n%s", bin, err, b)
			}
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, Chain) {
					out.WriteString(bin + ": " + l + "\n")
				}
			}
		}
		return out.String()
	}

	t.Run("held throughout", func(t *testing.T) {
		release := hold()
		start := time.Now()
		err := fwInSrv(func() error { return fw.Block(t.Context()) })
		took := time.Since(start)
		release() // our own look below takes the lock too
		if err == nil || !strings.Contains(err.Error(), "xtables lock") {
			t.Fatalf("Block with the lock held = %v, want iptables' lock error", err)
		}
		// Five attempts of a one-second wait, with backoffs between: a bound,
		// not forever.
		if took < 4*time.Second || took > 15*time.Second {
			t.Errorf("Block gave up after %s, want about 6.5s", took)
		}
		if got := ours(); got != "" {
			t.Errorf("a failed Block left rules behind:\n%s", got)
		}
	})

	t.Run("released during the retries", func(t *testing.T) {
		release := hold()
		go func() { time.Sleep(1500 * time.Millisecond); release() }()
		if err := fwInSrv(func() error { return fw.Block(t.Context()) }); err != nil {
			t.Fatalf("Block once the lock was let go: %v", err)
		}
		if got := ours(); !strings.Contains(got, "iptables-legacy: -A INPUT -j "+Chain) || !strings.Contains(got, "ip6tables-legacy: -A INPUT -j "+Chain) {
			t.Errorf("after Block, in both families:\n%s", got)
		}
	})
}
