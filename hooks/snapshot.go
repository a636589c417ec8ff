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
	// restoreStaging is Restore's staging dir in the app dir (root's,
	// 0700); legacyRestoreDir is where versions before it built
	// node_modules, removed if a crash left it.
	restoreStaging   = ".patchagent-restore"
	legacyRestoreDir = "node_modules.patchagent-restore"
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

	// link makes hardlinks (nil: linkAt); tests replace it to force the
	// copy fallback.
	link linkFunc
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
	Version int       `json:"version"`
	Created time.Time `json:"created"`
	// Seq orders the snapshots of one root: one more than the highest
	// there when taken. Pruning goes by it, not by Created, so that a
	// wall clock stepped back cannot make the newest snapshot (this cycle's,
	// which exit may need to roll back) look the oldest (0 in snapshots of
	// earlier versions: older than any with one).
	Seq        int64       `json:"seq,omitempty"`
	App        string      `json:"app"`
	Hardlinked bool        `json:"hardlinked"`
	Top        []snapEntry `json:"top"`          // saved top-level files, relative to files/
	HasNM      bool        `json:"node_modules"` // whether the app had node_modules
	// AppUID owns the app dir; Restore refuses a dir owned by another
	// (absent in snapshots of earlier versions).
	AppUID  *uint32     `json:"app_uid,omitempty"`
	Entries []snapEntry `json:"entries"` // node_modules, relative to the snapshot dir
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
//
// appDir belongs to the app user, who may be changing it while root reads
// it (see dirfd.go): it is opened with openDirPath, node_modules is walked
// through directory fds without following a symlink, files are opened
// O_NOFOLLOW|O_NONBLOCK and what is recorded comes from fstat on the open
// fd (a name swapped after a check cannot make root copy another file under
// the checked file's owner), and hardlinks are made with linkat between
// verified directory fds, recorded from the link made (in the snapshot,
// which only root can write), so a swapped name links only the user's own
// inodes.
func TakeSnapshot(appDir, dst string) (Snapshot, SnapshotStats, error) {
	return takeSnapshot(appDir, dst, linkAt)
}

// linkFunc makes a hardlink of oldname in olddir as newname in newdir,
// never following a symlink (linkat without AT_SYMLINK_FOLLOW).
type linkFunc func(olddir int, oldname string, newdir int, newname string) error

func linkAt(olddir int, oldname string, newdir int, newname string) error {
	return unix.Linkat(olddir, oldname, newdir, newname, 0)
}

func takeSnapshot(appDir, dst string, link linkFunc) (Snapshot, SnapshotStats, error) {
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
	made := false // dir made here: a failed snapshot removes it
	fail := func(err error) (Snapshot, SnapshotStats, error) {
		if made {
			// In root's own state dir: removing by path is safe there.
			if rerr := os.RemoveAll(dir); rerr != nil {
				err = fmt.Errorf("%w (and removing the partial snapshot: %v)", err, rerr)
			}
		}
		return Snapshot{}, st, fmt.Errorf("snapshotting %s: %w", app, err)
	}
	appD, err := openDirPath(app)
	if err != nil {
		return fail(err)
	}
	defer appD.Close()
	var appSt unix.Stat_t
	if err := unix.Fstat(appD.fd(), &appSt); err != nil {
		return fail(err)
	}
	if _, err := appD.stat(packageJSON); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fail(ErrNoPackageJSON)
		}
		return fail(err)
	}
	// dst is in root's own state dir: paths are safe there.
	if _, err := os.Lstat(dir); err == nil {
		return fail(fmt.Errorf("%s already exists", dir))
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fail(err)
	}
	made = true
	if err := os.WriteFile(filepath.Join(dir, snapMarkerName), nil, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Mkdir(filepath.Join(dir, snapFilesDir), 0o700); err != nil {
		return fail(err)
	}
	snapD, err := openDirPath(dir)
	if err != nil {
		return fail(err)
	}
	defer snapD.Close()
	snapD.keepFree = true
	filesD, err := snapD.sub(snapFilesDir)
	if err != nil {
		return fail(err)
	}
	defer filesD.Close()
	uid := appSt.Uid
	m := snapManifest{Version: snapVersion, Created: time.Now().UTC(), App: app, AppUID: &uid, Seq: nextSeq(filepath.Dir(dir))}

	for _, name := range snapTopFiles {
		e, ok, err := saveTopFile(appD, filesD, name)
		if err != nil {
			return fail(err)
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

	nmSt, err := appD.stat(nodeModules)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fail(err)
	case nmSt.Mode&unix.S_IFMT != unix.S_IFDIR:
		return fail(fmt.Errorf("%s is not a directory (a symlinked node_modules is not supported)", appD.join(nodeModules)))
	default:
		m.HasNM = true
		c := cloner{link: link}
		if err := c.cloneDir(appD, snapD, nodeModules, nodeModules); err != nil {
			return fail(err)
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
		return fail(err)
	}
	st.Took = time.Since(start)
	return Snapshot{Dir: dir, App: app, link: link}, st, nil
}

// saveTopFile copies the top-level file name (or symlink) of the app dir
// into files with its attributes; ok is false when there is none.
func saveTopFile(app, files *dirFD, name string) (snapEntry, bool, error) {
	st, err := app.stat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return snapEntry{}, false, nil
	}
	if err != nil {
		return snapEntry{}, false, err
	}
	e, err := copyEntryAt(app, files, name, name, &st, true)
	if err != nil {
		return snapEntry{}, false, err
	}
	return e, true, nil
}

// copyEntryAt copies the regular file or symlink name from src to dst (a
// directory only root can write) with owner, mode and times, and returns
// its entry under rel (the inode of the copy; sha256 when hash is set). st
// is what an fstatat of name said: it picks the type; a regular file's
// entry comes from fstat on the file opened.
func copyEntryAt(src, dst *dirFD, name, rel string, st *unix.Stat_t, hash bool) (snapEntry, error) {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		return copySymlinkAt(src, dst, name, rel)
	case unix.S_IFREG:
		return copyFileAt(src, dst, name, rel, hash)
	}
	return snapEntry{}, fmt.Errorf("%s: unsupported file type %s", src.join(name), modeOf(st).Type())
}

func entryOfStat(rel string, st *unix.Stat_t) snapEntry {
	e := snapEntry{Path: rel, Mode: uint32(modeOf(st)), MTime: st.Mtim.Nano(), UID: st.Uid, GID: st.Gid}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		e.Type = "d"
	case unix.S_IFLNK:
		e.Type = "l"
	default:
		e.Type = "f"
		e.Size = st.Size
		e.Ino = st.Ino // directories and symlinks are recreated: new inodes
	}
	return e
}

// unixPerm is what chmod sets out of a stat's mode: permissions and the
// set-id and sticky bits.
func unixPerm(st *unix.Stat_t) uint32 { return st.Mode & 0o7777 }

// copyFileAt copies the regular file name from src into dst: opened with
// openRegular (no symlink, no FIFO, fstat-checked), content copied
// (copy_file_range where the kernel can), then owner, mode (after chown,
// which clears set-id bits) and times set through the new file's fd. The
// entry is the source's fstat, with the copy's inode.
func copyFileAt(src, dst *dirFD, name, rel string, hash bool) (snapEntry, error) {
	in, st, err := src.openRegular(name)
	if err != nil {
		return snapEntry{}, err
	}
	defer in.Close()
	e := entryOfStat(rel, &st)
	if dst.keepFree {
		if err := roomFor(dst, src.join(name), st.Size); err != nil {
			return e, err
		}
	}
	fd, err := unix.Openat(dst.fd(), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return e, dst.pathErr("create", name, err)
	}
	out := os.NewFile(uintptr(fd), dst.join(name))
	defer func() {
		if out != nil {
			out.Close()
		}
	}()
	// At most what fstat said, and one byte to tell growth: a file the
	// user keeps appending to cannot make root copy for ever.
	body := io.LimitReader(in, st.Size+1)
	var n int64
	if hash {
		h := sha256.New()
		n, err = io.Copy(io.MultiWriter(out, h), body)
		e.SHA256 = hex.EncodeToString(h.Sum(nil))
	} else {
		n, err = io.Copy(out, body)
	}
	if err == nil && n != st.Size {
		err = fmt.Errorf("%d bytes read, the file has %d (changed while copied)", n, st.Size)
	}
	if err != nil {
		return e, fmt.Errorf("copying %s: %w", src.join(name), err)
	}
	if err := setAttrsFD(int(out.Fd()), &st); err != nil {
		return e, fmt.Errorf("copying %s: %w", src.join(name), err)
	}
	var ost unix.Stat_t
	if err := unix.Fstat(int(out.Fd()), &ost); err != nil {
		return e, err
	}
	e.Ino = ost.Ino
	err = out.Close()
	out = nil
	if err != nil {
		return e, fmt.Errorf("copying %s: %w", src.join(name), err)
	}
	return e, nil
}

// minFree is what a copy into root's state dir leaves free on its
// filesystem, for unprivileged use: 5% of it, at most 1 GiB (a large disk
// need not keep more).
func minFree(fs *unix.Statfs_t) int64 {
	return min(int64(fs.Blocks)*fs.Frsize/20, 1<<30)
}

// roomFor refuses to copy size bytes of the app user's file what into dir
// when that would leave its filesystem less than minFree: root writes past
// the reserved blocks, and a sparse file of the user's costs the user
// nothing but becomes real blocks in the copy.
func roomFor(dir *dirFD, what string, size int64) error {
	var fs unix.Statfs_t
	if err := unix.Fstatfs(dir.fd(), &fs); err != nil {
		return dir.pathErr("statfs", ".", err)
	}
	avail, keep := int64(fs.Bavail)*fs.Frsize, minFree(&fs)
	if size > avail-keep {
		return fmt.Errorf("%s is %d bytes: copying it into %s would leave less than %d KiB free there (%d KiB available)", what, size, dir.path, keep>>10, avail>>10)
	}
	return nil
}

// setAttrsFD gives the file fd holds the owner, mode and times of st (mode
// after owner: chown clears set-id bits).
func setAttrsFD(fd int, st *unix.Stat_t) error {
	if err := unix.Fchown(fd, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := unix.Fchmod(fd, unixPerm(st)); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	at, mt := statTimesOf(st)
	if err := setFDTimes(fd, at, mt); err != nil {
		return fmt.Errorf("setting times: %w", err)
	}
	return nil
}

// copySymlinkAt recreates the symlink name of src in dst (a directory only
// root can write, so setting its owner and times by name there is safe).
// Owner, times and target all come from one link, opened O_PATH|O_NOFOLLOW
// and fstat'd: a link swapped in after the fstatat that chose the type (a
// root-owned one moved in and out by the app user) cannot lend its owner
// to another link's target.
func copySymlinkAt(src, dst *dirFD, name, rel string) (snapEntry, error) {
	fd, err := unix.Openat(src.fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return snapEntry{}, src.pathErr("open", name, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return snapEntry{}, src.pathErr("stat", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return snapEntry{}, fmt.Errorf("%s: no longer a symlink (changed while copied)", src.join(name))
	}
	e := entryOfStat(rel, &st)
	target, err := readlinkFD(fd)
	if err != nil {
		return e, src.pathErr("readlink", name, err)
	}
	e.Target = target
	if err := unix.Symlinkat(target, dst.fd(), name); err != nil {
		return e, dst.pathErr("symlink", name, err)
	}
	if err := unix.Fchownat(dst.fd(), name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return e, dst.pathErr("lchown", name, err)
	}
	at, mt := statTimesOf(&st)
	ts := []unix.Timespec{unix.NsecToTimespec(at.UnixNano()), unix.NsecToTimespec(mt.UnixNano())}
	if err := unix.UtimesNanoAt(dst.fd(), name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return e, dst.pathErr("setting the times of", name, err)
	}
	return e, nil
}

// cloner recreates a directory tree: directories and symlinks made anew,
// regular files hardlinked (falling back to copies for good after the first
// link that cannot be made), attributes preserved. It works only through
// directory fds (see dirfd.go): the source may be the app user's, the
// destination is a directory only root can write until it is finished.
type cloner struct {
	link    linkFunc
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

// cloneDir copies the directory name of srcParent to the same name in
// dstParent (which must not have it, and which only root can write),
// recording each entry under rel.
func (c *cloner) cloneDir(srcParent, dstParent *dirFD, name, rel string) error {
	src, err := srcParent.sub(name)
	if err != nil {
		return err
	}
	defer src.Close()
	var st unix.Stat_t
	if err := unix.Fstat(src.fd(), &st); err != nil {
		return srcParent.pathErr("stat", name, err)
	}
	if err := unix.Mkdirat(dstParent.fd(), name, 0o700); err != nil {
		return dstParent.pathErr("mkdir", name, err)
	}
	dst, err := dstParent.sub(name)
	if err != nil {
		return err
	}
	defer dst.Close()
	c.entries = append(c.entries, entryOfStat(rel, &st))
	c.dirs++
	if err := c.fill(src, dst, rel); err != nil {
		return err
	}
	// The directory's own attributes last: populating it changes its mtime,
	// and a read-only one could not be populated. Through its fd: the name
	// may be the user's to swap by now (the top directory of a restore).
	if err := setAttrsFD(dst.fd(), &st); err != nil {
		return fmt.Errorf("%s: %w", dst.path, err)
	}
	return nil
}

// fill clones every entry of src into dst.
func (c *cloner) fill(src, dst *dirFD, rel string) error {
	ents, err := src.entries()
	if err != nil {
		return err
	}
	for _, de := range ents {
		r := rel + "/" + de.name
		typ := de.typ
		var st unix.Stat_t
		if typ == unix.DT_UNKNOWN || typ == unix.DT_LNK {
			if st, err = src.stat(de.name); err != nil {
				return err
			}
			typ = dtype(&st)
		}
		switch typ {
		case unix.DT_DIR:
			if err := c.cloneDir(src, dst, de.name, r); err != nil {
				return err
			}
		case unix.DT_LNK:
			e, err := copySymlinkAt(src, dst, de.name, r)
			if err != nil {
				return err
			}
			c.entries = append(c.entries, e)
			c.symlinks++
		case unix.DT_REG:
			if err := c.file(src, dst, de.name, r); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: unsupported file type (d_type %d)", src.join(de.name), typ)
		}
	}
	return nil
}

// file hardlinks (or copies) the regular file name of src into dst.
func (c *cloner) file(src, dst *dirFD, name, rel string) error {
	if !c.noLink && rel != hiddenLockfile {
		err := c.link(src.fd(), name, dst.fd(), name)
		if err == nil {
			// Recorded from the link made, in a directory only root can
			// write: what the name pointed to when linkat ran.
			st, err := dst.stat(name)
			if err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFREG {
				return fmt.Errorf("%s changed while snapshotted: no longer a regular file", src.join(name))
			}
			c.entries = append(c.entries, entryOfStat(rel, &st))
			c.linked++
			c.bytes += st.Size
			return nil
		}
		if !linkFallback(err) {
			return &os.LinkError{Op: "link", Old: src.join(name), New: dst.join(name), Err: err}
		}
		c.noLink = true
	}
	e, err := copyFileAt(src, dst, name, rel, false)
	if err != nil {
		return err
	}
	c.entries = append(c.entries, e)
	c.copied++
	c.bytes += e.Size
	c.copiedBytes += e.Size
	return nil
}

func dtype(st *unix.Stat_t) uint8 {
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return unix.DT_DIR
	case unix.S_IFLNK:
		return unix.DT_LNK
	case unix.S_IFREG:
		return unix.DT_REG
	}
	return unix.DT_UNKNOWN
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
	return syncFSOf(f)
}

func syncFSOf(f *os.File) error {
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncing the filesystem of %s: %w", f.Name(), err)
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
// node_modules holds nothing else. It returns the manifest. The snapshot is
// root's, but it is read the same way as the app dir (no symlink followed).
func (s Snapshot) verify() (snapManifest, error) {
	m, err := readSnapManifest(s.Dir)
	if err != nil {
		return m, err
	}
	damaged := func(err error) (snapManifest, error) {
		return m, fmt.Errorf("snapshot %s damaged: %w", s.Dir, err)
	}
	snapD, err := openDirPath(s.Dir)
	if err != nil {
		return damaged(err)
	}
	defer snapD.Close()
	filesD, err := snapD.sub(snapFilesDir)
	if err != nil {
		return damaged(err)
	}
	defer filesD.Close()
	if err := verifyTop(filesD, m.Top); err != nil {
		return damaged(err)
	}
	if err := verifyNodeModules(snapD, m); err != nil {
		return damaged(err)
	}
	return m, nil
}

// verifyTop checks the saved top-level files in files against their
// entries, and the content of each one with a hash against it.
func verifyTop(files *dirFD, top []snapEntry) error {
	for _, e := range top {
		if err := checkEntryAt(files, e.Path, e); err != nil {
			return err
		}
		if e.SHA256 == "" {
			continue
		}
		b, _, err := files.readRegular(e.Path, 1<<30)
		if err != nil {
			return err
		}
		if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != e.SHA256 {
			return fmt.Errorf("%s: content changed", e.Path)
		}
	}
	return nil
}

// verifyNodeModules checks the snapshot's node_modules against m's
// entries: everything in it is in the manifest and as recorded, and every
// entry of the manifest was found. A node_modules on disk that the manifest
// says the app did not have is walked too, and so refused.
func verifyNodeModules(snapD *dirFD, m snapManifest) error {
	c := treeCheck{want: make(map[string]snapEntry, len(m.Entries))}
	for _, e := range m.Entries {
		c.want[e.Path] = e
	}
	if _, err := snapD.stat(nodeModules); err == nil || m.HasNM {
		if err := c.walk(snapD, nodeModules, nodeModules); err != nil {
			return err
		}
	}
	if c.seen != len(m.Entries) {
		return fmt.Errorf("%d of %d node_modules entries missing", len(m.Entries)-c.seen, len(m.Entries))
	}
	return nil
}

// treeCheck is verifyNodeModules' walk: the manifest's entries by path,
// and how many of them were found on disk.
type treeCheck struct {
	want map[string]snapEntry
	seen int
}

// walk checks the entry name of parent, saved under rel, and everything
// below it when it is a directory.
func (c *treeCheck) walk(parent *dirFD, name, rel string) error {
	want, ok := c.want[rel]
	if !ok {
		return fmt.Errorf("%s: not in the manifest", rel)
	}
	c.seen++
	if err := checkEntryAt(parent, name, want); err != nil {
		return err
	}
	if want.Type != "d" {
		return nil
	}
	d, err := parent.sub(name)
	if err != nil {
		return err
	}
	defer d.Close()
	ents, err := d.entries()
	if err != nil {
		return err
	}
	for _, de := range ents {
		if err := c.walk(d, de.name, rel+"/"+de.name); err != nil {
			return err
		}
	}
	return nil
}

// checkEntryAt compares the entry name of d with its manifest entry.
func checkEntryAt(d *dirFD, name string, want snapEntry) error {
	st, err := d.stat(name)
	if err != nil {
		return err
	}
	got := entryOfStat(want.Path, &st)
	rel := want.Path
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
		target, err := readlinkAt(d.fd(), name)
		if err != nil {
			return d.pathErr("readlink", name, err)
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
// The app dir is the app user's (see dirfd.go), so root builds nothing in
// it by name: everything is first made in a staging directory,
// .patchagent-restore in the app dir, created 0700 by root (mkdirPrivate:
// only root can write into it, whatever the user renames around it), where
// owners, modes and times are set; each finished entry is then moved into
// the app dir with one renameat out of the staging dir's fd. What the user
// can swap in the app dir while this runs are names, and a rename only
// moves the entry root made, never follows one.
//
// Order, safe to rerun after a crash at any point: node_modules is rebuilt
// in the staging dir (hardlinked from the snapshot, or copied when that
// fails), the live one is renamed to node_modules.patchagent-old, the
// rebuilt one renamed into place, the old one deleted (unlinkat, no link
// followed); then each saved top-level file is made in the staging dir and
// renamed over its target, and each top-level file that did not exist at
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
	link := s.link
	if link == nil {
		link = linkAt
	}
	fail := func(err error) error { return fmt.Errorf("restoring %s: %w", app, err) }
	appD, err := openDirPath(app)
	if err != nil {
		return fmt.Errorf("restoring snapshot %s: app dir: %w", s.Dir, err)
	}
	defer appD.Close()
	var appSt unix.Stat_t
	if err := unix.Fstat(appD.fd(), &appSt); err != nil {
		return fail(err)
	}
	if m.AppUID != nil && appSt.Uid != *m.AppUID {
		return fail(fmt.Errorf("the app dir is owned by uid %d, the snapshot was taken of one owned by uid %d", appSt.Uid, *m.AppUID))
	}
	snapD, err := openDirPath(s.Dir)
	if err != nil {
		return fail(err)
	}
	defer snapD.Close()
	stage, err := openStaging(appD)
	if err != nil {
		return fail(err)
	}
	defer stage.Close()
	r := restorer{app: appD, snap: snapD, stage: stage, link: link}
	if err := r.nodeModules(m.HasNM); err != nil {
		return fail(err)
	}
	if err := r.topFiles(m.Top); err != nil {
		return fail(err)
	}
	if err := r.removeStaging(); err != nil {
		return fail(err)
	}
	// syncfs covers the app dir's own entries too.
	if err := syncFSOf(appD.f); err != nil {
		return fail(err)
	}
	return nil
}

// openStaging creates Restore's staging dir in the app dir (mkdirPrivate:
// root's, 0700, checked), after removing what a crashed Restore left: its
// staging dir, or the build dir of a version before it.
func openStaging(app *dirFD) (*dirFD, error) {
	for _, leftover := range []string{restoreStaging, legacyRestoreDir} {
		if err := removeLeftover(app, leftover); err != nil {
			return nil, err
		}
	}
	return app.mkdirPrivate(restoreStaging)
}

// removeLeftover removes name from the app dir, where a Restore that
// crashed left it.
func removeLeftover(app *dirFD, name string) error {
	if err := app.removeAll(name); err != nil {
		return fmt.Errorf("removing a leftover: %w", err)
	}
	return nil
}

// restorer is one Restore at work: the app dir, the snapshot, and the
// staging dir in the app dir that everything is built in.
type restorer struct {
	app, snap, stage *dirFD
	link             linkFunc
}

// nodeModules replaces the app's node_modules with the snapshot's (none
// when hasNM is false), in the order that a rerun after a crash at any
// point completes: rebuilt in the staging dir, the live one renamed aside,
// the rebuilt one renamed into place, the app dir synced, the old one
// removed.
func (r *restorer) nodeModules(hasNM bool) error {
	if hasNM {
		c := cloner{link: r.link}
		if err := c.cloneDir(r.snap, r.stage, nodeModules, nodeModules); err != nil {
			r.app.removeAll(restoreStaging)
			return err
		}
	}
	aside := nodeModules + asideSuffix
	if _, err := r.app.stat(nodeModules); err == nil {
		if err := removeLeftover(r.app, aside); err != nil {
			return err
		}
		if err := r.app.rename(nodeModules, aside); err != nil {
			return fmt.Errorf("moving node_modules aside: %w", err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if hasNM {
		if err := renameInto(r.stage, r.app, nodeModules); err != nil {
			return fmt.Errorf("moving the restored node_modules into place: %w", err)
		}
	}
	if err := r.app.sync(); err != nil {
		return err
	}
	if err := r.app.removeAll(aside); err != nil {
		return fmt.Errorf("removing the replaced node_modules: %w", err)
	}
	return nil
}

// topFiles puts back each top-level file the snapshot saved (made in the
// staging dir with its attributes, then renamed over its target), and
// removes each one that did not exist when it was taken.
func (r *restorer) topFiles(top []snapEntry) error {
	saved := map[string]bool{}
	for _, e := range top {
		saved[e.Path] = true
	}
	filesD, err := r.snap.sub(snapFilesDir)
	if err != nil {
		return err
	}
	defer filesD.Close()
	for _, name := range snapTopFiles {
		if !saved[name] {
			if err := unix.Unlinkat(r.app.fd(), name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("removing %s: %w", name, err)
			}
			continue
		}
		st, err := filesD.stat(name)
		if err != nil {
			return err
		}
		if _, err := copyEntryAt(filesD, r.stage, name, name, &st, false); err != nil {
			return err
		}
		if err := renameInto(r.stage, r.app, name); err != nil {
			return err
		}
	}
	return nil
}

// removeStaging removes the staging dir, empty once everything built in
// it has been moved into place.
func (r *restorer) removeStaging() error {
	if err := unix.Unlinkat(r.app.fd(), restoreStaging, unix.AT_REMOVEDIR); err != nil {
		// Not ours any more (the user put something in its place): what
		// matters is restored; leave the name to the user.
		if !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOTDIR) {
			return err
		}
	}
	return nil
}

// renameInto moves name from the staging dir (root's, 0700) to the same
// name in dst, replacing what is there.
func renameInto(stage, dst *dirFD, name string) error {
	if err := unix.Renameat(stage.fd(), name, dst.fd(), name); err != nil {
		return &os.LinkError{Op: "rename", Old: stage.join(name), New: dst.join(name), Err: err}
	}
	return nil
}

// nextSeq is one more than the highest Seq of the snapshots under root.
func nextSeq(root string) int64 {
	ents, _ := os.ReadDir(root)
	var max int64
	for _, e := range ents {
		if m, err := readSnapManifest(filepath.Join(root, e.Name())); err == nil && m.Seq > max {
			max = m.Seq
		}
	}
	return max + 1
}

// PruneSnapshots keeps the newest keep snapshots under root (by the order
// they were taken in, their manifest's Seq; then its time) and removes the
// others, along with leftovers of a TakeSnapshot that crashed (marker, no
// manifest). Other entries of root
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
		seq     int64
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
			snaps = append(snaps, snap{dir, m.Seq, m.Created})
			continue
		}
		if _, merr := os.Lstat(filepath.Join(dir, snapManifestName)); errors.Is(merr, fs.ErrNotExist) {
			if _, err := os.Lstat(filepath.Join(dir, snapMarkerName)); err == nil {
				doomed = append(doomed, dir)
			}
		}
	}
	sort.Slice(snaps, func(i, j int) bool {
		if snaps[i].seq != snaps[j].seq {
			return snaps[i].seq > snaps[j].seq
		}
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
