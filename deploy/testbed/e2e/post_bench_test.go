//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/patchagent/patchagent/hooks"
)

// BenchmarkPostOverhead compares, on the same realistic tree (300 packages,
// about 100 MB of node_modules, every one with a patch release waiting), a
// bare `npm update` run as the app user with what `patchagent post` takes for
// the same update (snapshot, update with bounded fetches, lockfile diff,
// prune). Before each measurement the tree is put back to its 1.0.0 state.
func BenchmarkPostOverhead(b *testing.B) {
	n := setupNode(b, "pa-e2o", nil)
	ctx := context.Background()
	reg, err := n.StartRegistry(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { reg.Stop() })
	start := time.Now()
	deps, err := reg.PublishBench(ctx, 300, 330<<10, "1.0.0")
	if err != nil {
		b.Fatal(err)
	}
	if err := n.SetupNPMApp(ctx, reg.URL, deps); err != nil {
		b.Fatal(err)
	}
	if _, err := reg.PublishBench(ctx, 300, 330<<10, "1.0.1"); err != nil {
		b.Fatal(err)
	}
	b.Logf("tree of %d packages published and installed in %s", len(deps), time.Since(start).Round(time.Second))
	logical, _, err := hooks.SnapshotSize(filepath.Join(n.AppDir, "node_modules"))
	if err == nil {
		b.Logf("node_modules: %.1f MiB", float64(logical)/(1<<20))
	}
	base := filepath.Join(b.TempDir(), "baseline")
	if _, _, err := hooks.TakeSnapshot(n.AppDir, base); err != nil {
		b.Fatal(err)
	}
	reset := func() {
		if err := (hooks.Snapshot{Dir: base, App: n.AppDir}).Restore(); err != nil {
			b.Fatal(err)
		}
	}
	stateDir := filepath.Join(b.TempDir(), "state")
	cfg := appConfigIn(b, n, stateDir, "", "post:\n  npm:\n    fetch_timeout: 30s\n")
	if r := patchagent(b, n, "pre", "--config", cfg); r.code != 0 {
		b.Fatalf("pre %d", r.code)
	}
	var bare, post time.Duration
	for i := 0; i < b.N; i++ {
		reset()
		t0 := time.Now()
		// As the app user in the app dir, with only HOME and PATH.
		if _, err := n.NPM(ctx, "update", "--no-audit", "--no-fund"); err != nil {
			b.Fatalf("bare npm update: %v", err)
		}
		bare += time.Since(t0)
		reset()
		forgetPost(b, stateDir)
		r := patchagent(b, n, "post", "--config", cfg)
		if r.code != 0 {
			b.Fatalf("post %d", r.code)
		}
		post += r.took
	}
	b.ReportMetric((bare / time.Duration(b.N)).Seconds(), "bare-npm-update-s")
	b.ReportMetric((post / time.Duration(b.N)).Seconds(), "patchagent-post-s")
	b.ReportMetric(((post - bare) / time.Duration(b.N)).Seconds(), "post-overhead-s")
}

// forgetPost drops this cycle's post record so post runs again in full.
func forgetPost(b *testing.B, stateDir string) {
	p := filepath.Join(stateDir, "state.json")
	raw, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	var st map[string]any
	if err := json.Unmarshal(raw, &st); err != nil {
		b.Fatal(err)
	}
	delete(st, "post")
	out, _ := json.Marshal(st)
	if err := os.WriteFile(p, out, 0o600); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(filepath.Join(stateDir, "snapshots"))
}
