package hooks

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// countingListener listens on path and counts the connections it accepts.
func countingListener(t *testing.T, path string) *atomic.Int32 {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	return &n
}

// eventually waits up to a second for n to reach want (the accept runs in
// its own goroutine).
func eventually(n *atomic.Int32, want int32) int32 {
	for deadline := time.Now().Add(time.Second); n.Load() < want && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	return n.Load()
}

func shortTempDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pa-sock-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestProcSelfFDConnectsToTheSocketTheFDHolds(t *testing.T) {
	// What pm2Sock.dial relies on: connect(2) to /proc/self/fd/<n> of an
	// O_PATH fd reaches the socket inode the fd holds, even after another
	// socket was renamed over its name.
	dir := shortTempDir(t)
	checked := countingListener(t, filepath.Join(dir, "rpc.sock"))
	swapped := countingListener(t, filepath.Join(dir, "swapped.sock"))
	fd, err := unix.Open(filepath.Join(dir, "rpc.sock"), unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := os.Rename(filepath.Join(dir, "swapped.sock"), filepath.Join(dir, "rpc.sock")); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unix", "/proc/self/fd/"+strconv.Itoa(fd))
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if n, m := eventually(checked, 1), swapped.Load(); n != 1 || m != 0 {
		t.Fatalf("accepted: %d by the socket the fd holds, %d by the one renamed over its name; want 1, 0", n, m)
	}
}

func TestPM2SockDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	me := uint32(os.Geteuid())

	t.Run("the real socket", func(t *testing.T) {
		home := shortTempDir(t)
		n := countingListener(t, filepath.Join(home, "rpc.sock"))
		c, err := pm2Sock{home: home, uid: me}.dial(ctx) // the app user's: accepted
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := eventually(n, 1); got != 1 {
			t.Fatalf("the daemon's socket accepted %d connection(s), want 1", got)
		}
	})

	for _, tt := range []struct {
		name  string
		plant func(t *testing.T, sock string)
		want  string
	}{
		{"symlink to another socket", func(t *testing.T, sock string) {
			if err := os.Symlink(filepath.Join(filepath.Dir(sock), "other.sock"), sock); err != nil {
				t.Fatal(err)
			}
		}, "is a symlink, not followed"},
		{"FIFO", func(t *testing.T, sock string) {
			if err := syscall.Mkfifo(sock, 0o666); err != nil {
				t.Fatal(err)
			}
		}, "is not a unix socket"},
		{"regular file", func(t *testing.T, sock string) {
			os.WriteFile(sock, nil, 0o644)
		}, "is not a unix socket"},
		{"missing", func(*testing.T, string) {}, "no such file"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			home := shortTempDir(t)
			other := countingListener(t, filepath.Join(home, "other.sock"))
			sock := filepath.Join(home, "rpc.sock")
			tt.plant(t, sock)
			start := time.Now()
			_, err := pm2Sock{home: home, uid: me}.dial(ctx)
			t.Logf("dial: %v", err)
			if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("dial = %v, want an error naming %s: %q", err, sock, tt.want)
			}
			// The RPC dials the same way: nothing reaches the other socket.
			err = pm2Call(ctx, pm2Sock{home: home, uid: me}, "getMonitorData", nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("pm2Call = %v, want %q", err, tt.want)
			}
			if took := time.Since(start); took > time.Second {
				t.Errorf("took %s", took)
			}
			time.Sleep(50 * time.Millisecond) // for an accept to be counted
			if n := other.Load(); n != 0 {
				t.Errorf("the other socket accepted %d connection(s)", n)
			}
		})
	}

	t.Run("a stranger's socket", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to chown")
		}
		home := shortTempDir(t)
		sock := filepath.Join(home, "rpc.sock")
		n := countingListener(t, sock)
		if err := os.Lchown(sock, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		_, err := pm2Sock{home: home, uid: 1001}.dial(ctx)
		if err == nil || !strings.Contains(err.Error(), "owned by uid 4242, not by the app user (uid 1001)") {
			t.Errorf("dial = %v, want the owner refused", err)
		}
		// Root's own socket in the user's PM2_HOME: only a hard link the
		// user made to one of root's services could put it there.
		if err := os.Lchown(sock, 0, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := (pm2Sock{home: home, uid: 1001}).dial(ctx); err == nil || !strings.Contains(err.Error(), "owned by uid 0, not by the app user (uid 1001)") {
			t.Errorf("dial = %v, want root's socket refused", err)
		}
		if err := os.Lchown(sock, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		c, err := pm2Sock{home: home, uid: 4242}.dial(ctx) // the app user's
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		if got := eventually(n, 1); got != 1 {
			t.Fatalf("accepted %d, want 1", got)
		}
	})
}
