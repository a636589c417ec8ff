package agent

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/patchagent/patchagent/firewall/lb"
)

// TextfileName is the file WriteTextfile writes in node_exporter's textfile
// collector directory.
const TextfileName = "patchagent.prom"

// phaseBuckets span 0.05 s (a no-op phase) to 30 min (a slow drain, npm
// update or health wait).
var phaseBuckets = []float64{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800}

// Metrics owns every patchagent metric. Label values are only phase, step,
// result and state names fixed by the code: never a URL, a path or error
// text.
type Metrics struct {
	PhaseRuns     *prometheus.CounterVec   // patchagent_phase_runs_total{phase,result}
	PhaseDuration *prometheus.HistogramVec // patchagent_phase_duration_seconds{phase}
	StepDuration  *prometheus.HistogramVec // patchagent_step_duration_seconds{phase,step}
	LastRun       *prometheus.GaugeVec     // patchagent_phase_last_run_timestamp_seconds{phase}
	LastSuccess   *prometheus.GaugeVec     // patchagent_phase_last_success_timestamp_seconds{phase}
	LastResult    *prometheus.GaugeVec     // patchagent_phase_last_result{phase,result}
	LastFailure   *prometheus.GaugeVec     // patchagent_phase_last_failure_timestamp_seconds{phase}

	CycleOpen      prometheus.Gauge   // patchagent_cycle_open
	Blocked        prometheus.Gauge   // patchagent_traffic_blocked
	BlockedSince   prometheus.Gauge   // patchagent_traffic_blocked_since_timestamp_seconds
	BlockReapplied prometheus.Counter // patchagent_block_reapplied_total

	DrainConns    *prometheus.GaugeVec // patchagent_drain_connections{state}
	DrainDuration prometheus.Gauge     // patchagent_drain_duration_seconds
	DrainTimeouts prometheus.Counter   // patchagent_drain_timeouts_total

	HealthAttempts *prometheus.CounterVec // patchagent_health_check_attempts_total{result}
	HealthLatency  prometheus.Gauge       // patchagent_health_check_latency_seconds

	DepsUpdated    prometheus.Counter // patchagent_dependencies_updated_total
	DepsRolledBack prometheus.Counter // patchagent_dependencies_rolled_back_total

	Deadman prometheus.Counter // patchagent_deadman_triggered_total

	LBWaits   *prometheus.CounterVec // patchagent_lb_waits_total{direction,result}
	LBPending prometheus.Gauge       // patchagent_lb_pending

	MetricsListenFailures prometheus.Counter // patchagent_metrics_listen_failures_total

	PhaseRunning *prometheus.GaugeVec // patchagent_phase_running_seconds{phase}

	StateUnrecorded prometheus.Gauge // patchagent_state_unrecorded

	ReloadOK prometheus.Gauge // patchagent_config_last_reload_successful
	Degraded prometheus.Gauge // patchagent_daemon_degraded
}

// NewMetrics creates the metrics and registers them on reg, with
// patchagent_build_info{version,goversion} 1.
func NewMetrics(reg prometheus.Registerer, version string) *Metrics {
	f := promauto.With(reg)
	f.NewGauge(prometheus.GaugeOpts{
		Name:        "patchagent_build_info",
		Help:        "Always 1; the labels give the patchagent version and the Go version that built it.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	}).Set(1)
	m := &Metrics{
		PhaseRuns: f.NewCounterVec(prometheus.CounterOpts{
			Name: "patchagent_phase_runs_total",
			Help: "Phase runs by result (ok, failed, dry-run).",
		}, []string{"phase", "result"}),
		PhaseDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "patchagent_phase_duration_seconds",
			Help:    "Duration of phase runs (dry runs excluded).",
			Buckets: phaseBuckets,
		}, []string{"phase"}),
		StepDuration: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "patchagent_step_duration_seconds",
			Help:    "Duration of the steps of phase runs (dry runs excluded).",
			Buckets: phaseBuckets,
		}, []string{"phase", "step"}),
		LastRun: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_phase_last_run_timestamp_seconds",
			Help: "When the phase last finished a run, whatever its result (dry runs excluded).",
		}, []string{"phase"}),
		LastSuccess: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_phase_last_success_timestamp_seconds",
			Help: "When the phase last finished a run with result ok.",
		}, []string{"phase"}),
		LastResult: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_phase_last_result",
			Help: "1 for the result (ok, failed, forced) of the phase's last run, 0 for the others, from the state file: a textfile written by a later run still shows it.",
		}, []string{"phase", "result"}),
		LastFailure: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_phase_last_failure_timestamp_seconds",
			Help: "When the phase last failed (0: never), from the state file: a later success, or a textfile written by another phase, does not erase it.",
		}, []string{"phase"}),
		CycleOpen: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_cycle_open",
			Help: "1 while a patch cycle is open (the node may be out of service), from the state file.",
		}),
		LBPending: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_lb_pending",
			Help: "1 while the state file holds load balancer changes pre made that are not put back yet (an HAProxy server drained, ELBv2 registrations, Auto Scaling Standby, a lowered minimum size); with no cycle open, a failed put back.",
		}),
		Blocked: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_traffic_blocked",
			Help: "1 while new connections to the app's ports are blocked: the kernel's rules when read, else the state file after the last phase.",
		}),
		BlockedSince: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_traffic_blocked_since_timestamp_seconds",
			Help: "When the open cycle's block was installed, from the state file; 0 when no cycle is open.",
		}),
		BlockReapplied: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_block_reapplied_total",
			Help: "Times the block was put back while a cycle was open (after a reboot or a flush of the rules).",
		}),
		DrainConns: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_drain_connections",
			Help: "Connections to the app's ports left when the last drain ended: busy (not idle long enough) or idle.",
		}, []string{"state"}),
		DrainDuration: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_drain_duration_seconds",
			Help: "How long the last drain waited after the block.",
		}),
		DrainTimeouts: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_drain_timeouts_total",
			Help: "Drains that reached drain.timeout with connections still busy.",
		}),
		PhaseRunning: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "patchagent_phase_running_seconds",
			Help: "How long the phase the daemon runs has been running (0 for the others), refreshed every daemon.watch_interval: a phase past its SSM document's timeout is hung (PatchagentPhaseHung).",
		}, []string{"phase"}),
		Degraded: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_daemon_degraded",
			Help: "1 while the daemon is up but cannot build its agent (app user unknown, pm2 or the CA file missing): it retries, the boot re-block stands, and the hooks run their phases in their own process.",
		}),
		ReloadOK: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_config_last_reload_successful",
			Help: "Whether the daemon's last reading of its config file (at start, on SIGHUP, before a new cycle) was used: 0 means the file was edited into something it refused, and it runs the config it had.",
		}),
		StateUnrecorded: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_state_unrecorded",
			Help: "1 while the state file could not be written (state disk full or read-only) and the daemon holds the node's state in memory: exit returned the node, but a reboot re-blocks it until the file is written again.",
		}),
		MetricsListenFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_metrics_listen_failures_total",
			Help: "Failed attempts of the daemon to listen on daemon.metrics_listen (retried; the block does not depend on it).",
		}),
		HealthAttempts: f.NewCounterVec(prometheus.CounterOpts{
			Name: "patchagent_health_check_attempts_total",
			Help: "Health check attempts of exit's health waits, by result (success, failure).",
		}, []string{"result"}),
		HealthLatency: f.NewGauge(prometheus.GaugeOpts{
			Name: "patchagent_health_check_latency_seconds",
			Help: "Latency of the last health check attempt.",
		}),
		DepsUpdated: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_dependencies_updated_total",
			Help: "Dependency changes (updated, added or removed packages) made by post.",
		}),
		DepsRolledBack: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_dependencies_rolled_back_total",
			Help: "Dependency changes undone by exit's rollback.",
		}),
		Deadman: f.NewCounter(prometheus.CounterOpts{
			Name: "patchagent_deadman_triggered_total",
			Help: "Times the dead-man timer fired: the node stayed out of service too long.",
		}),
		LBWaits: f.NewCounterVec(prometheus.CounterOpts{
			Name: "patchagent_lb_waits_total",
			Help: "Waits for the load balancer (lb section): pre's lb-out (direction out) and exit's lb-in (in), by result: confirmed, no_checker (no LB checker reached the readiness endpoint: nothing confirmed it, drain.min_wait was the only wait), not_in_rotation (the instance was in none of lb.aws.target_groups: nothing to change) or failed (not confirmed within lb.deadline, or the LB's API refused).",
		}, []string{"direction", "result"}),
	}
	for _, p := range Phases { // counters exist from the start: rate() sees the first failure
		m.PhaseRuns.WithLabelValues(p, ResultOK)
		m.PhaseRuns.WithLabelValues(p, ResultFailed)
	}
	m.HealthAttempts.WithLabelValues("success")
	m.HealthAttempts.WithLabelValues("failure")
	// The config a process starts with is used (or it does not start).
	m.ReloadOK.Set(1)
	return m
}

// NewRegistry returns a registry with the Go and process collectors and
// patchagent's metrics, for the daemon to serve.
func NewRegistry(version string) (*prometheus.Registry, *Metrics) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg, NewMetrics(reg, version)
}

// MetricsTimeouts bound each connection to the metrics server, so that no
// client (the listen address need not be loopback) holds one open forever:
// a stalled header or body, a slow reader, an idle keep-alive. Zero fields
// get the defaults.
type MetricsTimeouts struct {
	// ReadHeader bounds reading a request's headers (default 5s).
	ReadHeader time.Duration
	// Read bounds reading a whole request, headers included (default 10s;
	// a scrape is a GET without a body).
	Read time.Duration
	// Write bounds writing the response, from the end of the headers
	// (default 15s: more than Prometheus's 10s default scrape_timeout, so
	// we never cut a scrape Prometheus still waits for; our registry
	// renders in milliseconds).
	Write time.Duration
	// Idle bounds a keep-alive connection between requests (default 90s:
	// more than Prometheus's 1m default scrape_interval and our 30s, so a
	// scraper's connection is reused rather than closed under it).
	Idle time.Duration
}

// metricsMaxHeaderBytes caps a request's headers: a scrape sends a few
// hundred bytes (net/http's default allows 1 MiB).
const metricsMaxHeaderBytes = 8 << 10

// NewMetricsServer returns the HTTP server of /metrics for g, with t's
// timeouts (zero fields: the defaults) and capped headers. The caller
// serves it on its listener and shuts it down.
func NewMetricsServer(g prometheus.Gatherer, t MetricsTimeouts) *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	return NewBoundedServer(mux, t)
}

// NewBoundedServer is an http.Server for h bounded as the metrics server
// is (t's timeouts, small headers): every listener the daemon opens to the
// network (metrics, the load balancer's readiness endpoint) is one.
func NewBoundedServer(h http.Handler, t MetricsTimeouts) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cmp.Or(t.ReadHeader, 5*time.Second),
		ReadTimeout:       cmp.Or(t.Read, 10*time.Second),
		WriteTimeout:      cmp.Or(t.Write, 15*time.Second),
		IdleTimeout:       cmp.Or(t.Idle, 90*time.Second),
		MaxHeaderBytes:    metricsMaxHeaderBytes,
	}
}

// NewTextfileRegistry returns a registry with only patchagent's metrics,
// for a CLI run's textfile: node_exporter serves its own go_* and process_*
// series, and the same names from a textfile clash with them.
func NewTextfileRegistry(version string) (*prometheus.Registry, *Metrics) {
	reg := prometheus.NewRegistry()
	return reg, NewMetrics(reg, version)
}

// ObservePhase records one finished phase run from its report and the state
// file as it stands after the run (now = when).
//
// A dry run counts only in patchagent_phase_runs_total{result="dry-run"}:
// it changed nothing, so it neither feeds the duration histograms nor moves
// the last-run and last-success timestamps (an alert on a stale last success
// must not be silenced by dry runs). The state gauges are set from st for
// every run.
func (m *Metrics) ObservePhase(rep *Report, st State, now time.Time) {
	m.PhaseRuns.WithLabelValues(rep.Phase, rep.Result).Inc()
	m.observeState(st)
	if rep.Result == ResultDryRun {
		return
	}
	ts := timestamp(now)
	m.PhaseDuration.WithLabelValues(rep.Phase).Observe(rep.Duration.Seconds())
	for _, s := range rep.Steps {
		m.StepDuration.WithLabelValues(rep.Phase, stepLabel(s.Name)).Observe(s.Dur.Seconds())
	}
	m.LastRun.WithLabelValues(rep.Phase).Set(ts)
	if rep.Result == ResultOK {
		m.LastSuccess.WithLabelValues(rep.Phase).Set(ts)
	}
	if rep.Reblocked {
		m.BlockReapplied.Inc()
	}
	if d := rep.Drain; d != nil {
		m.DrainConns.WithLabelValues("busy").Set(float64(d.Active))
		m.DrainConns.WithLabelValues("idle").Set(float64(d.Remaining - d.Active))
		m.DrainDuration.Set(d.Waited.Seconds())
		if d.TimedOut {
			m.DrainTimeouts.Inc()
		}
	}
	if h := rep.Health; h != nil && h.Attempts > 0 {
		// The report keeps only the outcome: a healthy wait ended on a
		// success, an unhealthy one on a failure; the others are counted
		// as failures (a wait for several passes in a row undercounts
		// its successes).
		failures := h.Attempts
		if h.Healthy {
			m.HealthAttempts.WithLabelValues("success").Inc()
			failures--
		}
		m.HealthAttempts.WithLabelValues("failure").Add(float64(failures))
		m.HealthLatency.Set(h.LastLatency)
	}
	// A post re-run after a completed update reports the cycle's changes
	// again without an update step: count them once, when made.
	if rep.Phase == "post" && rep.Result == ResultOK && updated(rep) {
		m.DepsUpdated.Add(float64(len(rep.Changes)))
	}
	if rep.RolledBack > 0 {
		m.DepsRolledBack.Add(float64(rep.RolledBack))
	}
	for _, s := range rep.Steps {
		if dir, ok := lbDirections[s.Name]; ok {
			m.LBWaits.WithLabelValues(dir, lbWaitResult(s)).Inc()
		}
	}
}

// lbDirections are the steps that wait for the load balancer.
var lbDirections = map[string]string{"lb-out": "out", "lb-in": "in"}

// lbNotIn is the detail of an lb step that found the node in no rotation.
const lbNotIn = "not in any rotation"

// lbWaitResult is how an lb step's wait ended: lbOut and lbIn report as
// warnings a wait no checker confirmed and a node in no rotation.
func lbWaitResult(s StepReport) string {
	switch {
	case s.Result == ResultOK:
		return "confirmed"
	case s.Result == "warn" && s.Detail == lbNotIn:
		return "not_in_rotation"
	case s.Result == "warn":
		return "no_checker"
	}
	return "failed"
}

// RegisterReadinessMetrics adds the readiness endpoint's metrics to reg:
// patchagent_lb_checkers (the LB checker addresses seen within two
// lb.interval) and patchagent_lb_checks_total{answer}; stats reads them
// (false: no endpoint now, after a reload without one: 0).
func RegisterReadinessMetrics(reg prometheus.Registerer, stats func() (lb.Stats, bool)) {
	read := func(f func(lb.Stats) float64) func() float64 {
		return func() float64 {
			s, ok := stats()
			if !ok {
				return 0
			}
			return f(s)
		}
	}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "patchagent_lb_checkers",
			Help: "Load balancer health checkers (source addresses) that reached the readiness endpoint within two lb.interval: 0 means no LB checks it, and pre cannot know when the LB has taken the node out (PatchagentLBNoChecker).",
		}, read(func(s lb.Stats) float64 { return float64(s.Checkers) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "patchagent_lb_checks_total",
			Help:        "Health checks the readiness endpoint answered, by answer: ready (200) or unavailable (503: out of rotation, or the app unhealthy).",
			ConstLabels: prometheus.Labels{"answer": "ready"},
		}, read(func(s lb.Stats) float64 { return float64(s.Ready) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name:        "patchagent_lb_checks_total",
			Help:        "Health checks the readiness endpoint answered, by answer: ready (200) or unavailable (503: out of rotation, or the app unhealthy).",
			ConstLabels: prometheus.Labels{"answer": "unavailable"},
		}, read(func(s lb.Stats) float64 { return float64(s.Unavailable) })),
	)
}

// observeState sets the gauges that mirror the state file.
func (m *Metrics) observeState(st State) {
	for phase, last := range st.Last {
		for _, r := range []string{ResultOK, ResultFailed, ResultForced} {
			m.LastResult.WithLabelValues(phase, r).Set(bool01(last.Result == r))
		}
		m.LastFailure.WithLabelValues(phase).Set(timestamp(last.LastFailure))
	}
	m.CycleOpen.Set(bool01(st.Open))
	m.LBPending.Set(bool01(st.LBPending()))
	blocked := st.Open && st.Block != nil
	m.Blocked.Set(bool01(blocked))
	if blocked {
		m.BlockedSince.Set(timestamp(st.Block.Since))
	} else {
		m.BlockedSince.Set(0)
	}
}

// ObserveBlock records the kernel's view of the block (the daemon and status
// read it). The last of ObserveBlock and ObservePhase wins: each is the
// freshest view when it is called.
func (m *Metrics) ObserveBlock(blocked bool) { m.Blocked.Set(bool01(blocked)) }

// ObserveDegraded records whether the daemon is degraded (BuildOrWait).
func (m *Metrics) ObserveDegraded(degraded bool) { m.Degraded.Set(bool01(degraded)) }

// ObserveReload records whether the daemon's last config reload worked.
func (m *Metrics) ObserveReload(ok bool) { m.ReloadOK.Set(bool01(ok)) }

// ObserveStateUnrecorded records whether the state file is behind what the
// process knows (StateStore.Unrecorded).
func (m *Metrics) ObserveStateUnrecorded(unrecorded bool) { m.StateUnrecorded.Set(bool01(unrecorded)) }

// ObservePhaseRunning records which phase the daemon runs and for how long
// (phase "" when none): the others read 0.
func (m *Metrics) ObservePhaseRunning(phase string, age time.Duration) {
	for _, p := range Phases {
		v := 0.0
		if p == phase {
			v = age.Seconds()
		}
		m.PhaseRunning.WithLabelValues(p).Set(v)
	}
}

// ObserveReassert counts a re-application of the block by the daemon's watch.
func (m *Metrics) ObserveReassert() { m.BlockReapplied.Inc() }

// ObserveDeadman records that the dead-man timer fired (node out of service
// too long).
func (m *Metrics) ObserveDeadman() { m.Deadman.Inc() }

// WriteTextfile writes every metric of g to dir/patchagent.prom for
// node_exporter's textfile collector, atomically (a temp file renamed over
// it, mode 0644). A missing dir is an error: it belongs to node_exporter.
func WriteTextfile(dir string, g prometheus.Gatherer) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("metrics textfile dir %s: %w", dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("metrics textfile dir %s: not a directory", dir)
	}
	path := filepath.Join(dir, TextfileName)
	if err := prometheus.WriteToTextfile(path, g); err != nil {
		return fmt.Errorf("writing metrics to %s: %w", path, err)
	}
	return nil
}

func updated(rep *Report) bool {
	for _, s := range rep.Steps {
		if s.Name == "update" && s.Result == ResultOK {
			return true
		}
	}
	return false
}

func timestamp(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

func bool01(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
