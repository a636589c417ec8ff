package packaging

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestManPageRenders checks that the hand-written man page documents every
// exit code and that man renders it without warnings. Its SYNOPSIS, commands
// and flags are checked against the CLI's command table by
// cmd/patchagent/man_test.go, which has the table.
func TestManPageRenders(t *testing.T) {
	man, err := os.ReadFile("man/patchagent.8")
	if err != nil {
		t.Fatal(err)
	}
	page := string(man)
	for _, code := range []string{"0", "1", "2", "3"} {
		if !strings.Contains(page, ".B "+code+"\n") {
			t.Errorf("man page does not document exit code %s", code)
		}
	}
	if _, err := exec.LookPath("man"); err != nil {
		t.Log("man not installed: rendering not checked")
		return
	}
	cmd := exec.Command("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", "man/patchagent.8")
	cmd.Env = append(os.Environ(), "LC_ALL=C.UTF-8", "MANROFFSEQ=", "MANWIDTH=80")
	cmd.Stdout = nil
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("man: %v\n%s", err, out)
	}
	// -Z leaves troff output on stdout; warnings start with "troff:" or "man:".
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "warning") || strings.HasPrefix(l, "troff:") || strings.HasPrefix(l, "man:") {
			t.Errorf("man: %s", l)
		}
	}
}
