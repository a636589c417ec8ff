//go:build integration

package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// BenchmarkExitToService compares, in one run on the sandbox, the app's own
// start-to-first-healthy-response time (pm2 start, then a health request from
// outside every 5 ms) with the time from the start of `patchagent exit` to
// the node answering a new outside connection. The difference is what exit
// adds: its checks, its health-check interval and the unblock.
func BenchmarkExitToService(b *testing.B) {
	if testing.Short() {
		b.Skip("sandbox benchmark")
	}
	n := setupNode(b, "pa-e2b", nil)
	cfg, _ := writeConfig(b, n, n.Opts.AppName, "drain:\n  idle: 100ms\n")
	ctx := context.Background()
	var appTotal, exitTotal time.Duration
	for i := 0; i < b.N; i++ {
		// The app's own start-to-healthy, unblocked, measured from outside.
		appStart, err := n.AppStartTime(ctx, 30*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		// The same app started by exit after pre.
		if r := patchagent(b, n, "pre", "--config", cfg); r.code != 0 {
			b.Fatalf("pre exit %d", r.code)
		}
		watch := n.Probe(ctx, sandbox.ProbeOptions{Interval: 5 * time.Millisecond})
		t0 := time.Now()
		r := patchagent(b, n, "exit", "--config", cfg)
		attempts := watch.Stop()
		if r.code != 0 {
			b.Fatalf("exit %d", r.code)
		}
		exitToService := time.Duration(-1)
		for _, a := range attempts {
			if a.Status == 200 && !a.At.Before(t0) {
				exitToService = a.At.Sub(t0)
				break
			}
		}
		if exitToService < 0 {
			b.Fatal("no outside request answered during exit")
		}
		appTotal += appStart
		exitTotal += exitToService
		b.Logf("iteration %d: app start-to-healthy %s, exit start-to-service %s", i, appStart.Round(time.Millisecond), exitToService.Round(time.Millisecond))
	}
	b.ReportMetric((appTotal / time.Duration(b.N)).Seconds(), "app-start-to-healthy-s")
	b.ReportMetric((exitTotal / time.Duration(b.N)).Seconds(), "exit-to-service-s")
	b.ReportMetric(((exitTotal - appTotal) / time.Duration(b.N)).Seconds(), "exit-overhead-s")
}
