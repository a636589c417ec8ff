package packaging

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestManPageCoversUsage checks that every command of the CLI's usage text
// (cmd/patchagent/run.go) and every flag it lists has its entry in the
// hand-written man page, and that man renders it without warnings.
func TestManPageCoversUsage(t *testing.T) {
	src, err := os.ReadFile("../cmd/patchagent/run.go")
	if err != nil {
		t.Fatal(err)
	}
	_, usage, ok := strings.Cut(string(src), "const usage = `")
	if !ok {
		t.Fatal("no usage const in cmd/patchagent/run.go")
	}
	usage, _, _ = strings.Cut(usage, "`")
	man, err := os.ReadFile("man/patchagent.8")
	if err != nil {
		t.Fatal(err)
	}
	page := strings.ReplaceAll(string(man), `\-`, "-")
	cmds := regexp.MustCompile(`(?m)^  ([a-z][a-z-]+)  `).FindAllStringSubmatch(usage, -1)
	if len(cmds) < 8 {
		t.Fatalf("found only %d commands in the usage text", len(cmds))
	}
	for _, c := range cmds {
		if !strings.Contains(page, ".B "+c[1]+"\n") {
			t.Errorf("man page has no .B %s entry", c[1])
		}
	}
	for _, f := range regexp.MustCompile(`--[a-z-]+`).FindAllString(usage, -1) {
		if !strings.Contains(page, f) {
			t.Errorf("man page does not mention %s", f)
		}
	}
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
