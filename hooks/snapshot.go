package hooks

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A snapshot saves npm's state of an app dir so that an update can be
// undone exactly:
//
//   - package.json, package-lock.json, npm-shrinkwrap.json and .npmrc (those
//     present) are copied into <snapshot>/files with owner, mode and times,
//     and their sha256 is recorded;
//   - node_modules is saved as a HARDLINK tree in <snapshot>/node_modules:
//     directories and symlinks are recreated (owner, mode, times), regular
//     files are hardlinked (the same inodes: O(files) metadata work, no data
//     copied). When a hardlink cannot be made (EXDEV: the snapshot is on
//     another filesystem; EPERM, EMLINK, ENOTSUP) the rest is copied instead,
//     preserving owner, mode, times and symlinks;
//   - manifest.json, written last, records every saved path with type,
//     mode, uid, gid, size, mtime and inode (plus the sha256 of the top-level
//     files). Verify compares it with the disk.
//
// Why hardlinks are safe with npm: npm (pacote/arborist) never writes into an
// existing package file; it extracts each new package version into new
// files and moves whole package directories into place (or removes them),
// so the inode the snapshot shares keeps its old content. The exception is
// npm's hidden lockfile, node_modules/.package-lock.json, whose mtime npm
// updates in place (measured with npm 11): it is always copied. The risk is
// anything else that writes into an existing file in place (an editor, a
// postinstall or build script patching a dependency, `chmod`/`chown` on a
// file): that changes the snapshot too, since it is the same file. Verify
// catches such a change through size, mtime, mode or owner (not one that
// keeps all four); Restore verifies before it touches anything, and refuses
// a snapshot that no longer matches.
//
// A snapshot dir holds the app's .npmrc (it may carry registry tokens): it
// is created 0700.
const (
	snapManifestName = "manifest.json"
	snapMarkerName   = ".patchagent-snapshot" // written first: a dir with it but no manifest is a crashed TakeSnapshot
	snapFilesDir     = "files"
	snapVersion      = 1
	restoreSuffix    = ".patchagent-restore"
	// hiddenLockfile is always copied, never hardlinked: npm updates it in
	// place (at least its mtime) at every reify, which would change the
	// snapshot's copy through a shared inode.
	hiddenLockfile = "node_modules/.package-lock.json"
	asideSuffix    = ".patchagent-old"
)

// snapTopFiles are the app dir's top-level files that make npm's state.
var snapTopFiles = []string{packageJSON, packageLock, npmShrinkwrap, npmrc}

// Snapshot is a saved npm state of App, stored in Dir.
type Snapshot struct {
	Dir string // where it lives
	App string // the app dir it was taken from

	// link makes hardlinks (nil: os.Link); tests replace it to force the
	// copy fallback.
	link func(oldname, newname string) error
}

// SnapshotStats describes what TakeSnapshot did.
type SnapshotStats struct {
	Files, Dirs, Symlinks int
	Bytes                 int64 // logical size of the regular files saved
	// Copied is the bytes actually copied: when node_modules was
	// hardlinked, only the top-level files and node_modules/.package-lock.json
	// (a few KB to a few MB).
	Copied     int64
	Hardlinked bool // node_modules was saved as hardlinks (no fallback to copying)
	Took       time.Duration
}

// snapManifest is manifest.json.
type snapManifest struct {
	Version    int         `json:"version"`
	Created    time.Time   `json:"created"`
	App        string      `json:"app"`
	Hardlinked bool        `json:"hardlinked"`
	Top        []snapEntry `json:"top"`          // saved top-level files, relative to files/
	HasNM      bool        `json:"node_modules"` // whether the app had node_modules
	Entries    []snapEntry `json:"entries"`      // node_modules, relative to the snapshot dir
}

type snapEntry struct {
	Path   string `json:"p"`
	Type   string `json:"y"` // "f", "d" or "l"
	Mode   uint32 `json:"m"` // fs.FileMode, type bits included
	UID    uint32 `json:"u"`
	GID    uint32 `json:"g"`
	Size   int64  `json:"s"`
	MTime  int64  `json:"t"` // ns since the epoch
	Ino    uint64 `json:"i,omitempty"`
	Target string `json:"l,omitempty"` // symlink target
	SHA256 string `json:"h,omitempty"` // top-level regular files only
}

// TakeSnapshot saves appDir's npm state into dst, which must not exist (its
// parent is created 0700 if missing). See the package comment above for
// what is saved and how.
func TakeSnapshot(appDir, dst string) (Snapshot, SnapshotStats, error) {
	return takeSnapshot(appDir, dst, os.Link)
}

func takeSnapshot(appDir, dst string, link func(string, string) error) (Snapshot, SnapshotStats, error) {
	start := time.Now()
	var st SnapshotStats
	app, err := filepath.Abs(appDir)
	if err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", appDir, err)
	}
	dir, err := filepath.Abs(dst)
	if err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", appDir, err)
	}
	s := Snapshot{Dir: dir, App: app, link: link}
	if _, err := os.Lstat(filepath.Join(app, packageJSON)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, ErrNoPackageJSON)
		}
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	if _, err := os.Lstat(dir); err == nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %s already exists", app, dir)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	if err := os.WriteFile(filepath.Join(dir, snapMarkerName), nil, 0o600); err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	m := snapManifest{Version: snapVersion, Created: time.Now().UTC(), App: app}

	files := filepath.Join(dir, snapFilesDir)
	if err := os.Mkdir(files, 0o700); err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	for _, name := range snapTopFiles {
		e, ok, err := saveTopFile(filepath.Join(app, name), filepath.Join(files, name), name)
		if err != nil {
			return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
		}
		if !ok {
			continue
		}
		m.Top = append(m.Top, e)
		if e.Type == "l" {
			st.Symlinks++
		} else {
			st.Files++
			st.Bytes += e.Size
			st.Copied += e.Size
		}
	}

	nm := filepath.Join(app, nodeModules)
	fi, err := os.Lstat(nm)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	case !fi.IsDir():
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %s is not a directory (a symlinked node_modules is not supported)", app, nm)
	default:
		m.HasNM = true
		c := cloner{link: link}
		if err := c.clone(nm, filepath.Join(dir, nodeModules), nodeModules); err != nil {
			return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
		}
		m.Entries = c.entries
		m.Hardlinked = c.linked > 0 && !c.noLink
		st.Files += c.linked + c.copied
		st.Dirs, st.Symlinks = st.Dirs+c.dirs, st.Symlinks+c.symlinks
		st.Bytes += c.bytes
		st.Copied += c.copiedBytes
	}
	st.Hardlinked = m.Hardlinked
	if err := writeManifest(dir, m); err != nil {
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	st.Took = time.Since(start)
	return s, st, nil
}

// saveTopFile copies one top-level file (or symlink) from src to dst with
// its attributes; ok is false when src does not exist.
func saveTopFile(src, dst, name string) (snapEntry, bool, error) {
	fi, err := os.Lstat(src)
	if errors.Is(err, fs.ErrNotExist) {
		return snapEntry{}, false, nil
	}
	if err != nil {
		return snapEntry{}, false, err
	}
	e, err := copyEntry(src, dst, fi, name, true)
	if err != nil {
		return snapEntry{}, false, err
	}
	return e, true, nil
}

// copyEntry copies a regular file or a symlink with owner, mode and times
// and returns its entry (the inode of the copy; sha256 when hash is set).
func copyEntry(src, dst string, fi fs.FileInfo, rel string, hash bool) (snapEntry, error) {
	e := entryOf(rel, fi)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		target, err := copySymlink(src, dst, fi)
		e.Target = target
		return e, err
	case fi.Mode().IsRegular():
		ino, sum, _, err := copyFile(src, dst, fi, hash)
		if err != nil {
			return e, err
		}
		e.Ino, e.SHA256 = ino, sum
		return e, nil
	}
	return e, fmt.Errorf("%s: unsupported file type %s", src, fi.Mode().Type())
}

func entryOf(rel string, fi fs.FileInfo) snapEntry {
	e := snapEntry{Path: rel, Mode: uint32(fi.Mode()), MTime: fi.ModTime().UnixNano()}
	switch {
	case fi.IsDir():
		e.Type = "d"
	case fi.Mode()&fs.ModeSymlink != 0:
		e.Type = "l"
	default:
		e.Type = "f"
		e.Size = fi.Size()
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.UID, e.GID = st.Uid, st.Gid
		if e.Type == "f" {
			e.Ino = st.Ino // directories and symlinks are recreated: new inodes
		}
	}
	return e
}

// chmodBits is what chmod sets out of a FileMode.
func chmodBits(m fs.FileMode) fs.FileMode {
	return m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
}

func statTimes(fi fs.FileInfo) (atime, mtime time.Time) {
	mtime = fi.ModTime()
	atime = mtime
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		atime = time.Unix(st.Atim.Sec, st.Atim.Nsec)
	}
	return atime, mtime
}

func ownerOf(fi fs.FileInfo) (uid, gid int) {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return int(st.Uid), int(st.Gid)
	}
	return -1, -1
}

// copyFile copies a regular file's content (copy_file_range where the
// kernel can), then owner, mode (after chown, which clears set-id bits) and
// times. It returns the copy's inode and, if hash, the content's sha256.
func copyFile(src, dst string, fi fs.FileInfo, hash bool) (ino uint64, sum string, n int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, "", 0, err
	}
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	if hash {
		h := sha256.New()
		n, err = io.Copy(io.MultiWriter(out, h), in)
		sum = hex.EncodeToString(h.Sum(nil))
	} else {
		n, err = io.Copy(out, in)
	}
	if err != nil {
		return 0, "", n, fmt.Errorf("copying %s: %w", src, err)
	}
	uid, gid := ownerOf(fi)
	if err := out.Chown(uid, gid); err != nil {
		return 0, "", n, fmt.Errorf("copying %s: %w", src, err)
	}
	if err := out.Chmod(chmodBits(fi.Mode())); err != nil {
		return 0, "", n, fmt.Errorf("copying %s: %w", src, err)
	}
	ofi, err := out.Stat()
	if err != nil {
		return 0, "", n, err
	}
	if st, ok := ofi.Sys().(*syscall.Stat_t); ok {
		ino = st.Ino
	}
	err = out.Close()
	out = nil
	if err != nil {
		return 0, "", n, fmt.Errorf("copying %s: %w", src, err)
	}
	at, mt := statTimes(fi)
	if err := os.Chtimes(dst, at, mt); err != nil {
		return 0, "", n, err
	}
	return ino, sum, n, nil
}

// copySymlink recreates the symlink src at dst with owner and times, and
// returns its target.
func copySymlink(src, dst string, fi fs.FileInfo) (string, error) {
	target, err := os.Readlink(src)
	if err != nil {
		return "", err
	}
	if err := os.Symlink(target, dst); err != nil {
		return target, err
	}
	uid, gid := ownerOf(fi)
	if err := os.Lchown(dst, uid, gid); err != nil {
		return target, err
	}
	return target, setSymlinkTimes(dst, fi)
}

func setSymlinkTimes(path string, fi fs.FileInfo) error {
	at, mt := statTimes(fi)
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("setting the times of %s: %w", path, err)
	}
	return nil
}

// cloner recreates a directory tree: directories and symlinks made anew,
// regular files hardlinked (falling back to copies for good after the first
// link that cannot be made), attributes preserved.
type cloner struct {
	link    func(oldname, newname string) error
	noLink  bool
	entries []snapEntry

	linked, copied, dirs, symlinks int
	bytes, copiedBytes             int64
}

// linkFallback reports whether a failed link means "copy instead".
func linkFallback(err error) bool {
	for _, e := range []error{syscall.EXDEV, syscall.EPERM, syscall.EMLINK, syscall.ENOTSUP, syscall.EOPNOTSUPP} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// clone copies the tree src to dst (which must not exist), recording each
// entry under the relative path rel.
func (c *cloner) clone(src, dst, rel string) error {
	type dirFix struct {
		path string
		fi   fs.FileInfo
	}
	var dirs []dirFix
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		sub, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		to, r := dst, rel
		if sub != "." {
			to, r = filepath.Join(dst, sub), rel+"/"+filepath.ToSlash(sub)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			if err := os.Mkdir(to, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dirFix{to, fi})
			c.entries = append(c.entries, entryOf(r, fi))
			c.dirs++
			return nil
		case fi.Mode()&fs.ModeSymlink != 0:
			e, err := copyEntry(p, to, fi, r, false)
			if err != nil {
				return err
			}
			c.entries = append(c.entries, e)
			c.symlinks++
			return nil
		case !fi.Mode().IsRegular():
			return fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
		}
		c.bytes += fi.Size()
		if !c.noLink && r != hiddenLockfile {
			err := c.link(p, to)
			if err == nil {
				c.entries = append(c.entries, entryOf(r, fi))
				c.linked++
				return nil
			}
			if !linkFallback(err) {
				return err
			}
			c.noLink = true
		}
		e, err := copyEntry(p, to, fi, r, false)
		if err != nil {
			return err
		}
		c.entries = append(c.entries, e)
		c.copied++
		c.copiedBytes += fi.Size()
		return nil
	})
	if err != nil {
		return fmt.Errorf("cloning %s: %w", src, err)
	}
	// Directories last, deepest first: populating a directory changes its
	// mtime, and a read-only one could not be populated.
	for i := len(dirs) - 1; i >= 0; i-- {
		d := dirs[i]
		uid, gid := ownerOf(d.fi)
		if err := os.Lchown(d.path, uid, gid); err != nil {
			return fmt.Errorf("cloning %s: %w", src, err)
		}
		if err := os.Chmod(d.path, chmodBits(d.fi.Mode())); err != nil {
			return fmt.Errorf("cloning %s: %w", src, err)
		}
		at, mt := statTimes(d.fi)
		if err := os.Chtimes(d.path, at, mt); err != nil {
			return fmt.Errorf("cloning %s: %w", src, err)
		}
	}
	return nil
}

// writeManifest makes everything written so far durable (syncfs), then
// publishes the manifest atomically.
func writeManifest(dir string, m snapManifest) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encoding the manifest: %w", err)
	}
	tmp := filepath.Join(dir, snapManifestName+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	if err := syncFS(dir); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, snapManifestName)); err != nil {
		return fmt.Errorf("writing the manifest: %w", err)
	}
	return syncDir(dir)
}

// syncFS flushes the whole filesystem holding path: one call instead of an
// fsync per file of node_modules.
func syncFS(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("syncing the filesystem of %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncing the filesystem of %s: %w", path, err)
	}
	return nil
}

func readSnapManifest(dir string) (snapManifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, snapManifestName))
	if err != nil {
		return snapManifest{}, fmt.Errorf("reading the snapshot manifest: %w", err)
	}
	var m snapManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return snapManifest{}, fmt.Errorf("parsing the snapshot manifest in %s: %w", dir, err)
	}
	if m.Version != snapVersion {
		return snapManifest{}, fmt.Errorf("snapshot %s: manifest version %d, want %d", dir, m.Version, snapVersion)
	}
	return m, nil
}

// verify checks that the snapshot is intact: every path of the manifest is
// on disk with the recorded type, mode, owner, size, mtime and inode (and
// symlink target; and content hash for the top-level files), and
// node_modules holds nothing else. It returns the manifest.
func (s Snapshot) verify() (snapManifest, error) {
	m, err := readSnapManifest(s.Dir)
	if err != nil {
		return m, err
	}
	for _, e := range m.Top {
		p := filepath.Join(s.Dir, snapFilesDir, e.Path)
		if err := checkEntry(p, e); err != nil {
			return m, fmt.Errorf("snapshot %s damaged: %w", s.Dir, err)
		}
		if e.SHA256 == "" {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return m, fmt.Errorf("snapshot %s damaged: %w", s.Dir, err)
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.SHA256 {
			return m, fmt.Errorf("snapshot %s damaged: %s: content changed", s.Dir, e.Path)
		}
	}
	want := make(map[string]int, len(m.Entries))
	for i, e := range m.Entries {
		want[e.Path] = i
	}
	seen := 0
	root := filepath.Join(s.Dir, nodeModules)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !m.HasNM && p == root && errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		rel, err := filepath.Rel(s.Dir, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		i, ok := want[rel]
		if !ok {
			return fmt.Errorf("%s: not in the manifest", rel)
		}
		seen++
		fi, err := d.Info()
		if err != nil {
			return err
		}
		return compareEntry(p, rel, fi, m.Entries[i])
	})
	if err != nil {
		return m, fmt.Errorf("snapshot %s damaged: %w", s.Dir, err)
	}
	if seen != len(m.Entries) {
		return m, fmt.Errorf("snapshot %s damaged: %d of %d node_modules entries missing", s.Dir, len(m.Entries)-seen, len(m.Entries))
	}
	return m, nil
}

func checkEntry(p string, e snapEntry) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	return compareEntry(p, e.Path, fi, e)
}

// compareEntry compares what is at p (relative name rel, Lstat fi) with
// its manifest entry.
func compareEntry(p, rel string, fi fs.FileInfo, want snapEntry) error {
	got := entryOf(rel, fi)
	switch {
	case got.Type != want.Type:
		return fmt.Errorf("%s: type %s, want %s", rel, got.Type, want.Type)
	case got.Mode != want.Mode:
		return fmt.Errorf("%s: mode %s, want %s", rel, fs.FileMode(got.Mode), fs.FileMode(want.Mode))
	case got.UID != want.UID || got.GID != want.GID:
		return fmt.Errorf("%s: owner %d:%d, want %d:%d", rel, got.UID, got.GID, want.UID, want.GID)
	case got.Size != want.Size:
		return fmt.Errorf("%s: size %d, want %d", rel, got.Size, want.Size)
	case got.MTime != want.MTime:
		return fmt.Errorf("%s: modified at %s, want %s", rel, time.Unix(0, got.MTime).UTC().Format(time.RFC3339Nano), time.Unix(0, want.MTime).UTC().Format(time.RFC3339Nano))
	case want.Ino != 0 && got.Ino != want.Ino:
		return fmt.Errorf("%s: inode %d, want %d (replaced)", rel, got.Ino, want.Ino)
	}
	if want.Type == "l" {
		target, err := os.Readlink(p)
		if err != nil {
			return err
		}
		if target != want.Target {
			return fmt.Errorf("%s: symlink to %q, want %q", rel, target, want.Target)
		}
	}
	return nil
}

// Restore puts App's package.json, lockfiles, .npmrc and node_modules back
// exactly as they were at TakeSnapshot, and leaves the snapshot intact (it
// can be restored again). It verifies the snapshot first and changes
// nothing if that fails. Files not part of npm's state (the app's own
// source) are not touched.
//
// Order, safe to rerun after a crash at any point: node_modules is rebuilt
// beside the live one as node_modules.patchagent-restore (hardlinked from
// the snapshot, or copied when that fails), the live one is renamed to
// node_modules.patchagent-old, the rebuilt one renamed into place, the old
// one deleted; then each saved top-level file is copied beside its target
// and renamed over it, and each top-level file that did not exist at
// snapshot time (a new npm-shrinkwrap.json, say) is removed. Everything is
// synced before Restore returns.
func (s Snapshot) Restore() error {
	m, err := s.verify()
	if err != nil {
		return fmt.Errorf("restoring: %w", err)
	}
	app := s.App
	if app == "" {
		app = m.App
	}
	if filepath.Clean(app) != filepath.Clean(m.App) {
		return fmt.Errorf("restoring snapshot %s into %s: it was taken from %s", s.Dir, app, m.App)
	}
	if fi, err := os.Stat(app); err != nil || !fi.IsDir() {
		return fmt.Errorf("restoring snapshot %s: app dir %s is gone", s.Dir, app)
	}
	link := s.link
	if link == nil {
		link = os.Link
	}
	nm := filepath.Join(app, nodeModules)
	fresh, aside := nm+restoreSuffix, nm+asideSuffix
	if err := os.RemoveAll(fresh); err != nil {
		return fmt.Errorf("restoring %s: removing a leftover %s: %w", app, fresh, err)
	}
	if m.HasNM {
		c := cloner{link: link}
		if err := c.clone(filepath.Join(s.Dir, nodeModules), fresh, nodeModules); err != nil {
			os.RemoveAll(fresh)
			return fmt.Errorf("restoring %s: %w", app, err)
		}
	}
	if _, err := os.Lstat(nm); err == nil {
		if err := os.RemoveAll(aside); err != nil {
			return fmt.Errorf("restoring %s: removing a leftover %s: %w", app, aside, err)
		}
		if err := os.Rename(nm, aside); err != nil {
			return fmt.Errorf("restoring %s: moving node_modules aside: %w", app, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("restoring %s: %w", app, err)
	}
	if m.HasNM {
		if err := os.Rename(fresh, nm); err != nil {
			return fmt.Errorf("restoring %s: moving the restored node_modules into place: %w", app, err)
		}
	}
	if err := syncDir(app); err != nil {
		return fmt.Errorf("restoring %s: %w", app, err)
	}
	if err := os.RemoveAll(aside); err != nil {
		return fmt.Errorf("restoring %s: removing the replaced node_modules: %w", app, err)
	}

	saved := map[string]snapEntry{}
	for _, e := range m.Top {
		saved[e.Path] = e
	}
	for _, name := range snapTopFiles {
		target := filepath.Join(app, name)
		if _, ok := saved[name]; !ok {
			if err := os.Remove(target); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("restoring %s: removing %s: %w", app, name, err)
			}
			continue
		}
		src := filepath.Join(s.Dir, snapFilesDir, name)
		fi, err := os.Lstat(src)
		if err != nil {
			return fmt.Errorf("restoring %s: %w", app, err)
		}
		tmp := filepath.Join(app, "."+name+restoreSuffix)
		if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("restoring %s: %w", app, err)
		}
		if _, err := copyEntry(src, tmp, fi, name, false); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("restoring %s: %w", app, err)
		}
		if err := os.Rename(tmp, target); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("restoring %s: %w", app, err)
		}
	}
	// syncfs covers the app dir's own entries too.
	if err := syncFS(app); err != nil {
		return fmt.Errorf("restoring %s: %w", app, err)
	}
	return nil
}

// PruneSnapshots keeps the newest keep snapshots under root (by the time in
// their manifest) and removes the others, along with leftovers of a
// TakeSnapshot that crashed (marker, no manifest). Other entries of root
// are left alone. freed counts the bytes of regular files whose last link
// goes away: data still hardlinked from the app (or from a kept snapshot)
// is not freed and not counted.
func PruneSnapshots(root string, keep int) (removed int, freed int64, err error) {
	if keep < 0 {
		return 0, 0, fmt.Errorf("pruning snapshots in %s: keep %d < 0", root, keep)
	}
	ents, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("pruning snapshots in %s: %w", root, err)
	}
	type snap struct {
		dir     string
		created time.Time
	}
	var snaps []snap
	var doomed []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(root, e.Name())
		m, err := readSnapManifest(dir)
		if err == nil {
			snaps = append(snaps, snap{dir, m.Created})
			continue
		}
		if _, merr := os.Lstat(filepath.Join(dir, snapManifestName)); errors.Is(merr, fs.ErrNotExist) {
			if _, err := os.Lstat(filepath.Join(dir, snapMarkerName)); err == nil {
				doomed = append(doomed, dir)
			}
		}
	}
	sort.Slice(snaps, func(i, j int) bool {
		if !snaps[i].created.Equal(snaps[j].created) {
			return snaps[i].created.After(snaps[j].created)
		}
		return snaps[i].dir > snaps[j].dir
	})
	for i := keep; i < len(snaps); i++ {
		doomed = append(doomed, snaps[i].dir)
	}
	if len(doomed) == 0 {
		return 0, 0, nil
	}
	_, freed, err = sizeOf(doomed...)
	if err != nil {
		return 0, 0, fmt.Errorf("pruning snapshots in %s: %w", root, err)
	}
	for _, d := range doomed {
		if err := os.RemoveAll(d); err != nil {
			return removed, freed, fmt.Errorf("pruning snapshots in %s: %w", root, err)
		}
		removed++
	}
	return removed, freed, nil
}

// SnapshotSize is the logical size of the regular files under dir, and how
// much of it is unique to dir: files none of whose links are outside dir
// (for a hardlinked snapshot, what the app no longer shares).
func SnapshotSize(dir string) (logical, unique int64, err error) {
	logical, unique, err = sizeOf(dir)
	if err != nil {
		return 0, 0, fmt.Errorf("measuring snapshot %s: %w", dir, err)
	}
	return logical, unique, nil
}

// sizeOf sums the regular files under dirs; unique counts those whose
// every link is under dirs.
func sizeOf(dirs ...string) (logical, unique int64, err error) {
	type inode struct{ dev, ino uint64 }
	type seen struct {
		links, nlink uint64
		size         int64
	}
	multi := map[inode]*seen{}
	for _, dir := range dirs {
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.Type().IsRegular() {
				return nil
			}
			fi, err := d.Info()
			if err != nil {
				return err
			}
			logical += fi.Size()
			st, ok := fi.Sys().(*syscall.Stat_t)
			if !ok || st.Nlink <= 1 {
				unique += fi.Size()
				return nil
			}
			k := inode{uint64(st.Dev), st.Ino}
			s := multi[k]
			if s == nil {
				s = &seen{nlink: uint64(st.Nlink), size: fi.Size()}
				multi[k] = s
			}
			s.links++
			return nil
		})
		if err != nil {
			return 0, 0, err
		}
	}
	for _, s := range multi {
		if s.links >= s.nlink {
			unique += s.size
		}
	}
	return logical, unique, nil
}
