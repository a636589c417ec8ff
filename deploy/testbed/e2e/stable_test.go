//go:build integration

package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// TestExitStabilityWindow runs pre and exit on the sandbox node with the
// real pm2 and apps that answer their health check and then crash 300 ms or
// 800 ms after their start, inside pm2's min_uptime window (1 s by default):
// exit must fail fast with the node still refusing every outside
// connection. The apps are named so that pm2 mangles the pid file's name
// (web_app -> web-app-0.pid) or has it elsewhere (pid_file in the
// ecosystem): the crash watch must not depend on it. The same app, fixed,
// comes back only after it has been up for its whole window.
func TestExitStabilityWindow(t *testing.T) {
	n := setupNode(t, "pa-e2sw", nil)
	ctx := context.Background()
	// Each app below runs on the sandbox app's port in its place.
	if _, err := n.PM2(ctx, "delete", n.Opts.AppName); err != nil {
		t.Fatal(err)
	}
	// Read by the app at each start (CRASH_FILE in app/server.js): what the
	// next start does, set without relaunching the app through pm2.
	crashFile := filepath.Join(n.Opts.Dir, "crash-ms")
	setCrash := func(t *testing.T, v string) {
		t.Helper()
		if err := os.WriteFile(crashFile, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	setCrash(t, "")

	apps := []struct {
		name string
		// ecosystem lines beyond name, script and env
		extra  string
		window time.Duration
		src    string
		// pidGlob is where pm2 writes the app's pid file
		pidGlob string
	}{
		{"webapp", "", time.Second, "pm2's default min_uptime", filepath.Join(n.PM2Home, "pids", "webapp-*.pid")},
		{"web_app", "", time.Second, "pm2's default min_uptime", filepath.Join(n.PM2Home, "pids", "web-app-*.pid")},
		{"custom-pid", fmt.Sprintf("pid_file: %q, min_uptime: 1500,", filepath.Join(n.AppDir, "custom.pid")),
			1500 * time.Millisecond, "pm2 min_uptime", filepath.Join(n.AppDir, "custom-*.pid")},
	}
	for _, app := range apps {
		t.Run(app.name, func(t *testing.T) {
			eco := filepath.Join(n.Opts.Dir, app.name+".config.js")
			def := fmt.Sprintf("module.exports = { apps: [{ name: %q, script: %q, %s env: { PORT: '%d', CRASH_FILE: %q } }] };\n",
				app.name, filepath.Join(n.AppDir, "server.js"), app.extra, n.Opts.Port, crashFile)
			if err := os.WriteFile(eco, []byte(def), 0o644); err != nil {
				t.Fatal(err)
			}
			if _, err := n.PM2(ctx, "start", eco); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if _, err := n.PM2(ctx, "delete", app.name); err != nil {
					t.Error(err)
				}
			})
			if err := n.WaitHealthy(ctx, 10*time.Second); err != nil {
				t.Fatal(err)
			}
			if files, _ := filepath.Glob(app.pidGlob); len(files) != 1 {
				t.Fatalf("pm2's pid file for %s: %v, want one at %s", app.name, files, app.pidGlob)
			}
			cfg, _ := writeConfig(t, n, app.name, "drain:\n  idle: 200ms\n")
			for _, crashMs := range []int{300, 800} {
				if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
					t.Fatalf("pre exit %d", r.code)
				}
				// The update broke the app: it answers, then crashes crashMs
				// after each start; exit starts it.
				setCrash(t, fmt.Sprint(crashMs))
				watch := n.Probe(ctx, sandbox.ProbeOptions{Interval: 20 * time.Millisecond, V6: true})
				r := patchagent(t, n, "exit", "--config", cfg)
				time.Sleep(500 * time.Millisecond) // the app goes on crash-looping
				attempts := watch.Stop()
				want := regexp.MustCompile(`^patchagent exit: FAILED, node still out of service: ` + regexp.QuoteMeta(app.name) +
					` (restarted \S+ after its health check passed, inside its stability window of ` + regexp.QuoteMeta(fmt.Sprintf("%s (%s)", secs(app.window), app.src)) +
					`: |is crash-looping: )`)
				if r.code != 1 || !want.MatchString(firstLine(r.stdout)) {
					t.Fatalf("crash %dms after start: exit %d: %q", crashMs, r.code, firstLine(r.stdout))
				}
				if limit := app.window + time.Second; r.took > limit {
					t.Errorf("crash %dms after start: exit took %s, want at most the window plus a second (%s)", crashMs, r.took, limit)
				}
				for _, a := range attempts {
					if !a.Refused {
						t.Fatalf("crash %dms after start: an outside connection at %s was not refused: %+v", crashMs, a.At.Format(time.StampMilli), a)
					}
				}
				if len(attempts) == 0 {
					t.Fatal("no outside attempt was made")
				}
				assertBlocked(t, n)

				// Fixed: exit returns the node once the app has been up its
				// whole window, not before.
				setCrash(t, "")
				if _, err := n.PM2(ctx, "stop", app.name); err != nil {
					t.Fatal(err)
				}
				r = patchagent(t, n, "exit", "--config", cfg)
				if r.code != 0 {
					t.Fatalf("stable app: exit %d: %q", r.code, firstLine(r.stdout))
				}
				shown := regexp.MustCompile(`; stable: up \S+ of ` + regexp.QuoteMeta(fmt.Sprintf("%s (%s)", secs(app.window), app.src)))
				if r.took < app.window || r.took > app.window+2*time.Second || !shown.MatchString(r.stdout) {
					t.Fatalf("stable app: exit took %s, want the window %s (%s) and at most 2s more, shown in the report:\n%s", r.took, app.window, app.src, r.stdout)
				}
				assertInService(t, n)
			}
		})
	}
}

// secs renders a window as exit's messages do: "1s", "1.5s".
func secs(d time.Duration) string {
	s := fmt.Sprintf("%.1f", d.Seconds())
	if s[len(s)-2:] == ".0" {
		s = s[:len(s)-2]
	}
	return s + "s"
}
