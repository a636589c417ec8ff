package hooks

import (
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestKillStrayNPM: npm left running in the app dir (its patchagent was
// SIGKILLed mid-update) is killed with its process group before a
// restore; another program there, and npm elsewhere, are left alone.
func TestKillStrayNPM(t *testing.T) {
	app, elsewhere := t.TempDir(), t.TempDir()
	start := func(dir, argv0 string) *exec.Cmd {
		t.Helper()
		c := &exec.Cmd{Path: "/bin/sleep", Args: []string{argv0, "60"}, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Process.Kill(); c.Wait() })
		return c
	}
	npm := start(app, "npm")
	other := start(app, "sleep")
	far := start(elsewhere, "npm")
	done := make(chan struct{})
	go func() { npm.Wait(); close(done) }()

	killed := KillStrayNPM(app, uint32(os.Getuid()))
	if !slices.Equal(killed, []int{npm.Process.Pid}) {
		t.Fatalf("killed %v, want [%d]", killed, npm.Process.Pid)
	}
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("the stray npm still runs")
	}
	for _, c := range []*exec.Cmd{other, far} {
		if !pidAlive(c.Process.Pid) {
			t.Errorf("%v (in %s) was killed", c.Args, c.Dir)
		}
	}
}
