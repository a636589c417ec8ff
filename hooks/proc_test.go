package hooks_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

// statLine is a /proc/<pid>/stat line with state and starttime, and a
// command name that holds spaces and parentheses, as a process may name
// itself to confuse a parser.
func statLine(pid int, comm string, state byte, start uint64) string {
	f := make([]string, 52)
	for i := range f {
		f[i] = "0"
	}
	f[0], f[19] = string(state), strconv.FormatUint(start, 10)
	return strconv.Itoa(pid) + " (" + comm + ") " + strings.Join(f, " ") + "\n"
}

func TestProcReadsTheKernelsRecord(t *testing.T) {
	root := t.TempDir()
	plant := func(pid int, content string) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Started 2 s after boot: CLOCK_BOOTTIME has run longer than that here.
	plant(10, statLine(10, "node ) R 1 (x", 'S', 200))
	plant(11, statLine(11, "node", 'Z', 300))
	plant(12, "12 (node) S 1 2 3\n")
	plant(13, statLine(13, "node", 'R', 1<<62))

	got, err := hooks.ReadProcIn(root, 10)
	if err != nil || got.Start != 200 || got.Uptime <= 0 {
		t.Fatalf("running process: %+v %v", got, err)
	}
	for _, pid := range []int{11, 14, 0, -1} { // zombie, no such pid, no pid
		if _, err := hooks.ReadProcIn(root, pid); !errors.Is(err, hooks.ErrProcessGone) {
			t.Errorf("pid %d: %v, want ErrProcessGone", pid, err)
		}
	}
	if _, err := hooks.ReadProcIn(root, 12); err == nil || errors.Is(err, hooks.ErrProcessGone) {
		t.Errorf("truncated stat: %v, want a parse error", err)
	}
	// A start after now (another clock's ticks): never a negative uptime.
	if got, err := hooks.ReadProcIn(root, 13); err != nil || got.Uptime != 0 {
		t.Errorf("start in the future: %+v %v", got, err)
	}
}

func TestProcOfARealProcess(t *testing.T) {
	p := newPM2(t, &hookstest.FakeRunner{}, t.TempDir())
	c := sleeper(t)
	first, err := p.Proc(c.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if first.Uptime < 0 || first.Uptime > 5*time.Second {
		t.Fatalf("a process started just now is up %s", first.Uptime)
	}
	time.Sleep(50 * time.Millisecond)
	again, err := p.Proc(c.Process.Pid)
	if err != nil || again.Start != first.Start || again.Uptime < first.Uptime {
		t.Fatalf("the same process read again: %+v then %+v, %v", first, again, err)
	}
	self, err := p.Proc(os.Getpid())
	if err != nil || self.Uptime < again.Uptime {
		t.Fatalf("this test process (older than its child): %+v %v", self, err)
	}
	c.Process.Kill()
	c.Wait()
	if _, err := p.Proc(c.Process.Pid); !errors.Is(err, hooks.ErrProcessGone) {
		t.Fatalf("after the process exited: %v", err)
	}
}
