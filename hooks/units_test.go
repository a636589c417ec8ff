package hooks_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

func TestUnitsRunSystemctlWithACleanEnvironment(t *testing.T) {
	f := (&hookstest.FakeRunner{}).
		On(hooks.Systemctl, "stop", hookstest.OK("")).
		On(hooks.Systemctl, "start", hookstest.Exit(hooks.Systemctl, 5, "Failed to start node_exporter.service: Unit not found."))
	u := hooks.NewUnits(zaptest.NewLogger(t), f, "", 0)
	ctx := context.Background()
	if err := u.Stop(ctx, "node_exporter.service"); err != nil {
		t.Fatal(err)
	}
	err := u.Start(ctx, "node_exporter.service")
	if err == nil || !strings.Contains(err.Error(), "starting unit node_exporter.service") || !strings.Contains(err.Error(), "Unit not found") {
		t.Fatalf("start error: %v", err)
	}
	want := []string{
		hooks.Systemctl + " stop --no-ask-password -- node_exporter.service",
		hooks.Systemctl + " start --no-ask-password -- node_exporter.service",
	}
	if diff := cmp.Diff(want, f.Argvs()); diff != "" {
		t.Fatal(diff)
	}
	for _, c := range f.Cmds() {
		if diff := cmp.Diff([]string{"PATH=" + hooks.SafePath}, c.Env); diff != "" || c.Cred != nil {
			t.Fatalf("environment or identity of %v: %s", c.Args, diff)
		}
	}
	if err := u.Stop(ctx, "--all"); err == nil {
		t.Fatal("a flag passed as a unit name")
	}
}

func TestCommandsRunArgvWithoutAShellAndADeadline(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	c := hooks.NewCommands(zaptest.NewLogger(t), &hooks.ExecRunner{}, 300*time.Millisecond)
	ctx := context.Background()
	// A shell metacharacter stays a literal argument.
	if err := c.Run(ctx, []string{"/usr/bin/touch", out + ";echo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(out + ";echo"); err != nil {
		t.Fatalf("argument was not passed literally: %v", err)
	}
	err := c.Run(ctx, []string{"/bin/sh", "-c", "echo leaving failed >&2; exit 3"})
	if err == nil || !strings.Contains(err.Error(), "running /bin/sh -c") || !strings.Contains(err.Error(), "leaving failed") {
		t.Fatalf("failing command: %v", err)
	}
	start := time.Now()
	if err := c.Run(ctx, []string{"/bin/sleep", "10"}); err == nil || time.Since(start) > 5*time.Second {
		t.Fatalf("deadline not honoured: %v after %s", err, time.Since(start))
	}
	if err := c.Run(ctx, []string{"sleep", "1"}); err == nil || !strings.Contains(err.Error(), "absolute path") {
		t.Fatalf("relative program accepted: %v", err)
	}
}

func TestStartFromArgs(t *testing.T) {
	for src, want := range map[string][]string{
		"/srv/app/ecosystem.config.js": {"start", "/srv/app/ecosystem.config.js", "--only", "web", "--no-color"},
		"/srv/app/pm2.json":            {"start", "/srv/app/pm2.json", "--only", "web", "--no-color"},
		"/srv/app/server.js":           {"start", "/srv/app/server.js", "--name", "web", "--no-color"},
	} {
		if diff := cmp.Diff(want, hooks.StartFromArgs("web", src)); diff != "" {
			t.Errorf("%s: %s", src, diff)
		}
	}
}
