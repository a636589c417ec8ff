package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// complete runs the generated bash completion in real bash on words, the
// last one being the word under the cursor, and returns COMPREPLY.
func complete(t *testing.T, script string, words ...string) []string {
	t.Helper()
	quoted := make([]string, len(words))
	for i, w := range words {
		quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c",
		`source "$1" && COMP_WORDS=(`+strings.Join(quoted, " ")+`) && COMP_CWORD=$((${#COMP_WORDS[@]} - 1)) && _patchagent; printf '%s\n' "${COMPREPLY[@]}"`,
		"bash", script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestBashCompletion(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Fatal("bash not installed")
	}
	dir := t.TempDir()
	script := filepath.Join(dir, "patchagent.bash")
	code, out, errs := runArgs("completion", "bash")
	if code != 0 || errs != "" {
		t.Fatalf("completion bash: exit %d: %s", code, errs)
	}
	if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.yaml"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		words []string
		want  []string
	}{
		{[]string{"patchagent", "pr"}, []string{"pre"}},
		{[]string{"patchagent", ""}, commandNames()},
		{[]string{"patchagent", "exit", "--fo"}, []string{"--force"}},
		{[]string{"patchagent", "status", "--output", ""}, []string{"text", "json"}},
		{[]string{"patchagent", "status", "--output", "=", "j"}, []string{"json"}},
		{[]string{"patchagent", "pre", "--log-level", "w"}, []string{"warn"}},
		{[]string{"patchagent", "daemon", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
		{[]string{"patchagent", "pre", "--config", filepath.Join(dir, "con")}, []string{filepath.Join(dir, "config.yaml")}},
		{[]string{"patchagent", "exit", "--reason", ""}, nil},
		{[]string{"patchagent", "exit", "--force", "--re"}, []string{"--reason"}},
		{[]string{"patchagent", "completion", ""}, []string{"bash", "zsh"}},
		{[]string{"patchagent", "help", "ch"}, []string{"check-config"}},
		{[]string{"patchagent", "nosuch", ""}, nil},
	}
	for _, c := range commands {
		want := []string{"--help"}
		for _, f := range c.flags {
			want = append(want, "--"+f.name)
		}
		tests = append(tests, struct{ words, want []string }{[]string{"patchagent", c.name, "--"}, want})
	}
	for _, tt := range tests {
		if got := complete(t, script, tt.words...); !slices.Equal(got, tt.want) {
			t.Errorf("%q<TAB>: %q, want %q", strings.Join(tt.words, " "), got, tt.want)
		}
	}
}

func TestZshCompletionParses(t *testing.T) {
	if _, err := exec.LookPath("zsh"); err != nil {
		t.Skip("zsh not installed (sh deploy/setup.sh installs it)")
	}
	code, out, errs := runArgs("completion", "zsh")
	if code != 0 || errs != "" || !strings.HasPrefix(out, "#compdef patchagent\n") {
		t.Fatalf("completion zsh: exit %d, stderr %q:\n%s", code, errs, out)
	}
	script := filepath.Join(t.TempDir(), "_patchagent")
	if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("zsh", "-n", script).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, b)
	}
	for _, c := range commands {
		if !strings.Contains(out, "\n\t"+c.name+")\n") {
			t.Errorf("no case for %s", c.name)
		}
		for _, f := range c.flags {
			if !strings.Contains(out, "'--"+f.name) {
				t.Errorf("%s: no spec for --%s", c.name, f.name)
			}
		}
	}
}
