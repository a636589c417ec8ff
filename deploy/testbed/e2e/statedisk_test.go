//go:build integration

package e2e

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// TestExitOnAFullOrReadOnlyStateDisk: R5 of issue 13 with the real binary,
// iptables and pm2. After pre, the state dir becomes read-only (a bind
// mount remounted ro, with and without the lock file) or full (a tmpfs
// with no space left), in a mount namespace of exit's own: exit still
// returns the healthy app's node to service, exit 0, and its first line
// says that the end of the cycle was not recorded. The real state file
// keeps the open cycle, as the disk did; the next exit, on a writable
// disk, closes it.
func TestExitOnAFullOrReadOnlyStateDisk(t *testing.T) {
	n := setupNode(t, "pa-e2sd", nil)
	cases := []struct {
		name     string
		keepLock bool
		// mount makes $D (the state dir) unwritable; it runs in exit's mount
		// namespace.
		mount string
		cause string
	}{
		{"read-only, lock file there", true, `mount --bind -o ro "$D" "$D"`, "read-only file system"},
		{"read-only, no lock file", false, `mount --bind -o ro "$D" "$D"`, "read-only file system"},
		{"full", true, `cp -a "$D" "$D.copy" && mount -t tmpfs -o size=256k tmpfs "$D" && cp -a "$D.copy/." "$D/" && rm -rf "$D.copy" && { dd if=/dev/zero of="$D/fill" bs=4k 2>/dev/null || true; }`, "no space left on device"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "drain:\n  idle: 200ms\nhealth:\n  interval: 100ms\n")
			if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
				t.Fatalf("pre: %d\n%s", r.code, r.stdout)
			}
			if !tc.keepLock {
				if err := os.Remove(filepath.Join(stateDir, "phase.lock")); err != nil {
					t.Fatal(err)
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.ServerNS, "unshare", "--mount", "--propagation", "private",
				"sh", "-ec", tc.mount+` && exec "$PA" exit --config "$CFG"`)
			cmd.Env = []string{"PATH=" + sandbox.SSMPath, "D=" + stateDir, "PA=" + binary, "CFG=" + cfg}
			var out, errb bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &errb
			err := cmd.Run()
			line := firstLine(out.String())
			if err != nil || !strings.HasPrefix(line, "patchagent exit: ok in ") ||
				!strings.Contains(line, "the end of the cycle was NOT recorded") || !strings.Contains(line, tc.cause) {
				t.Fatalf("exit on an unwritable state disk: %v\n%s\n%s", err, out.String(), errb.String())
			}
			t.Logf("%s", line)
			assertInService(t, n)
			st, err := os.ReadFile(filepath.Join(stateDir, "state.json"))
			if err != nil || !strings.Contains(string(st), `"open": true`) {
				t.Fatalf("the state file changed behind a read-only or full disk: %v\n%s", err, st)
			}
			// The disk is back: exit closes the cycle it could not record
			// (the node blocked again first: the file says open).
			if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 || strings.Contains(r.stdout, "NOT recorded") {
				t.Fatalf("exit on the disk back: %d\n%s", r.code, r.stdout)
			}
			st, err = os.ReadFile(filepath.Join(stateDir, "state.json"))
			if err != nil || !strings.Contains(string(st), `"open": false`) {
				t.Fatalf("the cycle is not closed once the disk is back: %v\n%s", err, st)
			}
			assertInService(t, n)
		})
	}
}
