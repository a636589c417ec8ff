package hooks_test

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

// PM2_HOME is the app user's (see dirfd.go): what it holds is hostile. These
// tests plant in it what that user could, around a live fake daemon.

// quickly runs f and fails the test unless it returns within 1 s. A call
// still blocked after 5 s is abandoned, failing the test instead of hanging
// it (mkfifoIn's cleanup then releases it).
func quickly[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	start := time.Now()
	go func() { done <- f() }()
	select {
	case v := <-done:
		if took := time.Since(start); took > time.Second {
			t.Errorf("%s took %s, want under 1s", what, took)
		}
		return v
	case <-time.After(5 * time.Second):
		t.Fatalf("%s still blocked after 5s", what)
		panic("unreachable")
	}
}

// mkfifoIn replaces path with a FIFO nobody writes to. At the end of the
// test a writer opens and closes it, so that a reader blocked on it (the
// bug under test) gets EOF and its goroutine ends.
func mkfifoIn(t *testing.T, path string) {
	t.Helper()
	os.Remove(path)
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			syscall.Close(fd)
		}
	})
}

// errHas checks err wraps ErrDaemonNotRunning and holds each of subs.
func errHas(t *testing.T, what string, err error, subs ...string) {
	t.Helper()
	t.Logf("%s: %v", what, err)
	if !errors.Is(err, hooks.ErrDaemonNotRunning) {
		t.Errorf("%s = %v, want ErrDaemonNotRunning", what, err)
		return
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%s = %q, want it to contain %q", what, err, s)
		}
	}
}

func TestPM2PidFileIsReadOnlyAsASmallRegularFile(t *testing.T) {
	me := strconv.Itoa(os.Getpid()) // alive, as the fake daemon's pid
	tests := []struct {
		name  string
		plant func(t *testing.T, home string)
		want  []string // in the error, besides the path of pm2.pid
	}{
		{
			name:  "FIFO",
			plant: func(t *testing.T, home string) { mkfifoIn(t, filepath.Join(home, "pm2.pid")) },
			want:  []string{"not a regular file"},
		},
		{
			// A root-only file holding a live pid: followed, it would
			// make a dead daemon look alive, and any file readable.
			name: "symlink to a root-only file",
			plant: func(t *testing.T, home string) {
				secret := filepath.Join(t.TempDir(), "root-only")
				if err := os.WriteFile(secret, []byte(me+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				os.Remove(filepath.Join(home, "pm2.pid"))
				if err := os.Symlink(secret, filepath.Join(home, "pm2.pid")); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"not followed"},
		},
		{
			name: "oversized",
			plant: func(t *testing.T, home string) {
				body := me + strings.Repeat(" ", 100) // a pid, once trimmed
				if err := os.WriteFile(filepath.Join(home, "pm2.pid"), []byte(body), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			want: []string{"larger than 64 bytes"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := newGod(t, inst{name: "web", pid: os.Getpid(), status: "online"})
			tt.plant(t, g.home)
			p := newPM2(t, &hookstest.FakeRunner{}, g.home)
			want := append([]string{filepath.Join(g.home, "pm2.pid")}, tt.want...)
			err := quickly(t, "DaemonAlive", p.DaemonAlive)
			errHas(t, "DaemonAlive", err, want...)
			err = quickly(t, "Processes", func() error { _, err := p.Processes(t.Context(), "web"); return err })
			errHas(t, "Processes", err, want...)
			g.assertCalls(t) // no RPC to a daemon not known alive
		})
	}
}

func TestPM2RPCSocketSymlinkIsNotConnected(t *testing.T) {
	g := newGod(t, inst{name: "web", pid: os.Getpid(), status: "online"})
	// Another service's socket, elsewhere on the host, counting its clients.
	other := filepath.Join(t.TempDir(), "other.sock")
	ln, err := net.Listen("unix", other)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var accepted atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted.Add(1)
			c.Close()
		}
	}()
	sock := filepath.Join(g.home, "rpc.sock")
	if err := os.Remove(sock); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(other, sock); err != nil {
		t.Fatal(err)
	}
	p := newPM2(t, &hookstest.FakeRunner{}, g.home)
	errHas(t, "DaemonAlive", quickly(t, "DaemonAlive", p.DaemonAlive), sock+" is a symlink, not followed")
	_, err = p.Processes(t.Context(), "web")
	errHas(t, "Processes", err, "rpc.sock")
	if n := accepted.Load(); n != 0 {
		t.Errorf("the other socket accepted %d connection(s) through the symlink", n)
	}
}
