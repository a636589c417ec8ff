package daemon

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/agent"
)

// TestServeMetricsRetriesTheListen: R1 of issue 13. The address is not
// there yet (here: taken by another listener, as early in boot a private IP
// is not assigned yet): ServeMetrics keeps trying, counts the failures, and
// serves as soon as it can; nothing returns an error to stop the daemon.
func TestServeMetricsRetriesTheListen(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := holder.Addr().String()
	reg, m := agent.NewRegistry("test")
	hs := agent.NewMetricsServer(reg, agent.MetricsTimeouts{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		Serve(ctx, zaptest.NewLogger(t), "metrics", addr, hs, m.MetricsListenFailures)
	}()

	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.MetricsListenFailures) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("no listen failure counted")
		}
		time.Sleep(10 * time.Millisecond)
	}
	holder.Close() // the address is free now
	var body string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never served once the address was free: %v", err)
		}
	}
	if !strings.Contains(body, "patchagent_metrics_listen_failures_total") {
		t.Errorf("the failures are not in the scrape:\n%s", body)
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), time.Second)
	defer scancel()
	hs.Shutdown(sctx)
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("ServeMetrics did not return after the shutdown")
	}
}

// TestServeMetricsStopsWhileRetrying: a daemon stopped before the address
// ever appeared does not wait on the retries.
func TestServeMetricsStopsWhileRetrying(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "x"})
	go func() {
		defer close(done)
		Serve(ctx, zaptest.NewLogger(t), "metrics", holder.Addr().String(), agent.NewMetricsServer(prometheus.NewRegistry(), agent.MetricsTimeouts{}), c)
	}()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("ServeMetrics did not return on ctx done")
	}
}
