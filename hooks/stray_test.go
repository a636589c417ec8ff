package hooks_test

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

// TestKillStrayNPM: npm left running in the app dir (its patchagent was
// SIGKILLed mid-update) is killed with its process group before a
// restore; another program there, and npm elsewhere, are left alone.
func TestKillStrayNPM(t *testing.T) {
	app, elsewhere := t.TempDir(), t.TempDir()
	npm := hookstest.StartSleep(t, app, "npm")
	other := hookstest.StartSleep(t, app, "sleep")
	far := hookstest.StartSleep(t, elsewhere, "npm")

	killed := hooks.KillStrayNPM(app, uint32(os.Getuid()))
	if !slices.Equal(killed, []int{npm.Cmd.Process.Pid}) {
		t.Fatalf("killed %v, want [%d]", killed, npm.Cmd.Process.Pid)
	}
	if !npm.Exited(2 * time.Second) {
		t.Fatal("the stray npm still runs")
	}
	for _, p := range []*hookstest.Process{other, far} {
		if p.Exited(0) {
			t.Errorf("%v (in %s) was killed", p.Cmd.Args, p.Cmd.Dir)
		}
	}
}
