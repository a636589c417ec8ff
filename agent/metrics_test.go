package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/patchagent/patchagent/firewall/lb"
	"github.com/patchagent/patchagent/healthcheck"
)

var (
	t0 = time.Unix(1_800_000_000, 0).UTC() // 1.8e+09
	t1 = t0.Add(10 * time.Minute)          // 1.8000006e+09
	t2 = t0.Add(20 * time.Minute)          // 1.8000012e+09
)

func newTestMetrics(t *testing.T) (*prometheus.Registry, *Metrics) {
	t.Helper()
	reg := prometheus.NewRegistry()
	return reg, NewMetrics(reg, "v1.2.3")
}

// compare checks the named families of g against want, whose HELP and TYPE
// lines are taken from g: the tests are about values.
func compare(t *testing.T, g prometheus.Gatherer, want map[string]string) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var names []string
	for name, body := range want {
		i := slices.IndexFunc(mfs, func(mf *dto.MetricFamily) bool { return mf.GetName() == name })
		if i < 0 {
			t.Fatalf("%s not gathered", name)
		}
		b.WriteString("# HELP " + name + " " + mfs[i].GetHelp() + "\n")
		b.WriteString("# TYPE " + name + " " + strings.ToLower(mfs[i].GetType().String()) + "\n")
		b.WriteString(strings.TrimLeft(body, "\n"))
		names = append(names, name)
	}
	if err := testutil.GatherAndCompare(g, strings.NewReader(b.String()), names...); err != nil {
		t.Error(err)
	}
}

func openState(since time.Time) State {
	return State{Version: StateVersion, CycleID: "c1", Open: true, Block: &BlockRecord{Chain: "PATCHAGENT-BLOCK", Since: since}}
}

func TestMetricsPreWithDrain(t *testing.T) {
	reg, m := newTestMetrics(t)
	rep := &Report{Phase: "pre", Result: ResultOK, Duration: 12 * time.Second,
		Steps: []StepReport{
			{Name: "block", Result: ResultOK, Dur: 40 * time.Millisecond},
			{Name: "drain", Result: ResultOK, Dur: 11 * time.Second},
		},
		Drain: &DrainResult{Seen: 9, Remaining: 5, Active: 2, Busy: 1, TimedOut: true, Waited: 11500 * time.Millisecond},
	}
	m.ObservePhase(rep, openState(t0), t1)

	compare(t, reg, map[string]string{
		"patchagent_phase_runs_total": `
patchagent_phase_runs_total{phase="exit",result="failed"} 0
patchagent_phase_runs_total{phase="exit",result="ok"} 0
patchagent_phase_runs_total{phase="post",result="failed"} 0
patchagent_phase_runs_total{phase="post",result="ok"} 0
patchagent_phase_runs_total{phase="pre",result="failed"} 0
patchagent_phase_runs_total{phase="pre",result="ok"} 1
patchagent_phase_runs_total{phase="reconcile",result="failed"} 0
patchagent_phase_runs_total{phase="reconcile",result="ok"} 0
`,
		"patchagent_drain_connections": `
patchagent_drain_connections{state="busy"} 2
patchagent_drain_connections{state="idle"} 3
`,
		"patchagent_drain_duration_seconds":                  "patchagent_drain_duration_seconds 11.5\n",
		"patchagent_drain_timeouts_total":                    "patchagent_drain_timeouts_total 1\n",
		"patchagent_cycle_open":                              "patchagent_cycle_open 1\n",
		"patchagent_traffic_blocked":                         "patchagent_traffic_blocked 1\n",
		"patchagent_traffic_blocked_since_timestamp_seconds": "patchagent_traffic_blocked_since_timestamp_seconds 1.8e+09\n",
		"patchagent_phase_last_run_timestamp_seconds":        "patchagent_phase_last_run_timestamp_seconds{phase=\"pre\"} 1.8000006e+09\n",
		"patchagent_phase_last_success_timestamp_seconds":    "patchagent_phase_last_success_timestamp_seconds{phase=\"pre\"} 1.8000006e+09\n",
		"patchagent_phase_duration_seconds": `
patchagent_phase_duration_seconds_bucket{phase="pre",le="0.05"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="0.1"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="0.25"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="0.5"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="1"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="2.5"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="5"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="10"} 0
patchagent_phase_duration_seconds_bucket{phase="pre",le="30"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="60"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="120"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="300"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="600"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="1200"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="1800"} 1
patchagent_phase_duration_seconds_bucket{phase="pre",le="+Inf"} 1
patchagent_phase_duration_seconds_sum{phase="pre"} 12
patchagent_phase_duration_seconds_count{phase="pre"} 1
`,
	})
	if got := testutil.CollectAndCount(m.StepDuration, "patchagent_step_duration_seconds"); got != 2 {
		t.Errorf("step duration series: got %d, want 2 (block, drain)", got)
	}
}

func TestMetricsStepDuration(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Duration: time.Second,
		Steps: []StepReport{{Name: "block", Result: ResultOK, Dur: 40 * time.Millisecond}, {Name: "stop", Result: ResultOK, Dur: 500 * time.Millisecond}}},
		State{}, t0)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "patchagent_step_duration_seconds" {
			continue
		}
		for _, s := range mf.GetMetric() {
			got[labelString(s)] = s.GetHistogram().GetSampleSum()
		}
	}
	want := map[string]float64{"phase=pre,step=block": 0.04, "phase=pre,step=stop": 0.5}
	if len(got) != len(want) || got["phase=pre,step=block"] != 0.04 || got["phase=pre,step=stop"] != 0.5 {
		t.Errorf("step duration sums: got %v, want %v", got, want)
	}
}

func TestMetricsExitHealthyReblocked(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Duration: time.Second}, openState(t0), t0)
	rep := &Report{Phase: "exit", Result: ResultOK, Duration: 40 * time.Second, Reblocked: true,
		Steps:  []StepReport{{Name: "reblock", Result: ResultOK}, {Name: "start", Result: ResultOK}, {Name: "health", Result: ResultOK}},
		Health: &HealthSummary{Healthy: true, Attempts: 3, Seconds: 2.1, LastLatency: 0.012},
	}
	closed := State{Version: StateVersion, CycleID: "c1", Open: false, ClosedAt: t1}
	m.ObservePhase(rep, closed, t1)

	compare(t, reg, map[string]string{
		"patchagent_health_check_attempts_total": `
patchagent_health_check_attempts_total{result="failure"} 2
patchagent_health_check_attempts_total{result="success"} 1
`,
		"patchagent_health_check_latency_seconds":            "patchagent_health_check_latency_seconds 0.012\n",
		"patchagent_block_reapplied_total":                   "patchagent_block_reapplied_total 1\n",
		"patchagent_cycle_open":                              "patchagent_cycle_open 0\n",
		"patchagent_traffic_blocked":                         "patchagent_traffic_blocked 0\n",
		"patchagent_traffic_blocked_since_timestamp_seconds": "patchagent_traffic_blocked_since_timestamp_seconds 0\n",
		"patchagent_phase_last_success_timestamp_seconds": `
patchagent_phase_last_success_timestamp_seconds{phase="exit"} 1.8000006e+09
patchagent_phase_last_success_timestamp_seconds{phase="pre"} 1.8e+09
`,
	})

	// An unhealthy wait counts every attempt as a failure.
	m.ObservePhase(&Report{Phase: "exit", Result: ResultFailed, Health: &HealthSummary{Attempts: 4, LastLatency: 2}}, openState(t0), t2)
	compare(t, reg, map[string]string{
		"patchagent_health_check_attempts_total": `
patchagent_health_check_attempts_total{result="failure"} 6
patchagent_health_check_attempts_total{result="success"} 1
`,
		"patchagent_health_check_latency_seconds": "patchagent_health_check_latency_seconds 2\n",
	})
}

func TestMetricsPostChanges(t *testing.T) {
	reg, m := newTestMetrics(t)
	rep := &Report{Phase: "post", Result: ResultOK, Duration: 90 * time.Second,
		Steps:   []StepReport{{Name: "check", Result: ResultOK}, {Name: "snapshot", Result: ResultOK}, {Name: "update", Result: ResultOK, Dur: 80 * time.Second}},
		Changes: []string{"express 4.18.2 -> 4.21.0", "+ qs 6.13.0"},
	}
	st := openState(t0)
	m.ObservePhase(rep, st, t1)
	// A re-run in the same cycle reports the changes again, without an
	// update step: not counted twice.
	m.ObservePhase(&Report{Phase: "post", Result: ResultOK, Steps: []StepReport{}, Changes: rep.Changes}, st, t2)
	// A failed post's changes were restored: not counted.
	m.ObservePhase(&Report{Phase: "post", Result: ResultFailed, Steps: []StepReport{{Name: "update", Result: ResultOK}}, Changes: []string{"x"}}, st, t2)

	compare(t, reg, map[string]string{
		"patchagent_dependencies_updated_total":     "patchagent_dependencies_updated_total 2\n",
		"patchagent_dependencies_rolled_back_total": "patchagent_dependencies_rolled_back_total 0\n",
	})
	if err := testutil.CollectAndCompare(m.PhaseRuns, strings.NewReader(`
# HELP patchagent_phase_runs_total Phase runs by result (ok, failed, dry-run).
# TYPE patchagent_phase_runs_total counter
patchagent_phase_runs_total{phase="exit",result="failed"} 0
patchagent_phase_runs_total{phase="exit",result="ok"} 0
patchagent_phase_runs_total{phase="post",result="failed"} 1
patchagent_phase_runs_total{phase="post",result="ok"} 2
patchagent_phase_runs_total{phase="pre",result="failed"} 0
patchagent_phase_runs_total{phase="pre",result="ok"} 0
patchagent_phase_runs_total{phase="reconcile",result="failed"} 0
patchagent_phase_runs_total{phase="reconcile",result="ok"} 0
`), "patchagent_phase_runs_total"); err != nil {
		t.Error(err)
	}
}

func TestMetricsExitRolledBack(t *testing.T) {
	reg, m := newTestMetrics(t)
	rep := &Report{Phase: "exit", Result: ResultFailed, RolledBack: 2, Error: "node back in service, but the dependency update broke the app: ...",
		Steps:  []StepReport{{Name: "start", Result: ResultOK}, {Name: "health", Result: ResultFailed}, {Name: "rollback", Result: ResultOK}},
		Health: &HealthSummary{Healthy: false, Attempts: 5, LastLatency: 0.5},
	}
	m.ObservePhase(rep, State{Version: StateVersion, CycleID: "c1"}, t1)
	compare(t, reg, map[string]string{
		"patchagent_dependencies_rolled_back_total": "patchagent_dependencies_rolled_back_total 2\n",
		"patchagent_dependencies_updated_total":     "patchagent_dependencies_updated_total 0\n",
		"patchagent_health_check_attempts_total": `
patchagent_health_check_attempts_total{result="failure"} 5
patchagent_health_check_attempts_total{result="success"} 0
`,
		"patchagent_phase_last_run_timestamp_seconds": "patchagent_phase_last_run_timestamp_seconds{phase=\"exit\"} 1.8000006e+09\n",
	})
	if got := testutil.ToFloat64(m.PhaseRuns.WithLabelValues("exit", ResultFailed)); got != 1 {
		t.Errorf("exit failed runs: got %v, want 1", got)
	}
	if n := testutil.CollectAndCount(m.LastSuccess); n != 0 {
		t.Errorf("a failed exit set %d last-success series", n)
	}
}

func TestMetricsFailedPreKeepsLastSuccess(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Duration: time.Second}, openState(t0), t0)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultFailed, Duration: time.Second, Error: "reading connections to [443]: boom"}, openState(t0), t2)
	compare(t, reg, map[string]string{
		"patchagent_phase_last_run_timestamp_seconds":     "patchagent_phase_last_run_timestamp_seconds{phase=\"pre\"} 1.8000012e+09\n",
		"patchagent_phase_last_success_timestamp_seconds": "patchagent_phase_last_success_timestamp_seconds{phase=\"pre\"} 1.8e+09\n",
	})
	if got := testutil.ToFloat64(m.PhaseRuns.WithLabelValues("pre", ResultFailed)); got != 1 {
		t.Errorf("pre failed runs: got %v, want 1", got)
	}
}

func TestMetricsDryRunCountsOnlyTheRun(t *testing.T) {
	_, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultDryRun, Duration: time.Second, Plan: []string{"block"},
		Steps: []StepReport{{Name: "check", Result: ResultOK}}}, State{}, t0)
	if got := testutil.ToFloat64(m.PhaseRuns.WithLabelValues("pre", ResultDryRun)); got != 1 {
		t.Errorf("dry runs: got %v, want 1", got)
	}
	for _, c := range []prometheus.Collector{m.PhaseDuration, m.StepDuration, m.LastRun, m.LastSuccess} {
		if n := testutil.CollectAndCount(c); n != 0 {
			t.Errorf("a dry run created %d series in %v", n, c)
		}
	}
}

func TestMetricsBlockReassertDeadman(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK}, openState(t0), t0)
	m.ObserveBlock(false) // the kernel's rules were flushed
	m.ObserveReassert()
	m.ObserveBlock(true)
	m.ObserveReassert()
	m.ObserveDeadman()
	compare(t, reg, map[string]string{
		"patchagent_traffic_blocked":         "patchagent_traffic_blocked 1\n",
		"patchagent_block_reapplied_total":   "patchagent_block_reapplied_total 2\n",
		"patchagent_deadman_triggered_total": "patchagent_deadman_triggered_total 1\n",
		"patchagent_cycle_open":              "patchagent_cycle_open 1\n",
	})
	m.ObserveBlock(false)
	if got := testutil.ToFloat64(m.Blocked); got != 0 {
		t.Errorf("traffic_blocked after ObserveBlock(false): got %v", got)
	}
}

func TestMetricsBuildInfo(t *testing.T) {
	reg, _ := newTestMetrics(t)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "patchagent_build_info" {
			m := mf.GetMetric()[0]
			if got := labelString(m); !strings.HasPrefix(got, "goversion=go") || !strings.HasSuffix(got, ",version=v1.2.3") || m.GetGauge().GetValue() != 1 {
				t.Errorf("build_info: %s %v", got, m.GetGauge().GetValue())
			}
			return
		}
	}
	t.Error("patchagent_build_info not gathered")
}

// observeAll feeds every kind of report, with free text everywhere a report
// has it.
func observeAll(m *Metrics) {
	text := "dial tcp 10.0.0.1:443: connection refused (https://app.example/health?x=1)"
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Duration: 3 * time.Second, Summary: []string{text}, Warnings: []string{text},
		Steps: []StepReport{{Name: "lb-out", Result: "warn", Detail: text}, {Name: "block", Result: ResultOK, Dur: time.Millisecond, Detail: text}, {Name: "drain", Result: ResultOK, Dur: 2 * time.Second}},
		Drain: &DrainResult{Remaining: 3, Active: 1, Waited: 2 * time.Second}}, openState(t0), t0)
	m.ObservePhase(&Report{Phase: "post", Result: ResultOK, Duration: time.Minute,
		Steps: []StepReport{{Name: "update", Result: ResultOK, Dur: time.Minute, Detail: text}}, Changes: []string{text, text}}, openState(t0), t1)
	m.ObservePhase(&Report{Phase: "exit", Result: ResultFailed, Error: text, RolledBack: 2, Reblocked: true,
		Steps:  []StepReport{{Name: "health", Result: ResultFailed, Detail: text}, {Name: "lb-in", Result: ResultFailed, Detail: text}},
		Health: &HealthSummary{Attempts: 3, LastLatency: 0.2}}, openState(t0), t2)
	m.ObservePhase(&Report{Phase: "exit", Result: ResultOK, Health: &HealthSummary{Healthy: true, Attempts: 1, LastLatency: 0.01}}, State{}, t2)
	m.ObservePhase(&Report{Phase: "reconcile", Result: ResultDryRun, Plan: []string{text}}, State{}, t2)
	m.ObserveBlock(false)
	m.ObserveReassert()
	m.ObserveDeadman()
}

// TestMetricsLabels: label names are only phase, step, result and state
// (version and goversion on build_info), and their values come from the
// code's own names, never from report text.
func TestMetricsLabels(t *testing.T) {
	reg, m := newTestMetrics(t)
	observeAll(m)
	RegisterReadinessMetrics(reg, func() (lb.Stats, bool) { return lb.Stats{Checkers: 1, Ready: 2, Unavailable: 3}, true })
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	allowed := map[string][]string{
		"phase":     Phases,
		"step":      append(slices.Clone(StepNames), "other"),
		"result":    {ResultOK, ResultFailed, ResultDryRun, "success", "failure", "confirmed", "no_checker", "not_in_rotation"},
		"state":     {"busy", "idle"},
		"direction": {"out", "in"},
		"answer":    {"ready", "unavailable"},
	}
	seen := map[string]bool{}
	for _, mf := range mfs {
		if !strings.HasPrefix(mf.GetName(), "patchagent_") {
			t.Errorf("%s: not under patchagent_", mf.GetName())
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				name, value := lp.GetName(), lp.GetValue()
				seen[name] = true
				if mf.GetName() == "patchagent_build_info" {
					if name != "version" && name != "goversion" {
						t.Errorf("build_info label %s", name)
					}
					continue
				}
				vals, ok := allowed[name]
				if !ok {
					t.Errorf("%s: label %s=%q is not one of phase, step, result, state", mf.GetName(), name, value)
				} else if !slices.Contains(vals, value) {
					t.Errorf("%s: label %s=%q is not a name the code uses", mf.GetName(), name, value)
				}
			}
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	slices.Sort(names)
	if want := []string{"answer", "direction", "goversion", "phase", "result", "state", "step", "version"}; !slices.Equal(names, want) {
		t.Errorf("label names: got %v, want %v", names, want)
	}
}

func TestMetricsLint(t *testing.T) {
	reg, m := NewRegistry("v1.2.3")
	observeAll(m)
	RegisterReadinessMetrics(reg, func() (lb.Stats, bool) { return lb.Stats{}, false })
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

// promtool is `promtool` on PATH, else the copy `make setup` extracts into
// .cache/bin; "" when neither is there.
func promtool() string {
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	if p, err := filepath.Abs(filepath.Join("..", ".cache", "bin", "promtool")); err == nil {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// TestMetricsPromtool: the daemon's full exposition (Go and process
// collectors included) passes `promtool check metrics`.
func TestMetricsPromtool(t *testing.T) {
	bin := promtool()
	if bin == "" {
		t.Skip("promtool is not on PATH nor in .cache/bin: run `make setup` (deploy/setup.sh extracts it from Debian's prometheus package)")
	}
	reg, m := NewRegistry("v1.2.3")
	observeAll(m)
	var text bytes.Buffer
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&text, mf); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"patchagent_phase_runs_total", "go_goroutines", "process_cpu_seconds_total"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("exposition lacks %s", want)
		}
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = &text
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("%s check metrics: %v\n%s", bin, err, out)
	}
}

func TestWriteTextfile(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Duration: time.Second}, openState(t0), t1)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, TextfileName), []byte("stale\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTextfile(dir, reg); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != TextfileName {
		t.Errorf("dir holds %v, want only %s (no temp file left)", entries, TextfileName)
	}
	path := filepath.Join(dir, TextfileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644 (node_exporter runs as its own user)", fi.Mode().Perm())
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// node_exporter's textfile collector parses with the same parser.
	p := expfmt.NewTextParser(model.LegacyValidation)
	mfs, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("node_exporter could not parse %s: %v", path, err)
	}
	runs := mfs["patchagent_phase_runs_total"]
	if runs == nil || runs.GetType() != dto.MetricType_COUNTER {
		t.Fatalf("patchagent_phase_runs_total missing or not a counter: %v", runs)
	}
	found := false
	for _, s := range runs.GetMetric() {
		if labelString(s) == "phase=pre,result=ok" {
			found = true
			if v := s.GetCounter().GetValue(); v != 1 {
				t.Errorf("pre ok runs: got %v, want 1", v)
			}
		}
		if s.TimestampMs != nil {
			t.Error("the textfile collector rejects client-side timestamps")
		}
	}
	if !found {
		t.Error(`patchagent_phase_runs_total{phase="pre",result="ok"} not in the file`)
	}
	if g := mfs["patchagent_phase_last_success_timestamp_seconds"]; g == nil || g.GetMetric()[0].GetGauge().GetValue() != 1.8000006e+09 {
		t.Errorf("last success timestamp: %v", g)
	}
}

func TestWriteTextfileMissingDir(t *testing.T) {
	reg, _ := newTestMetrics(t)
	dir := filepath.Join(t.TempDir(), "node-exporter")
	err := WriteTextfile(dir, reg)
	if err == nil || !strings.Contains(err.Error(), dir) || !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("got %v, want an ErrNotExist error naming %s", err, dir)
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
		t.Errorf("WriteTextfile created %s", dir)
	}
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteTextfile(file, reg); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("a file as dir: got %v", err)
	}
}

func labelString(m *dto.Metric) string {
	var parts []string
	for _, lp := range m.GetLabel() {
		parts = append(parts, lp.GetName()+"="+lp.GetValue())
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

// TestStepNamesCoverThePhases: every step the phases report is one of
// StepNames (else its metric would read "other"), over runs that take each
// phase through its steps: pre with extras, post, exit with a rollback and
// with extras, exit --force, a reboot's reconcile; and a report's stray
// step name is exported as "other", not as a new label value.
func TestStepNamesCoverThePhases(t *testing.T) {
	ctx := context.Background()
	seen := map[string]bool{}
	record := func(rep *Report) {
		for _, s := range rep.Steps {
			seen[s.Name] = true
		}
	}
	e := newTestEnv(t)
	p := withPackages(t, e)
	e.cfg.Steps.StopUnits = []string{"metrics-agent.service"}
	e.cfg.Exit.Rollback = true
	withRotation(e)
	record(e.agent(t).Pre(ctx, RunOptions{}))
	record(e.agent(t).Post(ctx, RunOptions{}))
	e.fw.blocked = false // a reboot: reblock first
	// Unhealthy until the rollback restored the snapshot.
	e.health.dynamic = func() healthcheck.Result {
		if p.restores() > 0 {
			return healthy()
		}
		return unhealthy(500)
	}
	record(e.agent(t).Exit(ctx, RunOptions{}))
	record(e.agent(t).Pre(ctx, RunOptions{}))
	e.fw.blocked, e.boot = false, "boot-2"
	record(e.agent(t).Reconcile(ctx, RunOptions{}))
	record(e.agent(t).Exit(ctx, forceOpts("test")))
	for name := range seen {
		if !slices.Contains(StepNames, name) {
			t.Errorf("step %q is not in StepNames", name)
		}
	}
	for _, want := range []string{"check", "block", "drain", "stop", "extras", "snapshot", "update", "reblock", "start", "health", "rollback", "unblock", "restore", "force", "lb-out", "lb-in"} {
		if !seen[want] {
			t.Errorf("no run reported step %q: the scenarios miss it", want)
		}
	}

	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "exit", Result: ResultOK, Steps: []StepReport{{Name: "rm -rf /srv/app", Result: ResultOK}}}, State{}, time.Now())
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, mf := range mfs {
		if mf.GetName() != "patchagent_step_duration_seconds" {
			continue
		}
		for _, s := range mf.GetMetric() {
			for _, lp := range s.GetLabel() {
				if lp.GetName() == "step" {
					steps = append(steps, lp.GetValue())
				}
			}
		}
	}
	if !slices.Equal(steps, []string{"other"}) {
		t.Fatalf("step labels %q, want the stray name exported as [other]", steps)
	}
}

// TestMetricsLBWaits: each lb step of a report counts once, by direction
// and how its wait ended.
func TestMetricsLBWaits(t *testing.T) {
	reg, m := newTestMetrics(t)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Steps: []StepReport{{Name: "check", Result: ResultOK}, {Name: "lb-out", Result: ResultOK}}}, openState(t0), t0)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Steps: []StepReport{{Name: "lb-out", Result: "warn"}}}, openState(t0), t0)
	m.ObservePhase(&Report{Phase: "exit", Result: ResultFailed, Steps: []StepReport{{Name: "unblock", Result: ResultOK}, {Name: "lb-in", Result: ResultFailed}}}, openState(t0), t1)
	m.ObservePhase(&Report{Phase: "pre", Result: ResultOK, Steps: []StepReport{{Name: "lb-out", Result: "warn", Detail: lbNotIn}}}, openState(t0), t1)
	m.ObservePhase(&Report{Phase: "exit", Result: ResultDryRun, Plan: []string{"lb-in: ..."}}, openState(t0), t1)
	compare(t, reg, map[string]string{"patchagent_lb_waits_total": `
patchagent_lb_waits_total{direction="in",result="failed"} 1
patchagent_lb_waits_total{direction="out",result="confirmed"} 1
patchagent_lb_waits_total{direction="out",result="no_checker"} 1
patchagent_lb_waits_total{direction="out",result="not_in_rotation"} 1
`})
}

// TestLBPendingFollowsTheRecord: 1 while the state file holds an LB
// record (a cycle open, or one closed without putting it back), 0 once
// it is put back (none, or JSON null).
func TestLBPendingFollowsTheRecord(t *testing.T) {
	reg, m := newTestMetrics(t)
	t0 := time.Unix(1_700_000_000, 0)
	closed := State{LB: json.RawMessage(`{"registrations":[{"target_group":"arn","id":"i-1","port":80}]}`)}
	m.ObservePhase(&Report{Phase: "exit", Result: ResultFailed}, closed, t0)
	compare(t, reg, map[string]string{"patchagent_lb_pending": "patchagent_lb_pending 1\n", "patchagent_cycle_open": "patchagent_cycle_open 0\n"})
	for _, st := range []State{{}, {LB: json.RawMessage("null")}} {
		m.ObservePhase(&Report{Phase: "exit", Result: ResultOK}, st, t0)
		compare(t, reg, map[string]string{"patchagent_lb_pending": "patchagent_lb_pending 0\n"})
	}
}

// TestReadinessMetrics: the endpoint's figures as read at the scrape, 0
// while there is no endpoint (a reload removed lb.health_listen).
func TestReadinessMetrics(t *testing.T) {
	reg, _ := newTestMetrics(t)
	s, ok := lb.Stats{Checkers: 2, Ready: 10, Unavailable: 4}, true
	RegisterReadinessMetrics(reg, func() (lb.Stats, bool) { return s, ok })
	compare(t, reg, map[string]string{
		"patchagent_lb_checkers": "patchagent_lb_checkers 2\n",
		"patchagent_lb_checks_total": `
patchagent_lb_checks_total{answer="ready"} 10
patchagent_lb_checks_total{answer="unavailable"} 4
`})
	ok = false
	compare(t, reg, map[string]string{"patchagent_lb_checkers": "patchagent_lb_checkers 0\n"})
}

// TestLastFailureSurvivesALaterSuccess: a failed exit's time stays in the
// state file through the next, successful exit, and a fresh registry (a
// CLI run's textfile) fed only that state shows it, with the last result
// ok.
func TestLastFailureSurvivesALaterSuccess(t *testing.T) {
	e := newTestEnv(t)
	j := putBackRefused(t, e)
	st, _ := e.state.Load()
	failed := st.Last["exit"]
	if failed.Result != ResultFailed || failed.LastFailure.IsZero() || !failed.LastFailure.Equal(failed.At) {
		t.Fatalf("after the failed exit: %+v", failed)
	}
	j.inErr = nil
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	st, _ = e.state.Load()
	if ok := st.Last["exit"]; ok.Result != ResultOK || !ok.LastFailure.Equal(failed.LastFailure) {
		t.Fatalf("after the next exit: %+v, want ok with the last failure at %s", ok, failed.LastFailure)
	}
	reg, m := newTestMetrics(t)
	m.ObservePhase(rep, st, time.Now())
	compare(t, reg, map[string]string{
		"patchagent_phase_last_failure_timestamp_seconds": fmt.Sprintf("patchagent_phase_last_failure_timestamp_seconds{phase=\"exit\"} %s\npatchagent_phase_last_failure_timestamp_seconds{phase=\"pre\"} 0\n",
			strconv.FormatFloat(timestamp(failed.LastFailure), 'g', -1, 64)),
		"patchagent_phase_last_result": `
patchagent_phase_last_result{phase="exit",result="failed"} 0
patchagent_phase_last_result{phase="exit",result="forced"} 0
patchagent_phase_last_result{phase="exit",result="ok"} 1
patchagent_phase_last_result{phase="pre",result="failed"} 0
patchagent_phase_last_result{phase="pre",result="forced"} 0
patchagent_phase_last_result{phase="pre",result="ok"} 1
`})
}
