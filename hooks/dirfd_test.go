package hooks

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestOpenDirPath: the way to a directory the app user controls follows
// only root's symlinks; any other is refused, named. StatDir walks the
// same way.
func TestOpenDirPath(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (symlinks owned by root and by another user)")
	}
	base := t.TempDir()
	real := filepath.Join(base, "srv", "releases", "v1")
	if err := os.MkdirAll(real, 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(real, "marker"), "v1", 0o644)
	link := func(target, at string, uid int) {
		t.Helper()
		if err := os.Symlink(target, at); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(at, uid, uid); err != nil {
			t.Fatal(err)
		}
	}
	link("releases/v1", filepath.Join(base, "srv", "current-root"), 0)
	link(real, filepath.Join(base, "srv", "abs-root"), 0)
	link("releases/v1", filepath.Join(base, "srv", "current-user"), 65534)
	link("current-root", filepath.Join(base, "srv", "chain-root"), 0)
	link("current-user", filepath.Join(base, "srv", "chain-user"), 0)
	link("loop-b", filepath.Join(base, "srv", "loop-a"), 0)
	link("loop-a", filepath.Join(base, "srv", "loop-b"), 0)
	var realSt unix.Stat_t
	if err := unix.Stat(real, &realSt); err != nil {
		t.Fatal(err)
	}
	realIno := realSt.Ino

	for _, tt := range []struct {
		path string
		want string // "" opens real; else a part of the error
	}{
		{real, ""},
		{filepath.Join(base, "srv", "current-root"), ""},
		{filepath.Join(base, "srv", "abs-root"), ""},
		{filepath.Join(base, "srv", "chain-root"), ""},
		{base + "/srv/releases/../releases/v1", ""},
		{filepath.Join(base, "srv", "current-user"), "current-user is a symlink owned by uid 65534"},
		{filepath.Join(base, "srv", "chain-user"), "current-user is a symlink owned by uid 65534"},
		{base + "/srv/current-user/../releases/v1", "current-user is a symlink owned by uid 65534"}, // not cleaned first
		{base + "/srv/current-root/../v1", ""},                                                      // .. of where the link led
		{filepath.Join(base, "srv", "loop-a"), "too many levels of symbolic links"},
		{filepath.Join(real, "marker"), "not a directory"},
		{filepath.Join(base, "missing"), "no such file"},
		{"relative/dir", "not an absolute path"},
	} {
		st, serr := StatDir(tt.path)
		if tt.want == "" && (serr != nil || st.Ino != realIno) {
			t.Errorf("StatDir(%s) = inode %d, %v; want %s's inode %d", tt.path, st.Ino, serr, real, realIno)
		} else if tt.want != "" && (serr == nil || !strings.Contains(serr.Error(), tt.want)) {
			t.Errorf("StatDir(%s) = %v, want an error with %q", tt.path, serr, tt.want)
		}
		d, err := openDirPath(tt.path)
		if tt.want != "" {
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("openDirPath(%s) = %v, want an error with %q", tt.path, err, tt.want)
			}
			if d != nil {
				d.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("openDirPath(%s): %v", tt.path, err)
			continue
		}
		if b, _, err := d.readRegular("marker", 10); err != nil || string(b) != "v1" {
			t.Errorf("openDirPath(%s) opened the wrong dir: %q, %v", tt.path, b, err)
		}
		d.Close()
	}
}

// TestDirFDRefusesWhatTheUserPlants: a FIFO (which would block a plain
// open forever), a symlink and an oversized file are refused at once.
func TestDirFDRefusesWhatTheUserPlants(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "secret"), "root only\n", 0o600)
	if err := os.Symlink(filepath.Join(dir, "secret"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "big"), strings.Repeat("x", 100), 0o644)
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "sub"), filepath.Join(dir, "sublink")); err != nil {
		t.Fatal(err)
	}
	d, err := openDirPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	start := time.Now()
	for name, want := range map[string]string{
		"fifo": "not a regular file",
		"link": "too many levels of symbolic links", // O_NOFOLLOW's ELOOP
		"big":  "larger than 10 bytes",
		"sub":  "not a regular file",
	} {
		if _, _, err := d.readRegular(name, 10); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("readRegular(%s) = %v, want %q", name, err, want)
		}
	}
	if time.Since(start) > time.Second {
		t.Errorf("refusing took %v: an open blocked", time.Since(start))
	}
	if _, err := d.sub("sublink"); !errors.Is(err, syscall.ENOTDIR) && !errors.Is(err, syscall.ELOOP) {
		t.Errorf("sub(sublink) = %v, want ENOTDIR or ELOOP (a symlinked dir is not entered)", err)
	}
	if _, _, err := d.walk("sublink/x"); err == nil {
		t.Errorf("walk(sublink/x) went through a symlink")
	}
}

// TestDirFDRemoveAllKeepsLinkTargets: removing a tree of the user's
// removes its symlinks, never what they point to.
func TestDirFDRemoveAllKeepsLinkTargets(t *testing.T) {
	dir := t.TempDir()
	outside := filepath.Join(t.TempDir(), "outside")
	write(t, filepath.Join(outside, "keep"), "keep", 0o644)
	write(t, filepath.Join(dir, "tree/a/b/file"), "x", 0o644)
	if err := os.Symlink(outside, filepath.Join(dir, "tree/a/link")); err != nil {
		t.Fatal(err)
	}
	d, err := openDirPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.removeAll("tree"); err != nil {
		t.Fatal(err)
	}
	if err := d.removeAll("tree"); err != nil {
		t.Errorf("removeAll of a missing name: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "tree")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("tree still there: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "keep" {
		t.Errorf("the link's target was touched: %q, %v", b, err)
	}
}

// TestReplaceFileLikeDoesNotFollowAPlantedTemp: a symlink planted at the
// temp name package.json is written through is removed, not written to.
func TestReplaceFileLikeDoesNotFollowAPlantedTemp(t *testing.T) {
	app := t.TempDir()
	victim := filepath.Join(t.TempDir(), "victim")
	write(t, victim, "victim\n", 0o644)
	write(t, filepath.Join(app, packageJSON), `{"name":"app"}`, 0o640)
	if err := os.Symlink(victim, filepath.Join(app, packageJSONTemp)); err != nil {
		t.Fatal(err)
	}
	_, st, _, err := readManifest(app)
	if err != nil {
		t.Fatal(err)
	}
	if err := replaceFileLike(app, packageJSON, []byte(`{"name":"app2"}`), st); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "victim\n" {
		t.Errorf("victim written through the planted link: %q", b)
	}
	fi, err := os.Lstat(filepath.Join(app, packageJSON))
	if err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o640 {
		t.Fatalf("package.json: %v %v, want a regular 0640 file", fi.Mode(), err)
	}
	if b, _ := os.ReadFile(filepath.Join(app, packageJSON)); string(b) != `{"name":"app2"}` {
		t.Errorf("package.json = %q", b)
	}
}
