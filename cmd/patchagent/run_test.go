package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakePM2 installs an executable pm2 with a node next to it, for a
// check-config that passes on any host, and returns its path.
func fakePM2(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"pm2", "node"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "pm2")
}

func TestRunExitCodesAndMessages(t *testing.T) {
	good := writeConfig(t, "app:\n  name: web\n")
	bad := writeConfig(t, "app:\n  name: web\ntraffic:\n  portz: [443]\n")
	pm2 := fakePM2(t)
	onNode := writeConfig(t, "app:\n  name: web\n  user: root\n  pm2: "+pm2+"\nsteps:\n  pre_commands: [[/usr/bin/env, \"true\"]]\n")
	notOnNode := writeConfig(t, "app:\n  name: web\n  user: patchagent-no-such-user\n")
	twoDocs := writeConfig(t, "app:\n  name: web\n---\ntraffic:\n  ports: [22]\n")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{"no command", nil, 2, "", "usage: patchagent <command>"},
		{"unknown command", []string{"patch"}, 2, "", `unknown command "patch"`},
		{"help", []string{"help"}, 0, "Exit codes: 0 ok", ""},
		{"version", []string{"version"}, 0, "patchagent dev (go", ""},
		{"post bad config", []string{"post", "--config", bad}, 2, "patchagent post: FAILED in 0s: config " + bad + ": 1 problem(s)", ""},
		{"status bad output", []string{"status", "--output", "xml"}, 2, "", `patchagent status: --output "xml": want text or json`},
		{"status bad config", []string{"status", "--config", bad}, 2, "", bad + ":line 4: traffic.portz: unknown key"},
		{"exit bad config", []string{"exit", "--config", bad}, 2, "patchagent exit: FAILED in 0s: config " + bad + ": 1 problem(s)", ""},
		{"daemon bad flag", []string{"daemon", "--bogus"}, 2, "", "patchagent daemon: unknown flag --bogus\nTry 'patchagent daemon --help'."},
		{"daemon bad config", []string{"daemon", "--config", bad}, 2, "", bad + ":line 4: traffic.portz: unknown key"},
		{"daemon two documents", []string{"daemon", "--config", twoDocs}, 2, "", twoDocs + ":line 3: (yaml): a second YAML document starts here"},
		{"check-config ok", []string{"check-config", "--config", onNode}, 0, "name: web", ""},
		{"check-config ok says what it found", []string{"check-config", "--config", onNode}, 0, "\n# on this node:\n#   app user: root (uid 0, app.user)\n#   pm2: " + pm2 + "\n", ""},
		{"check-config not on this node", []string{"check-config", "--config", notOnNode}, 2, "", "is valid, but on this node: 1 problem(s)\n  app.user: looking up user \"patchagent-no-such-user\""},
		{"check-config two documents", []string{"check-config", "--config", twoDocs}, 2, "", twoDocs + ":line 3: (yaml): a second YAML document starts here"},
		{"check-config bad", []string{"check-config", "--config", bad}, 2, "", bad + ":line 4: traffic.portz: unknown key"},
		{"check-config missing", []string{"check-config", "--config", "/nonexistent/c.yaml"}, 2, "", "no such file"},
		{"pre bad flag", []string{"pre", "--bogus"}, 2, "", "patchagent pre: unknown flag --bogus\nTry 'patchagent pre --help'."},
		{"pre bad output", []string{"pre", "--output", "xml", "--config", good}, 2, "", `--output "xml": want text or json`},
		{"pre stray argument", []string{"pre", "--config", good, "now"}, 2, "", `unexpected argument "now"`},
		{"pre bad log level", []string{"pre", "--log-level", "loud", "--config", good}, 2, "", `--log-level "loud"`},
		{"pre bad config", []string{"pre", "--config", bad}, 2, "patchagent pre: FAILED in 0s: config " + bad + ": 1 problem(s)", ""},
		{"help documents the break-glass", []string{"--help"}, 0, "  --force              return the node to service NOW, without the health", ""},
		{"force on pre", []string{"pre", "--force", "--config", good}, 2, "", "patchagent pre: unknown flag --force"},
		{"reason without force", []string{"exit", "--reason", "why", "--config", good}, 2, "", "--reason goes with --force"},
		{"reason on two lines", []string{"exit", "--force", "--reason", "a\nb", "--config", good}, 2, "", "--reason: control characters"},
		{"force bad config", []string{"exit", "--force", "--config", bad}, 2, "patchagent exit: FAILED in 0s: config " + bad + ": 1 problem(s)", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errb)
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.wantCode, out.String(), errb.String())
			}
			if !strings.Contains(out.String(), tt.wantStdout) {
				t.Fatalf("stdout lacks %q:\n%s", tt.wantStdout, out.String())
			}
			if !strings.Contains(errb.String(), tt.wantStderr) {
				t.Fatalf("stderr lacks %q:\n%s", tt.wantStderr, errb.String())
			}
		})
	}
}

func TestPreConfigErrorAsJSON(t *testing.T) {
	bad := writeConfig(t, "app:\n  name: 7\n")
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"pre", "--output", "json", "--config", bad}, &out, &errb)
	var got struct {
		Phase, Result, Error string
		ExitCode             int `json:"exit_code"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("stdout is not one JSON object: %v\n%s", err, out.String())
	}
	if code != 2 || got.ExitCode != 2 || got.Result != "failed" || !strings.Contains(got.Error, "line 2: app.name: want a string") {
		t.Fatalf("exit %d: %+v", code, got)
	}
}
