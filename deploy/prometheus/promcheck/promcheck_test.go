package promcheck

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestKnown(t *testing.T) {
	rules := filepath.Join(t.TempDir(), "r.rules.yml")
	body := "groups:\n  - name: g\n    rules:\n      - record: job:patchagent_x:max\n        expr: max(patchagent_cycle_open)\n      - alert: A\n        expr: up == 0\n"
	if err := os.WriteFile(rules, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKnown(rules)
	if err != nil {
		t.Fatal(err)
	}
	for _, ok := range []string{"patchagent_cycle_open", "patchagent_phase_duration_seconds_bucket", "go_goroutines", "up", "node_textfile_mtime_seconds", "job:patchagent_x:max"} {
		if err := k.Check(ok); err != nil {
			t.Errorf("Check(%q) = %v, want nil", ok, err)
		}
	}
	for name, want := range map[string]string{
		"patchagent_nope":  "patchagent_nope is not a metric agent/metrics.go registers nor a recording rule of r.rules.yml",
		"node_cpu_seconds": "node_cpu_seconds is neither patchagent's, in promcheck.External nor a recording rule of r.rules.yml",
		"A":                "A is neither",
	} {
		if err := k.Check(name); err == nil || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("Check(%q) = %v, want %q", name, err, want)
		}
	}
	if _, err := LoadKnown(filepath.Join(t.TempDir(), "missing.yml")); err == nil {
		t.Error("LoadKnown of a missing file: no error")
	}
}
