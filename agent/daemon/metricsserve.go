package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/patchagent/patchagent/agent"
)

// Backoff of ServeMetrics' listen retries.
const (
	metricsRetryFirst = time.Second
	metricsRetryMax   = 30 * time.Second
)

// Serve serves hs (the daemon's listener named what: the metrics, the LB's
// readiness endpoint) on addr until ctx is done or hs is shut down. The
// listen is retried, never fatal: early in boot the address a remote
// Prometheus or LB reaches (the node's private IP) may not exist yet, and a daemon
// that exited on it would never re-apply the block of an open cycle (issue
// 13, R1). Each failure is logged (again only when its text changes) and
// counted in failures (if set), which a scrape shows once the listen succeeded. It
// returns when ctx is done or hs was shut down.
func Serve(ctx context.Context, log *zap.Logger, what, addr string, hs *http.Server, failures prometheus.Counter) {
	delay, last := metricsRetryFirst, ""
	for {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err == nil {
			if last != "" {
				log.Info(what+" listener up", zap.String("addr", ln.Addr().String()))
			}
			err = hs.Serve(ln)
			if errors.Is(err, http.ErrServerClosed) {
				return
			}
			delay = metricsRetryFirst
		}
		if ctx.Err() != nil {
			return
		}
		if failures != nil {
			failures.Inc()
		}
		if msg := err.Error(); msg != last {
			log.Warn(what+" listener: retrying (the phases and the block do not depend on it)", zap.String("addr", addr), zap.Duration("retry_in", delay), zap.Error(err))
			last = msg
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		delay = min(2*delay, metricsRetryMax)
	}
}

// NewReadinessServer serves the load balancer's readiness endpoint at path
// from current (the running Agent's: it changes with a config reload),
// bounded like the metrics server.
func NewReadinessServer(path string, current func() http.Handler) *http.Server {
	mux := http.NewServeMux()
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		if h := current(); h != nil {
			h.ServeHTTP(w, r)
			return
		}
		http.Error(w, "no readiness endpoint configured", http.StatusServiceUnavailable)
	})
	return agent.NewBoundedServer(mux, agent.MetricsTimeouts{})
}
