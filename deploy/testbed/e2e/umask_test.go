//go:build integration

package e2e

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// The daemon runs with the unit's UMask=0077; npm, which it starts as the
// app user, must not inherit it: a post through the daemon writes into
// node_modules the modes a post run in-process by SSM's agent (umask 022,
// systemd's default) writes.
func TestPostThroughTheDaemonWritesTheModesOfAPostInProcess(t *testing.T) {
	n, reg := npmNode(t, "pa-e2um")
	publish(t, reg, "1.0.1", "")
	cfg := appConfig(t, n, "post:\n  npm:\n    fetch_timeout: 5s\n")

	// In process, no daemon, with the umask SSM's agent gives its hooks.
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	var r result
	inProcess := npmWrote(t, n.AppDir, func() { r = patchagent(t, n, "post", "--config", cfg) })
	if r.code != 0 || !strings.Contains(r.stdout, "dep-a 1.0.0 -> 1.0.1") || !strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("post in-process %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}

	// Through the daemon, started with umask 077 as systemd starts it.
	publish(t, reg, "1.0.2", "")
	syscall.Umask(0o077)
	d := startDaemon(t, n, cfg)
	syscall.Umask(0o022)
	if m := procUmask(t, d.PID()); m != "0077" {
		t.Fatalf("the daemon runs with umask %s, want 0077 (the unit's UMask)", m)
	}
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre through the daemon %d", r.code)
	}
	daemon := npmWrote(t, n.AppDir, func() { r = patchagent(t, n, "post", "--config", cfg) })
	if r.code != 0 || !strings.Contains(r.stdout, "dep-a 1.0.1 -> 1.0.2") || strings.Contains(r.stderr, "running the phase in this process") {
		t.Fatalf("post through the daemon %d:\n%s\n%s", r.code, r.stdout, r.stderr)
	}
	if m := procUmask(t, d.PID()); m != "0077" {
		t.Errorf("the daemon's umask is %s after post, want 0077 still", m)
	}
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit through the daemon %d", r.code)
	}

	// The same update (one patch release of dep-a) both times: the same
	// entries written, with the same modes.
	t.Logf("npm wrote in-process:\n%s\nthrough the daemon:\n%s", listModes(inProcess), listModes(daemon))
	for _, p := range []string{"node_modules/dep-a/index.js", "node_modules/dep-a/package.json"} {
		if m, ok := inProcess[p]; !ok || m != 0o644 {
			t.Fatalf("in-process post: %s written %v with mode %s, want -rw-r--r-- (npm under umask 022)", p, ok, m)
		}
	}
	if m, ok := inProcess["node_modules/dep-a"]; !ok || m != fs.ModeDir|0o755 {
		t.Fatalf("in-process post: node_modules/dep-a written %v with mode %s, want drwxr-xr-x", ok, m)
	}
	var diff []string
	for p, m := range inProcess {
		if dm, ok := daemon[p]; !ok {
			diff = append(diff, fmt.Sprintf("%s: %s in-process, not written through the daemon", p, m))
		} else if dm != m {
			diff = append(diff, fmt.Sprintf("%s: %s in-process, %s through the daemon", p, m, dm))
		}
	}
	for p, m := range daemon {
		if _, ok := inProcess[p]; !ok {
			diff = append(diff, fmt.Sprintf("%s: %s through the daemon, not written in-process", p, m))
		}
	}
	if len(diff) > 0 {
		slices.Sort(diff)
		t.Fatalf("npm's files differ between a post in-process and one through the daemon:\n%s", strings.Join(diff, "\n"))
	}
}

// npmWrote runs post and returns the mode of every entry under dir it
// wrote: new ones (a new name or inode: npm writes a package's files anew
// and renames them into place) and ones rewritten in place (a new mtime).
// ctime is no guide: the snapshot's hardlinks change every file's.
func npmWrote(t *testing.T, dir string, post func()) map[string]fs.FileMode {
	t.Helper()
	type entry struct {
		ino   uint64
		mtime syscall.Timespec
	}
	before := map[string]entry{}
	walk(t, dir, func(rel string, fi fs.FileInfo, st *syscall.Stat_t) {
		before[rel] = entry{st.Ino, st.Mtim}
	})
	post()
	wrote := map[string]fs.FileMode{}
	walk(t, dir, func(rel string, fi fs.FileInfo, st *syscall.Stat_t) {
		if b, ok := before[rel]; !ok || b != (entry{st.Ino, st.Mtim}) {
			wrote[rel] = fi.Mode()
		}
	})
	if len(wrote) == 0 {
		t.Fatal("post wrote nothing under the app dir")
	}
	return wrote
}

// walk calls fn for every entry below dir, without following symlinks.
func walk(t *testing.T, dir string, fn func(rel string, fi fs.FileInfo, st *syscall.Stat_t)) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fn(rel, fi, fi.Sys().(*syscall.Stat_t))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func listModes(m map[string]fs.FileMode) string {
	var b strings.Builder
	for _, p := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, "  %s %s\n", m[p], p)
	}
	return b.String()
}

// procUmask is the Umask line of pid's /proc status ("0077").
func procUmask(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Umask:"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("no Umask line in /proc/%d/status", pid)
	return ""
}
