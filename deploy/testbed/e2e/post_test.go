//go:build integration

package e2e

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// npmNode is a sandbox whose app depends on dep-a ^1.0.0 (1.0.0 installed)
// from a registry on the node's loopback.
func npmNode(t *testing.T, prefix string) (*sandbox.Node, *sandbox.Registry) {
	t.Helper()
	n := setupNode(t, prefix, nil)
	ctx := context.Background()
	reg, err := n.StartRegistry(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	publish(t, reg, "1.0.0", "")
	if err := n.SetupNPMApp(ctx, reg.URL, map[string]string{"dep-a": "^1.0.0"}); err != nil {
		t.Fatal(err)
	}
	return n, reg
}

// publish publishes dep-a at version; body "" exports the version, else it
// is the module's code.
func publish(t *testing.T, reg *sandbox.Registry, version, body string) {
	t.Helper()
	if body == "" {
		body = "module.exports = " + strconv.Quote(version) + ";\n"
	}
	err := reg.Publish(context.Background(), sandbox.Package{Name: "dep-a", Version: version, Files: map[string]string{"index.js": body}})
	if err != nil {
		t.Fatal(err)
	}
}

// appConfig writes a config with app.dir set (the sandbox's template has
// none), with a state dir of its own.
func appConfig(t *testing.T, n *sandbox.Node, extra string) string {
	t.Helper()
	return appConfigIn(t, n, filepath.Join(t.TempDir(), "state"), "", extra)
}

// appConfigIn is appConfig sharing stateDir (one cycle seen through several
// configs), with appExtra added under app:.
func appConfigIn(t testing.TB, n *sandbox.Node, stateDir, appExtra, extra string) string {
	t.Helper()
	body := n.PatchagentConfig(stateDir, "  dir: "+n.AppDir+"\n"+appExtra, extra)
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func installed(t *testing.T, n *sandbox.Node) string {
	t.Helper()
	v, err := n.InstalledVersion("dep-a")
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func assertOwnedByApp(t *testing.T, n *sandbox.Node) {
	t.Helper()
	owners, err := sandbox.TreeOwners(n.AppDir)
	if err != nil {
		t.Fatal(err)
	}
	for uid, count := range owners {
		if uid != n.UID {
			t.Fatalf("%d file(s) in the app dir owned by uid %d, not the app user %d", count, uid, n.UID)
		}
	}
}

func TestPostUpdatesWithinRangesThenAcrossMajors(t *testing.T) {
	n, reg := npmNode(t, "pa-e2u")
	publish(t, reg, "1.0.1", "")
	publish(t, reg, "2.0.0", "")
	cfg := appConfig(t, n, "post:\n  npm:\n    fetch_timeout: 5s\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	r := patchagent(t, n, "post", "--config", cfg)
	if r.code != 0 || !regexp.MustCompile(`^patchagent post: ok in \S+ \(1 dependency changed\)$`).MatchString(firstLine(r.stdout)) ||
		!strings.Contains(r.stdout, "  changed: dep-a 1.0.0 -> 1.0.1\n") {
		t.Fatalf("post %d:\n%s", r.code, r.stdout)
	}
	if v := installed(t, n); v != "1.0.1" {
		t.Fatalf("dep-a %s installed, want 1.0.1 (not 2.0.0: ^1.0.0)", v)
	}
	assertOwnedByApp(t, n)
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	assertInService(t, n)

	// A new cycle with major: true goes to 2.0.0 and reports it in JSON.
	cfg = appConfig(t, n, "post:\n  npm:\n    major: true\n    fetch_timeout: 5s\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	r = patchagent(t, n, "post", "--config", cfg, "--output", "json")
	ch, _ := r.report["changes"].([]any)
	if r.code != 0 || len(ch) != 1 || ch[0] != "dep-a 1.0.1 -> 2.0.0" {
		t.Fatalf("post major %d: %v", r.code, r.report)
	}
	if v := installed(t, n); v != "2.0.0" {
		t.Fatalf("dep-a %s installed, want 2.0.0", v)
	}
	pkg, _ := os.ReadFile(filepath.Join(n.AppDir, "package.json"))
	if !strings.Contains(string(pkg), `"dep-a": "^2.0.0"`) {
		t.Fatalf("package.json range not raised:\n%s", pkg)
	}
	assertOwnedByApp(t, n)
	if r := patchagent(t, n, "exit", "--config", cfg); r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
}

func TestPostFailsWithinItsDeadlineAndLeavesTheAppDirIdentical(t *testing.T) {
	n, reg := npmNode(t, "pa-e2f")
	ctx := context.Background()
	publish(t, reg, "1.0.1", "")
	state := filepath.Join(t.TempDir(), "state")
	cfg := appConfigIn(t, n, state, "", "post:\n  npm:\n    timeout: 20s\n    fetch_timeout: 2s\n    fetch_retries: 0\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}

	t.Run("registry stopped", func(t *testing.T) {
		before, err := sandbox.TreeHash(n.AppDir)
		if err != nil {
			t.Fatal(err)
		}
		if err := reg.Stop(); err != nil {
			t.Fatal(err)
		}
		r := patchagent(t, n, "post", "--config", cfg)
		if r.code != 1 || !strings.Contains(firstLine(r.stdout), "dependency update failed, the app's dependencies are restored as they were") || r.took > 25*time.Second {
			t.Fatalf("post %d in %s: %q", r.code, r.took, firstLine(r.stdout))
		}
		if after, _ := sandbox.TreeHash(n.AppDir); after != before {
			t.Fatal("the app dir changed")
		}
	})
	t.Run("registry accepts and never answers", func(t *testing.T) {
		hang, err := n.StartHangingRegistry(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer hang.Stop()
		npmrc := filepath.Join(n.AppDir, ".npmrc")
		if err := os.WriteFile(npmrc, []byte("registry="+hang.URL+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chown(npmrc, int(n.UID), int(n.GID))
		hangCfg := appConfigIn(t, n, state, "", "post:\n  npm:\n    timeout: 8s\n    fetch_timeout: 3s\n    fetch_retries: 0\n")
		before, _ := sandbox.TreeHash(n.AppDir)
		r := patchagent(t, n, "post", "--config", hangCfg)
		if r.code != 1 || !strings.Contains(firstLine(r.stdout), "dependency update failed, the app's dependencies are restored as they were") || r.took > 12*time.Second {
			t.Fatalf("post %d in %s: %q", r.code, r.took, firstLine(r.stdout))
		}
		if after, _ := sandbox.TreeHash(n.AppDir); after != before {
			t.Fatal("the app dir changed")
		}
	})
}

func TestBreakingUpdateIsRolledBackAfterTheReboot(t *testing.T) {
	n, reg := npmNode(t, "pa-e2w")
	ctx := context.Background()
	publish(t, reg, "1.0.2", "throw new Error('dep-a 1.0.2 is broken');\n")
	cfg := appConfig(t, n, "post:\n  npm:\n    fetch_timeout: 5s\nhealth:\n  deadline: 20s\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	if r := patchagent(t, n, "post", "--config", cfg); r.code != 0 || !strings.Contains(r.stdout, "dep-a 1.0.0 -> 1.0.2") {
		t.Fatalf("post %d", r.code)
	}
	err := n.Reboot(ctx, func() error {
		if r := patchagent(t, n, "reconcile", "--config", cfg); r.code != 0 {
			t.Errorf("reconcile %d", r.code)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r := patchagent(t, n, "exit", "--config", cfg)
	want := "patchagent exit: FAILED, node back in service, but the dependency update broke the app: rolled back 1 package (dep-a 1.0.0 -> 1.0.2)"
	if r.code != 1 || !strings.HasPrefix(firstLine(r.stdout), want) {
		t.Fatalf("exit %d: %q", r.code, firstLine(r.stdout))
	}
	if v := installed(t, n); v != "1.0.0" {
		t.Fatalf("dep-a %s after the rollback", v)
	}
	assertOwnedByApp(t, n)
	assertInService(t, n)
}

func TestPostClearErrorsChangeNothing(t *testing.T) {
	n, _ := npmNode(t, "pa-e2c")
	state := filepath.Join(t.TempDir(), "state")
	cfg := appConfigIn(t, n, state, "", "")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	pkgPath := filepath.Join(n.AppDir, "package.json")
	pkg, _ := os.ReadFile(pkgPath)
	for _, tt := range []struct {
		name  string
		setup func(t *testing.T) (cfg string, undo func())
		want  string
	}{
		{"no package.json", func(t *testing.T) (string, func()) {
			os.Rename(pkgPath, pkgPath+".away")
			return cfg, func() { os.Rename(pkgPath+".away", pkgPath) }
		}, "no package.json"},
		{"lockfile out of sync", func(t *testing.T) (string, func()) {
			os.WriteFile(pkgPath, []byte(strings.Replace(string(pkg), `"dep-a": "^1.0.0"`, `"dep-a": "^1.0.0", "dep-z": "^3.0.0"`, 1)), 0o644)
			return cfg, func() { os.WriteFile(pkgPath, pkg, 0o644) }
		}, "package-lock.json out of sync with package.json"},
		{"npm missing", func(t *testing.T) (string, func()) {
			return appConfigIn(t, n, state, "  npm: /nonexistent/bin/npm\n", ""), func() {}
		}, "npm not found"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, undo := tt.setup(t)
			defer undo()
			before, _ := sandbox.TreeHash(n.AppDir)
			r := patchagent(t, n, "post", "--config", c)
			if r.code == 0 || !strings.Contains(firstLine(r.stdout), "nothing changed") || !strings.Contains(firstLine(r.stdout), tt.want) {
				t.Fatalf("post %d: %q", r.code, firstLine(r.stdout))
			}
			if after, _ := sandbox.TreeHash(n.AppDir); after != before {
				t.Fatal("the app dir changed")
			}
		})
	}

	// An npm that no longer runs (broken by the OS update): the check does
	// not run npm, the update fails with npm's own message, the snapshot is
	// restored, the app dir is as it was.
	t.Run("npm broken", func(t *testing.T) {
		dir, err := os.MkdirTemp("", "pa-npm-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		os.Chmod(dir, 0o755)
		broken := filepath.Join(dir, "npm")
		os.WriteFile(broken, []byte("#!/bin/sh\necho \"Error: Cannot find module 'semver'\" >&2\nexit 1\n"), 0o755)
		before, _ := sandbox.TreeHash(n.AppDir)
		r := patchagent(t, n, "post", "--config", appConfigIn(t, n, state, "  npm: "+broken+"\n", ""))
		if r.code == 0 || !strings.Contains(r.stdout, "Cannot find module 'semver'") {
			t.Fatalf("post %d:\n%s", r.code, r.stdout)
		}
		if after, _ := sandbox.TreeHash(n.AppDir); after != before {
			t.Fatal("the app dir changed")
		}
	})
}
