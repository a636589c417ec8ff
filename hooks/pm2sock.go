package hooks

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// pm2Sock is a pm2 daemon's RPC socket: rpc.sock in PM2_HOME home, made by
// the daemon, which runs as uid.
type pm2Sock struct {
	home string
	uid  uint32
}

// dial connects to the socket that is the entry rpc.sock in PM2_HOME,
// within ctx (both DaemonAlive and each RPC dial through it). PM2_HOME is
// the app user's, so its names are not trusted: a symlink there would make
// root connect to any unix socket on the host, a FIFO would be opened. So:
//
//   - PM2_HOME is opened with openDirPath (no user-owned symlink on the way);
//   - the entry with O_PATH|O_NOFOLLOW relative to it, which opens the entry
//     itself, never what a symlink points to, and never blocks (O_PATH does
//     not open the file: a FIFO is not waited on);
//   - fstat on that fd must say a socket owned by the app user or by us;
//   - the connect goes through /proc/self/fd/<fd>, a magic link the kernel
//     resolves to the very inode the fd holds, no name looked up again:
//     whatever the user renames meanwhile, root connects to the socket it
//     checked (and a long PM2_HOME no longer meets sun_path's 108 bytes).
//
// Errors name rpc.sock's path.
func (s pm2Sock) dial(ctx context.Context) (net.Conn, error) {
	dir, err := openDirPath(s.home)
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	const name = "rpc.sock"
	fd, err := unix.Openat(dir.fd(), name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, dir.pathErr("open", name, err)
	}
	defer unix.Close(fd) // after the connect: the magic link needs it open
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, dir.pathErr("stat", name, err)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFSOCK:
	case unix.S_IFLNK:
		return nil, fmt.Errorf("%s is a symlink, not followed: the daemon's socket must be the entry itself", dir.join(name))
	default:
		return nil, fmt.Errorf("%s is not a unix socket (%s)", dir.join(name), modeOf(&st).Type())
	}
	// The user's pm2 daemon made it (root's when the app runs as root).
	// Anyone else's, root's included, could only be a hard link the user
	// made to another's socket (a root service's on the same filesystem:
	// root would speak pm2's RPC to it). Only an unprivileged run, a test,
	// also takes a socket of its own.
	if st.Uid != s.uid && (os.Geteuid() == 0 || int(st.Uid) != os.Geteuid()) {
		return nil, fmt.Errorf("%s is owned by uid %d, not by the app user (uid %d)", dir.join(name), st.Uid, s.uid)
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
	if err != nil {
		// The dialer's error names /proc/self/fd/<fd>; say which socket.
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err
		}
		return nil, fmt.Errorf("connecting to %s: %w", dir.join(name), ctxErr(ctx, err))
	}
	return conn, nil
}
