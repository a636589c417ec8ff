package hookstest

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Process is a program a test started with StartSleep, waited for in the
// background.
type Process struct {
	Cmd  *exec.Cmd
	done chan struct{}
}

// StartSleep starts /bin/sleep 60 under the name argv0 (argv[0]) in dir,
// in a process group of its own, as an npm left running by a killed
// patchagent runs, and returns once /proc shows that command line: Start
// returns as the exec begins, before the kernel sets the new image's
// argv (a /proc scan right then reads an empty cmdline, 288 times in
// 2,000 here). It is killed when t ends.
func StartSleep(t testing.TB, dir, argv0 string) *Process {
	t.Helper()
	c := &exec.Cmd{Path: "/bin/sleep", Args: []string{argv0, "60"}, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: c, done: make(chan struct{})}
	go func() { c.Wait(); close(p.done) }()
	t.Cleanup(func() { c.Process.Kill(); <-p.done })
	cmdline := "/proc/" + strconv.Itoa(c.Process.Pid) + "/cmdline"
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(cmdline)
		if err == nil && strings.HasPrefix(string(b), argv0+"\x00") {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %q after 5s, not %s's", cmdline, b, argv0)
		}
	}
}

// Exited reports whether the process ended within d.
func (p *Process) Exited(d time.Duration) bool {
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		return false
	}
}
