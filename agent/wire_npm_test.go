package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// TestRestoreKillsAStrayNPMFirst: the npm app's restore ends an npm left
// running in the app dir (its patchagent SIGKILLed mid-update) before it
// puts the snapshot back, whatever the restore then finds.
func TestRestoreKillsAStrayNPMFirst(t *testing.T) {
	dir := t.TempDir()
	npm := &exec.Cmd{Path: "/bin/sleep", Args: []string{"npm", "60"}, Dir: dir, SysProcAttr: &syscall.SysProcAttr{Setpgid: true}}
	if err := npm.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { npm.Process.Kill(); npm.Wait() })
	done := make(chan struct{})
	go func() { npm.Wait(); close(done) }()

	p := &npmPackages{dir: dir, uid: uint32(os.Geteuid()), log: zaptest.NewLogger(t)}
	if err := p.Restore(filepath.Join(t.TempDir(), "no-such-snapshot")); err == nil {
		t.Fatal("restored a snapshot that does not exist")
	}
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("the stray npm still runs after the restore")
	}
}
