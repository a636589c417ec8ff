package hooks

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Root works inside directories the app user owns: app.dir, its
// node_modules and .npmrc, PM2_HOME and pm2's pid files. That user is the
// identity of the internet-facing Node process (an RCE in the app is that
// user), so everything there is hostile input, changing while root looks at
// it. The rules, in this file and for every caller:
//
//   - root never resolves a path below such a directory: it holds a
//     directory fd (dirFD), opened without following symlinks, and names
//     entries relative to it with *at calls (O_NOFOLLOW, AT_SYMLINK_NOFOLLOW);
//   - what root opens it checks with fstat on the open fd (type, owner,
//     size), never with an earlier lstat of the name, and what it records
//     (owner, mode, times) comes from that fstat;
//   - files are opened O_NONBLOCK (a FIFO planted by the user cannot hang
//     root past its deadline) and read with a size cap where the size is
//     known to be small;
//   - attributes are set through fds (fchown, fchmod, utimensat on the fd),
//     so a swapped name cannot redirect a chmod or chown.
//
// A name the user swaps between two calls then changes only which of the
// user's own inodes root acts on, never something outside the directory.

// dirFD is an open directory. Its path is for messages only: it is never
// resolved again.
type dirFD struct {
	f    *os.File
	path string
	// keepFree: root's state dir, where what the app user sizes is copied
	// (a sparse .npmrc, node_modules when links fail): a copy into it must
	// leave its filesystem room (roomFor). Its sub directories inherit it.
	keepFree bool
}

const maxSymlinks = 40 // as the kernel's path walk

// openDirPath opens path as a directory, walking it one component at a time
// with O_PATH|O_NOFOLLOW. A symlink on the way is followed only when root
// owns it (checked on the link itself, through its own fd, so it cannot be
// swapped between the check and the read); any other symlink is refused with
// an error naming it: a user-owned link in the path would let the user point
// root at a directory of their choosing.
func openDirPath(path string) (*dirFD, error) {
	w, err := walkDirPath(path)
	if err != nil {
		return nil, err
	}
	defer w.close()
	fd, err := unix.Openat(w.cur, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	return &dirFD{f: os.NewFile(uintptr(fd), path), path: filepath.Clean(path)}, nil
}

// StatDir stats the directory path as openDirPath walks to it (O_PATH,
// O_NOFOLLOW, only root's symlinks followed) without opening it for
// reading: what check-config looks at in a directory the app user
// controls. An error says why path is not such a directory.
func StatDir(path string) (unix.Stat_t, error) {
	var st unix.Stat_t
	w, err := walkDirPath(path)
	if err != nil {
		return st, err
	}
	defer w.close()
	if err := unix.Fstat(w.cur, &st); err != nil {
		return st, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return st, nil
}

// walkDirPath walks path to the directory it names (see openDirPath); the
// caller closes the walk.
func walkDirPath(path string) (*pathWalk, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("%s: not an absolute path", path)
	}
	root, err := openRoot()
	if err != nil {
		return nil, err
	}
	w := &pathWalk{path: path, cur: root, walked: "/", rest: splitPath(path)}
	for len(w.rest) > 0 {
		name := w.rest[0]
		w.rest = w.rest[1:]
		if err := w.step(name); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

// pathWalk is openDirPath's walk: the directory reached so far (an O_PATH
// fd, which the walk owns), its path as walked, the components still to
// walk and how many symlinks were followed.
type pathWalk struct {
	path   string // the path asked for, for messages
	cur    int
	walked string
	rest   []string
	links  int
}

// openRoot opens "/", where an absolute path, or a symlink's absolute
// target, starts.
func openRoot() (int, error) {
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: "/", Err: err}
	}
	return fd, nil
}

// moveTo makes fd, the directory at walked, the one reached, closing the
// one before.
func (w *pathWalk) moveTo(fd int, walked string) {
	unix.Close(w.cur)
	w.cur, w.walked = fd, walked
}

func (w *pathWalk) close() { unix.Close(w.cur) }

// step walks one component, name, from the directory reached: into a
// directory, or through a symlink root owns (see follow).
func (w *pathWalk) step(name string) error {
	switch name {
	case ".":
		return nil
	case "..":
		return w.up()
	}
	here := filepath.Join(w.walked, name)
	fd, err := unix.Openat(w.cur, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: here, Err: err}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return &fs.PathError{Op: "stat", Path: here, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		w.moveTo(fd, here)
		return nil
	case unix.S_IFLNK:
		// Read through the fd that was fstat'd: the target is that of the
		// link whose owner st holds, whatever the name is now.
		target, err := readlinkFD(fd)
		unix.Close(fd)
		if err != nil {
			return &fs.PathError{Op: "readlink", Path: here, Err: err}
		}
		return w.follow(here, target, st.Uid)
	}
	unix.Close(fd)
	return &fs.PathError{Op: "open", Path: here, Err: unix.ENOTDIR}
}

// up walks to the parent of the directory reached. Only lexically, on what
// was walked: ".." of a followed link would otherwise need the kernel's view
// of where it points.
func (w *pathWalk) up() error {
	parent := filepath.Dir(w.walked)
	next, err := unix.Openat(w.cur, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return &fs.PathError{Op: "open", Path: parent, Err: err}
	}
	w.moveTo(next, parent)
	return nil
}

// follow continues the walk through the symlink at here, owned by uid, to
// target: only a link root owns is followed, at most maxSymlinks of them.
func (w *pathWalk) follow(here, target string, uid uint32) error {
	if uid != 0 {
		return fmt.Errorf("%s: %s is a symlink owned by uid %d: on the way to a directory the app user controls only root's symlinks are followed (use the real path, or a link root owns)", w.path, here, uid)
	}
	if w.links++; w.links > maxSymlinks {
		return &fs.PathError{Op: "open", Path: w.path, Err: unix.ELOOP}
	}
	w.rest = append(splitPath(target), w.rest...)
	if filepath.IsAbs(target) {
		root, err := openRoot()
		if err != nil {
			return err
		}
		w.moveTo(root, "/")
	}
	return nil
}

func splitPath(p string) []string {
	var out []string
	for _, s := range strings.Split(p, "/") {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// readlinkFD reads the symlink an O_PATH|O_NOFOLLOW fd holds.
func readlinkFD(fd int) (string, error) {
	return readlinkAt(fd, "")
}

func readlinkAt(dirfd int, name string) (string, error) {
	for size := 256; size <= 1<<16; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
	return "", unix.ENAMETOOLONG
}

func (d *dirFD) fd() int { return int(d.f.Fd()) }

func (d *dirFD) Close() error { return d.f.Close() }

func (d *dirFD) join(name string) string { return filepath.Join(d.path, name) }

func (d *dirFD) pathErr(op, name string, err error) error {
	return &fs.PathError{Op: op, Path: d.join(name), Err: err}
}

// stat is fstatat(name, AT_SYMLINK_NOFOLLOW): what the entry is now, for a
// decision the caller confirms on an fd, or for an entry root created in a
// directory only it can write.
func (d *dirFD) stat(name string) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd(), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return st, d.pathErr("lstat", name, err)
	}
	return st, nil
}

// sub opens the directory name below d, not following a symlink.
func (d *dirFD) sub(name string) (*dirFD, error) {
	fd, err := unix.Openat(d.fd(), name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, d.pathErr("open", name, err)
	}
	return &dirFD{f: os.NewFile(uintptr(fd), d.join(name)), path: d.join(name), keepFree: d.keepFree}, nil
}

// openRegular opens name below d for reading: not through a symlink,
// non-blocking (a FIFO cannot hang the open or a read), and only if fstat on
// the fd says it is a regular file. st is that fstat.
func (d *dirFD) openRegular(name string) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Openat(d.fd(), name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, st, d.pathErr("open", name, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, st, d.pathErr("stat", name, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return nil, st, fmt.Errorf("%s is not a regular file (%s)", d.join(name), modeOf(&st).Type())
	}
	return os.NewFile(uintptr(fd), d.join(name)), st, nil
}

// readRegular reads name below d (see openRegular), refusing more than max
// bytes.
func (d *dirFD) readRegular(name string, max int64) ([]byte, unix.Stat_t, error) {
	f, st, err := d.openRegular(name)
	if err != nil {
		return nil, st, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, st, fmt.Errorf("reading %s: %w", d.join(name), err)
	}
	if int64(len(b)) > max {
		return nil, st, fmt.Errorf("%s is larger than %d bytes", d.join(name), max)
	}
	return b, st, nil
}

// mkdirPrivate creates the directory name below d, 0700 and owned by us,
// and opens it. It refuses what it opens unless that is an empty directory
// owned by us with mode 0700: in a directory the user can write, the name
// can be swapped between the mkdir and the open.
func (d *dirFD) mkdirPrivate(name string) (*dirFD, error) {
	if err := unix.Mkdirat(d.fd(), name, 0o700); err != nil {
		return nil, d.pathErr("mkdir", name, err)
	}
	s, err := d.sub(name)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(s.fd(), &st); err != nil {
		s.Close()
		return nil, d.pathErr("stat", name, err)
	}
	ents, err := s.entries()
	if err == nil && (int(st.Uid) != os.Geteuid() || st.Mode&0o7777 != 0o700 || len(ents) != 0) {
		err = fmt.Errorf("%s changed under us after it was created (owner %d, mode %o, %d entries)", d.join(name), st.Uid, st.Mode&0o7777, len(ents))
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// dirent is one directory entry; typ is the d_type (DT_UNKNOWN on
// filesystems that do not fill it in).
type dirent struct {
	name string
	typ  uint8
}

// entries lists d (without . and ..) with getdents64, sorted by name. It
// reads the fd from its current offset: call it once per dirFD.
func (d *dirFD) entries() ([]dirent, error) {
	var out []dirent
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(d.fd(), buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "getdents", Path: d.path, Err: err}
		}
		if n <= 0 {
			break
		}
		for b := buf[:n]; len(b) > 0; {
			// struct linux_dirent64 { u64 ino; s64 off; u16 reclen; u8 type; char name[]; }
			if len(b) < 19 {
				return nil, &fs.PathError{Op: "getdents", Path: d.path, Err: unix.EIO}
			}
			reclen := int(*(*uint16)(unsafe.Pointer(&b[16])))
			if reclen < 19 || reclen > len(b) {
				return nil, &fs.PathError{Op: "getdents", Path: d.path, Err: unix.EIO}
			}
			name := b[19:reclen]
			if i := indexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out = append(out, dirent{name: s, typ: b[18]})
			}
			b = b[reclen:]
		}
	}
	sortDirents(out)
	return out, nil
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

func sortDirents(es []dirent) {
	// insertion sort is fine for a directory; sort.Slice allocates more
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].name < es[j-1].name; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// removeAll removes name below d and everything under it, never following
// a symlink (unlinkat, and openat with O_NOFOLLOW for each directory). A
// missing name is not an error.
func (d *dirFD) removeAll(name string) error {
	err := unix.Unlinkat(d.fd(), name, 0)
	if err == nil || errors.Is(err, unix.ENOENT) {
		return nil
	}
	if !errors.Is(err, unix.EISDIR) && !errors.Is(err, unix.EPERM) {
		return d.pathErr("unlink", name, err)
	}
	s, err := d.sub(name)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return err
	}
	ents, err := s.entries()
	if err == nil {
		for _, e := range ents {
			if err = s.removeAll(e.name); err != nil {
				break
			}
		}
	}
	s.Close()
	if err != nil {
		return err
	}
	if err := unix.Unlinkat(d.fd(), name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return d.pathErr("rmdir", name, err)
	}
	return nil
}

// walk opens each directory of rel (slash-separated, relative to d) without
// following symlinks, and returns the last one with rel's final name.
func (d *dirFD) walk(rel string) (*dirFD, string, error) {
	parts := splitPath(rel)
	if len(parts) == 0 || filepath.IsAbs(rel) {
		return nil, "", fmt.Errorf("%s: not a relative file name", rel)
	}
	cur := d
	for _, p := range parts[:len(parts)-1] {
		next, err := cur.sub(p)
		if cur != d {
			cur.Close()
		}
		if err != nil {
			return nil, "", err
		}
		cur = next
	}
	if cur == d {
		s, err := d.sub(".")
		if err != nil {
			return nil, "", err
		}
		cur = s
	}
	return cur, parts[len(parts)-1], nil
}

// readUserFile reads the regular file rel below the directory dir, which
// the app user controls: dir is opened with openDirPath, every component of
// rel without following symlinks, the file non-blocking, at most max bytes.
func readUserFile(dir, rel string, max int64) ([]byte, error) {
	root, err := openDirPath(dir)
	if err != nil {
		return nil, err
	}
	defer root.Close()
	parent, name, err := root.walk(rel)
	if err != nil {
		return nil, err
	}
	defer parent.Close()
	b, _, err := parent.readRegular(name, max)
	return b, err
}

// rename is renameat within d.
func (d *dirFD) rename(from, to string) error {
	if err := unix.Renameat(d.fd(), from, d.fd(), to); err != nil {
		return &os.LinkError{Op: "rename", Old: d.join(from), New: d.join(to), Err: err}
	}
	return nil
}

// sync fsyncs d, making renames and creations in it durable.
func (d *dirFD) sync() error {
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", d.path, err)
	}
	return nil
}

// modeOf is the fs.FileMode of a stat, as os.Lstat reports it.
func modeOf(st *unix.Stat_t) fs.FileMode {
	m := fs.FileMode(st.Mode & 0o777)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		m |= fs.ModeDevice
	case unix.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case unix.S_IFDIR:
		m |= fs.ModeDir
	case unix.S_IFIFO:
		m |= fs.ModeNamedPipe
	case unix.S_IFLNK:
		m |= fs.ModeSymlink
	case unix.S_IFSOCK:
		m |= fs.ModeSocket
	}
	if st.Mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if st.Mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if st.Mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// setFDTimes sets the access and modification times of the file fd holds
// (utimensat with a NULL path: the fd itself, whatever its name is now).
func setFDTimes(fd int, atime, mtime time.Time) error {
	ts := [2]unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(mtime.UnixNano())}
	_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts)), 0, 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// statTimesOf is a stat's access and modification times.
func statTimesOf(st *unix.Stat_t) (atime, mtime time.Time) {
	return time.Unix(st.Atim.Sec, st.Atim.Nsec), time.Unix(st.Mtim.Sec, st.Mtim.Nsec)
}
