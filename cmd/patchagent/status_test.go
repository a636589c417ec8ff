package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/agent"
)

func runNotRoot(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = runAs(context.Background(), false, args, &out, &errb)
	return code, out.String(), errb.String()
}

// nodeConfig is a config whose state is in a temporary directory and
// whose pm2 does not exist.
func nodeConfig(t *testing.T) (path, stateDir string) {
	stateDir = filepath.Join(t.TempDir(), "state")
	return writeConfig(t, "app:\n  name: web\n  pm2: /nonexistent/bin/pm2\ndaemon:\n  state_dir: "+stateDir+"\n"), stateDir
}

// TestPhasesSayNotRootFirst: each phase run without root says so on the
// first line of its report, dry run too, and touches nothing.
func TestPhasesSayNotRootFirst(t *testing.T) {
	conf, stateDir := nodeConfig(t)
	for _, args := range [][]string{{"pre"}, {"pre", "--dry-run"}, {"post"}, {"exit"}, {"exit", "--force"}, {"reconcile"}} {
		code, out, _ := runNotRoot(append(args, "--config", conf)...)
		want := "patchagent " + args[0] + ": FAILED in 0s: not run as root: " + args[0] + " needs root (iptables, the state file, the app's pm2, the daemon's socket), --dry-run too; nothing was changed: run it with sudo\n"
		if code != agent.ExitUsage || !strings.HasPrefix(out, want) {
			t.Errorf("%q: exit %d:\n%s", args, code, out)
		}
	}
	code, out, _ := runNotRoot("post", "--output", "json", "--config", conf)
	var rep agent.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil || code != 2 || !strings.HasPrefix(rep.Error, "not run as root: post needs root") {
		t.Errorf("json: exit %d, %v: %s", code, err, out)
	}
	if _, err := os.Stat(stateDir); !os.IsNotExist(err) {
		t.Errorf("the state dir was touched: %v", err)
	}
}

// TestStatusWithoutRootOrPM2: status reads the state file, says the block
// is unknown because it needs root and that pm2 is missing, never claims
// the node in service, and exits 3 (unknown), with --check too.
func TestStatusWithoutRootOrPM2(t *testing.T) {
	conf, stateDir := nodeConfig(t)
	if err := agent.NewStateStore(stateDir).Save(agent.State{CycleID: "c1", Open: true, Phase: "pre", Status: agent.StatusOK, Step: "done"}); err != nil {
		t.Fatal(err)
	}
	for _, check := range []bool{false, true} {
		args := []string{"status", "--config", conf}
		if check {
			args = append(args, "--check")
		}
		code, out, errs := runNotRoot(args...)
		if code != agent.ExitUnknown || !strings.HasPrefix(out, "patchagent status: block state unknown: needs root; patch cycle c1 open (last: pre ok at step done)\n") ||
			!strings.Contains(out, "\n  app:    web (pm2 of root): app.pm2: pm2 /nonexistent/bin/pm2: ") || strings.Contains(out, "in service") {
			t.Errorf("%q: exit %d, stderr %q:\n%s", args, code, errs, out)
		}
	}
	code, out, _ := runNotRoot("status", "--output", "json", "--config", conf)
	var st agent.NodeStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != agent.ExitUnknown || st.Service != agent.ServiceUnknown ||
		st.Block.Error != "needs root" || st.Cycle.ID != "c1" || st.App.Error == "" {
		t.Errorf("json: exit %d, %v:\n%s", code, err, out)
	}
	// The state file unreadable too: still the block first, then why.
	if err := os.WriteFile(filepath.Join(stateDir, "state.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = runNotRoot("status", "--check", "--config", conf)
	if code != agent.ExitUnknown || !strings.HasPrefix(out, "patchagent status: block state unknown: needs root; patch cycle unknown: state file unreadable: ") {
		t.Errorf("unreadable state: exit %d:\n%s", code, out)
	}
}

func TestStatusCode(t *testing.T) {
	tests := []struct {
		service string
		check   bool
		want    int
	}{
		{agent.ServiceIn, false, 0},
		{agent.ServiceOut, false, 0},
		{agent.ServiceUnknown, false, 3},
		{agent.ServiceIn, true, 0},
		{agent.ServiceOut, true, 1},
		{agent.ServiceUnknown, true, 3},
	}
	for _, tt := range tests {
		if got := statusCode(tt.service, tt.check); got != tt.want {
			t.Errorf("statusCode(%q, check %v) = %d, want %d", tt.service, tt.check, got, tt.want)
		}
	}
}

func TestLogFormatFlag(t *testing.T) {
	conf, _ := nodeConfig(t)
	for _, cmd := range []string{"pre", "exit", "reconcile", "daemon", "status"} {
		code, out, errs := runArgs(cmd, "--log-format", "xml", "--config", conf)
		if code != 2 || out != "" || !strings.Contains(errs, "patchagent "+cmd+`: --log-format "xml": want auto, text, json or journal`) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q", cmd, code, out, errs)
		}
	}
}
