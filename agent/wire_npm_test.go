package agent

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks/hookstest"
)

// TestRestoreKillsAStrayNPMFirst: the npm app's restore ends an npm left
// running in the app dir (its patchagent SIGKILLed mid-update) before it
// puts the snapshot back, whatever the restore then finds.
func TestRestoreKillsAStrayNPMFirst(t *testing.T) {
	dir := t.TempDir()
	npm := hookstest.StartSleep(t, dir, "npm")
	p := &npmPackages{dir: dir, uid: uint32(os.Geteuid()), log: zaptest.NewLogger(t)}
	if err := p.Restore(filepath.Join(t.TempDir(), "no-such-snapshot")); err == nil {
		t.Fatal("restored a snapshot that does not exist")
	}
	if !npm.Exited(3 * time.Second) {
		t.Fatal("the stray npm still runs after the restore")
	}
}
