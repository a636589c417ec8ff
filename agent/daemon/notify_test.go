package daemon

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify listens like systemd on addr (a path or "@abstract").
func listenNotify(t *testing.T, addr string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	if err := c.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading the notify socket: %v", err)
	}
	return string(buf[:n])
}

func envHas(name string) bool {
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

func TestSystemdNotifierCapturesUnsetsAndKeepsSending(t *testing.T) {
	// sun_path holds 108 bytes: t.TempDir() names can be longer.
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	for name, addr := range map[string]string{
		"path":     filepath.Join(dir, "notify.sock"),
		"abstract": fmt.Sprintf("@patchagent-test-%d-%d", os.Getpid(), time.Now().UnixNano()),
	} {
		t.Run(name, func(t *testing.T) {
			c := listenNotify(t, addr)
			t.Setenv("NOTIFY_SOCKET", addr)
			t.Setenv("WATCHDOG_USEC", "30000000")
			t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
			n, wd, err := NewSystemdNotifier()
			if err != nil {
				t.Fatal(err)
			}
			if wd != 30*time.Second {
				t.Fatalf("watchdog %s, want 30s", wd)
			}
			for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
				if envHas(v) {
					t.Fatalf("%s still in the environment children inherit", v)
				}
			}
			for _, msg := range []string{"READY=1\nSTATUS=idle", "WATCHDOG=1", "STOPPING=1"} {
				if err := n.Notify(msg); err != nil {
					t.Fatal(err)
				}
				if got := readNotify(t, c); got != msg {
					t.Fatalf("received %q, want %q", got, msg)
				}
			}
		})
	}
}

func TestSystemdNotifierWatchdogForAnotherPID(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	addr := filepath.Join(dir, "n.sock")
	listenNotify(t, addr)
	t.Setenv("NOTIFY_SOCKET", addr)
	t.Setenv("WATCHDOG_USEC", "30000000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1))
	_, wd, err := NewSystemdNotifier()
	if err != nil || wd != 0 {
		t.Fatalf("watchdog %s, %v; want 0 (meant for another process)", wd, err)
	}
	if envHas("WATCHDOG_USEC") || envHas("NOTIFY_SOCKET") {
		t.Fatal("variables left in the environment")
	}
}

func TestSystemdNotifierWithoutSystemdIsNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n, wd, err := NewSystemdNotifier()
	if err != nil || wd != 0 {
		t.Fatalf("watchdog %s, %v", wd, err)
	}
	if err := n.Notify("READY=1"); err != nil {
		t.Fatalf("no-op notifier: %v", err)
	}
}

func TestSystemdNotifierDeadSocketIsAnError(t *testing.T) {
	dir, err := os.MkdirTemp("", "sdn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	t.Setenv("NOTIFY_SOCKET", filepath.Join(dir, "gone.sock"))
	n, _, err := NewSystemdNotifier()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify("READY=1"); err == nil || !strings.Contains(err.Error(), "gone.sock") {
		t.Fatalf("want an error naming the socket, got %v", err)
	}
}
