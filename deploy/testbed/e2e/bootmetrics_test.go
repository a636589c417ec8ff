//go:build integration

package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// TestDaemonBootReblocksWithoutItsMetricsAddress: R1 of issue 13. The
// daemon's metrics_listen is an address the node does not have yet (a
// private IP that comes up later in boot): the daemon re-applies the block
// of the open cycle and reports READY all the same, and serves its metrics
// once the address appears. Before, it exited 1 at the listen, systemd gave
// up after its start limit, and pm2 brought the app back with no block.
func TestDaemonBootReblocksWithoutItsMetricsAddress(t *testing.T) {
	n := setupNode(t, "pa-e2bm", nil)
	const addr = "192.0.2.77" // in the sandbox's network, assigned to nothing
	cfg, _ := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: "+addr+":18744\n  watch_interval: 200ms\ndrain:\n  idle: 200ms\n")
	if r := patchagent(t, n, "pre", "--config", cfg); r.code != 0 {
		t.Fatalf("pre %d", r.code)
	}
	if err := n.FlushFirewall(context.Background()); err != nil { // the reboot
		t.Fatal(err)
	}
	assertNotBlocked(t, n)
	d := startDaemon(t, n, cfg) // fails the test if READY=1 does not come
	assertBlocked(t, n)

	if out, err := sandbox.NetnsCommand(n.ServerNS, "ip", "addr", "add", addr+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("adding %s: %v %s", addr, err, out)
	}
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+":18744/metrics", nil)
		resp, err := n.ServerClient().Do(req)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
		}
		cancel()
		if body != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics not served on %s once it was assigned: %v", addr, err)
		}
	}
	if !strings.Contains(body, "patchagent_metrics_listen_failures_total") || strings.Contains(body, "patchagent_metrics_listen_failures_total 0\n") {
		t.Errorf("the failed listens are not counted:\n%s", body)
	}
	if !strings.Contains(body, "\npatchagent_block_reapplied_total 1\n") {
		t.Errorf("the boot re-block is not counted:\n%s", body)
	}
	stopDaemon(t, d)
}
