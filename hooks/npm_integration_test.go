//go:build integration

package hooks_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks"
)

// TestNPMIntegration runs the real npm as nobody on an app whose only
// dependency is a local tarball (file: spec; the registry is a closed
// loopback port, so nothing can reach the internet): Check, a snapshot,
// an update that changes the dependency, the lockfile diff, Restore.
func TestNPMIntegration(t *testing.T) {
	npm, u, base := npmTestEnv(t, "patchagent-npm-")
	app, home := filepath.Join(base, "app"), filepath.Join(base, "home")
	for _, d := range []string{app, home, filepath.Join(app, "pkgs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	u.Home = home
	tgz(t, filepath.Join(app, "pkgs", "a-1.0.0.tgz"), "a", "1.0.0")
	tgz(t, filepath.Join(app, "pkgs", "a-2.0.0.tgz"), "a", "2.0.0")
	pkg := "{\n  \"name\": \"app\",\n  \"version\": \"1.0.0\",\n  \"dependencies\": {\n    \"a\": \"file:pkgs/a-1.0.0.tgz\"\n  }\n}\n"
	write(t, filepath.Join(app, "package.json"), pkg)
	write(t, filepath.Join(app, ".npmrc"), "registry=http://127.0.0.1:9/\n")
	for _, p := range []string{base, app, home, filepath.Join(app, "pkgs"), filepath.Join(app, "package.json"), filepath.Join(app, ".npmrc"),
		filepath.Join(app, "pkgs", "a-1.0.0.tgz"), filepath.Join(app, "pkgs", "a-2.0.0.tgz")} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	run := &hooks.ExecRunner{}
	n := hooks.NewNPM(zaptest.NewLogger(t), run, hooks.NPMConfig{
		Bin: npm, User: u, Dir: app, Path: filepath.Dir(npm) + ":/usr/local/bin:/usr/bin:/bin", FetchTimeout: 2 * time.Second,
	})
	ctx := t.Context()
	if err := n.Check(ctx); !errors.Is(err, hooks.ErrNoLockfile) {
		t.Fatalf("Check before any install: %v, want ErrNoLockfile", err)
	}
	if _, err := run.Run(ctx, hooks.Cmd{Name: npm, Args: n.InstallArgs(), Dir: app, Env: n.Env(), Cred: u.Credential()}); err != nil {
		t.Fatalf("npm install: %v", err)
	}
	if err := n.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	orig := hooks.TreeHash(t, app)
	before, _ := os.ReadFile(filepath.Join(app, "package-lock.json"))
	s, st, err := hooks.TakeSnapshot(app, filepath.Join(base, "snaps", "1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %+v", st)

	write(t, filepath.Join(app, "package.json"), strings.Replace(pkg, "a-1.0.0", "a-2.0.0", 1))
	if err := n.Check(ctx); !errors.Is(err, hooks.ErrLockfileOutOfSync) || !strings.Contains(err.Error(), "dependencies.a") {
		t.Fatalf("Check after editing package.json: %v, want ErrLockfileOutOfSync naming a", err)
	}
	if err := n.Update(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(filepath.Join(app, "package-lock.json"))
	ch, err := hooks.DiffLockfiles(before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(ch.Lines(), "\n"); got != "a 1.0.0 -> 2.0.0" {
		t.Errorf("changes: %q", got)
	}
	fi, err := os.Stat(filepath.Join(app, "node_modules", "a", "index.js"))
	if err != nil {
		t.Fatal(err)
	}
	if uid := statUID(fi); uid != 65534 {
		t.Errorf("npm left a file owned by uid %d", uid)
	}

	if err := s.Restore(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(orig, hooks.TreeHash(t, app)); d != "" {
		t.Errorf("after Restore (-want +got):\n%s", d)
	}
	// Again: npm on the restored (hardlinked back) tree must not damage the
	// snapshot, which can be restored a second time.
	write(t, filepath.Join(app, "package.json"), strings.Replace(pkg, "a-1.0.0", "a-2.0.0", 1))
	if err := n.Update(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.Verify(); err != nil {
		t.Fatalf("npm damaged the snapshot: %v", err)
	}
	if err := s.Restore(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(orig, hooks.TreeHash(t, app)); d != "" {
		t.Errorf("after the second Restore (-want +got):\n%s", d)
	}
	if err := n.Check(ctx); err != nil {
		t.Errorf("Check after Restore: %v", err)
	}
	out, err := exec.Command("node", "-p", "require('"+filepath.Join(app, "node_modules", "a")+"')").Output()
	if err != nil || strings.TrimSpace(string(out)) != "a@1.0.0" {
		t.Errorf("node sees %q, %v; want a@1.0.0", out, err)
	}
}

func write(t *testing.T, p, body string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 65534, 65534); err != nil {
		t.Fatal(err)
	}
}

func statUID(fi os.FileInfo) uint32 { return fi.Sys().(*syscall.Stat_t).Uid }

// TestNPMIntegrationDiskFullRestore: app dir and snapshot share a small
// tmpfs (so the snapshot is hardlinked); the tmpfs is filled up to ~200 KB,
// `npm install` of a ~5 MB local package fails with ENOSPC, and Restore,
// run while the disk is still full, puts the app dir back exactly.
func TestNPMIntegrationDiskFullRestore(t *testing.T) {
	npm, u, base := npmTestEnv(t, "patchagent-npm-enospc-")
	disk := filepath.Join(base, "disk")
	if err := os.Mkdir(disk, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", disk).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", disk).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v: %s; lazy unmount", disk, err, out)
			exec.Command("umount", "-l", disk).Run()
		}
	})
	// The npm cache (home) is off the tmpfs: the failure must come from
	// writing into the app dir.
	app, home := filepath.Join(disk, "app"), filepath.Join(base, "home")
	for _, d := range []string{app, home, filepath.Join(app, "pkgs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	u.Home = home
	// a carries 1 MiB, more than the space left at Restore: a restore that
	// copied node_modules instead of linking it could not succeed.
	noise := make([]byte, 6<<20)
	if _, err := rand.Read(noise); err != nil { // incompressible
		t.Fatal(err)
	}
	tgz(t, filepath.Join(app, "pkgs", "a-1.0.0.tgz"), "a", "1.0.0", tarFile{"package/data.bin", noise[:1<<20]})
	// big's data comes before its package.json. npm (11.19) only warns
	// about a file it could not write (TAR_ENTRY_ERROR ENOSPC): with
	// package.json first it exits 0, leaving data.bin truncated (measured);
	// with package.json unwritten (empty) it fails with EJSONPARSE.
	tgz(t, filepath.Join(app, "pkgs", "big-1.0.0.tgz"), "big", "1.0.0", tarFile{"package/data.bin", noise[1<<20:]})
	pkg := "{\n  \"name\": \"app\",\n  \"version\": \"1.0.0\",\n  \"dependencies\": {\n    \"a\": \"file:pkgs/a-1.0.0.tgz\"\n  }\n}\n"
	write(t, filepath.Join(app, "package.json"), pkg)
	write(t, filepath.Join(app, ".npmrc"), "registry=http://127.0.0.1:9/\n")
	for _, p := range []string{base, app, home, filepath.Join(app, "pkgs"),
		filepath.Join(app, "pkgs", "a-1.0.0.tgz"), filepath.Join(app, "pkgs", "big-1.0.0.tgz")} {
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	run := &hooks.ExecRunner{}
	n := hooks.NewNPM(zaptest.NewLogger(t), run, hooks.NPMConfig{
		Bin: npm, User: u, Dir: app, Path: filepath.Dir(npm) + ":/usr/local/bin:/usr/bin:/bin", FetchTimeout: 2 * time.Second,
	})
	ctx := t.Context()
	npmRun := func(args ...string) (hooks.Result, error) {
		return run.Run(ctx, hooks.Cmd{Name: npm, Args: args, Dir: app, Env: n.Env(), Cred: u.Credential()})
	}
	if _, err := npmRun(n.InstallArgs()...); err != nil {
		t.Fatalf("npm install: %v", err)
	}
	if err := n.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	s, st, err := hooks.TakeSnapshot(app, filepath.Join(disk, "snaps", "1"))
	if err != nil {
		t.Fatal(err)
	}
	if !st.Hardlinked {
		t.Fatalf("snapshot on the app's filesystem not hardlinked: %+v", st)
	}
	orig := hooks.TreeHash(t, app)

	// Fill the disk, leaving about 200 KB.
	const leave = 200 << 10
	filler, err := os.Create(filepath.Join(disk, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 1<<20)
	for {
		free := freeBytes(t, disk)
		if free <= leave {
			break
		}
		if _, err := filler.Write(chunk[:min(int64(len(chunk)), free-leave)]); err != nil {
			t.Fatalf("filling the disk: %v", err)
		}
	}
	filler.Close()
	t.Logf("free after filling: %d bytes", freeBytes(t, disk))

	args := append([]string{"install", "./pkgs/big-1.0.0.tgz"}, n.InstallArgs()[1:]...)
	res, err := npmRun(args...)
	if err == nil {
		t.Fatal("npm install of 5 MB into 200 KB succeeded")
	}
	// The error carries only the last ~500 bytes of stderr; the ENOSPC
	// warnings may come before npm's final error lines.
	if msg := err.Error() + string(res.Stderr); !strings.Contains(msg, "ENOSPC") && !strings.Contains(strings.ToLower(msg), "no space") {
		t.Fatalf("npm install failed without ENOSPC: %v", err)
	}
	t.Logf("npm failed as expected: %v", err)
	free := freeBytes(t, disk)
	if free >= st.Bytes {
		t.Fatalf("%d bytes free, the snapshot holds %d: the disk is not full enough to tell linking from copying", free, st.Bytes)
	}
	t.Logf("free after npm failed: %d bytes; snapshot: %+v", free, st)

	// The disk is still full: a hardlink restore must not need data space.
	if err := s.Restore(); err != nil {
		t.Fatalf("Restore on a full disk: %v", err)
	}
	if d := cmp.Diff(orig, hooks.TreeHash(t, app)); d != "" {
		t.Errorf("after Restore (-want +got):\n%s", d)
	}
	if err := s.Verify(); err != nil {
		t.Errorf("Verify after Restore: %v", err)
	}
	if err := n.Check(ctx); err != nil {
		t.Errorf("Check after Restore: %v", err)
	}
}

// tgz writes an npm package tarball for name@version: the extra files
// first (in the given order), then package.json and index.js.
func tgz(t *testing.T, path, name, version string, extra ...tarFile) {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	files := append(extra,
		tarFile{"package/package.json", []byte(`{"name":"` + name + `","version":"` + version + `","main":"index.js"}`)},
		tarFile{"package/index.js", []byte(`module.exports = "` + name + `@` + version + `";` + "\n")})
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), ModTime: time.Unix(1e9, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

type tarFile struct {
	name string
	body []byte
}

// freeBytes is the space left on the filesystem holding path.
func freeBytes(t *testing.T, path string) int64 {
	t.Helper()
	var sfs syscall.Statfs_t
	if err := syscall.Statfs(path, &sfs); err != nil {
		t.Fatal(err)
	}
	return int64(sfs.Bavail) * sfs.Bsize
}

// npmTestEnv skips unless npm may run here (PATCHAGENT_E2E=1, root, npm on
// PATH) and returns npm, the user it runs as (nobody) and a world-readable
// scratch dir under /tmp removed at the end.
func npmTestEnv(t *testing.T, prefix string) (npm string, u hooks.AppUser, base string) {
	t.Helper()
	if testing.Short() || os.Getenv("PATCHAGENT_E2E") != "1" {
		t.Skip("set PATCHAGENT_E2E=1 to run npm")
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to run npm as another user")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("no npm")
	}
	base, err = os.MkdirTemp("/tmp", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	return npm, hooks.AppUser{Name: "nobody", UID: 65534, GID: 65534, Groups: []uint32{65534}}, base
}
