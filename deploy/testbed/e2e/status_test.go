//go:build integration

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/deploy/prometheus/promcheck"
)

func TestStatusAndTextfileMetricsOverACycle(t *testing.T) {
	n := setupNode(t, "pa-e2s", nil)
	textfiles := t.TempDir()
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  textfile_dir: "+textfiles+"\ndrain:\n  idle: 200ms\n")
	prom := filepath.Join(textfiles, "patchagent.prom")

	status := func() map[string]any {
		t.Helper()
		r := patchagent(t, n, "status", "--config", cfg, "--output", "json")
		if r.code != 0 {
			t.Fatalf("status %d", r.code)
		}
		return r.report
	}
	metric := func(line string) {
		t.Helper()
		b, err := os.ReadFile(prom)
		if err != nil || !strings.Contains(string(b), "\n"+line+"\n") {
			t.Fatalf("%s lacks %q: %v\n%s", prom, line, err, b)
		}
	}

	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	s := status()
	cycle, block, app := s["cycle"].(map[string]any), s["block"].(map[string]any), s["app"].(map[string]any)
	if cycle["open"] != true || block["kernel"] != "blocked" || s["consistent"] != true || app["instances"].([]any)[0].(map[string]any)["status"] != "stopped" {
		t.Fatalf("status after pre: %v", s)
	}
	metric(`patchagent_phase_runs_total{phase="pre",result="ok"} 1`)
	metric("patchagent_traffic_blocked 1")
	metric("patchagent_cycle_open 1")
	if b, _ := os.ReadFile(prom); strings.Contains(string(b), "go_goroutines") || strings.Contains(string(b), "process_") {
		t.Fatalf("the textfile carries go_*/process_* series that clash with node_exporter's own:\n%s", b)
	}
	if promtool := promcheck.Promtool(); promtool != "" {
		f, _ := os.Open(prom)
		cmd := exec.Command(promtool, "check", "metrics")
		cmd.Stdin = f
		out, err := cmd.CombinedOutput()
		f.Close()
		if err != nil {
			t.Fatalf("promtool check metrics on the textfile: %v\n%s", err, out)
		}
	}

	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	s = status()
	if s["cycle"].(map[string]any)["open"] != false || s["block"].(map[string]any)["kernel"] != "none" || s["consistent"] != true {
		t.Fatalf("status after exit: %v", s)
	}
	phases := s["phases"].(map[string]any)
	for _, p := range []string{"pre", "exit"} {
		if r, _ := phases[p].(map[string]any); r == nil || r["result"] != "ok" {
			t.Fatalf("phases: %v", phases)
		}
	}
	metric(`patchagent_phase_runs_total{phase="exit",result="ok"} 1`)
	metric("patchagent_traffic_blocked 0")
	metric("patchagent_cycle_open 0")
	r := patchagent(t, n, "status", "--config", cfg)
	if !strings.HasPrefix(r.stdout, "patchagent status: in service (no patch cycle open)") {
		t.Fatalf("status text: %s", r.stdout)
	}
}
