package main

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Summary is the medians of one variant x scenario.
type Summary struct {
	Variant  string `json:"variant"`
	Scenario string `json:"scenario"`
	Runs     int    `json:"runs"`
	Errors   int    `json:"runs_with_errors"`
	// Codes lists each distinct "pre/post/exit" exit-code triple seen.
	Codes        []string `json:"exit_codes"`
	Back         int      `json:"back_in_service_runs"`
	OutOfService float64  `json:"out_of_service_s"`
	NeverBack    int      `json:"never_back_runs"`
	DeadTime     float64  `json:"dead_time_s"`
	LoadFailed   float64  `json:"load_failed"`
	LoadRefused  float64  `json:"load_refused"`
	LongOK       float64  `json:"long_ok"`
	LongFailed   float64  `json:"long_failed"`
	Early        float64  `json:"accepted_early"`
	// MedianRun is the index (in the runs given) of the run with the median
	// out-of-service time: the one drawn.
	MedianRun int `json:"-"`
}

// summarize computes the medians of runs (all one variant x scenario).
func summarize(runs []Run) Summary {
	if len(runs) == 0 {
		return Summary{}
	}
	s := Summary{Variant: runs[0].Variant, Scenario: runs[0].Scenario, Runs: len(runs)}
	var oos, dead, failed, refused, lok, lfail, early []float64
	for _, r := range runs {
		c := fmt.Sprintf("%d/%d/%d", r.PreCode, r.PostCode, r.ExitCode)
		if !slices.Contains(s.Codes, c) {
			s.Codes = append(s.Codes, c)
		}
		if r.Error != "" {
			s.Errors++
		}
		if r.BackInService {
			s.Back++
		}
		if r.NeverBack {
			s.NeverBack++
		}
		oos = append(oos, r.OutOfService)
		dead = append(dead, r.DeadTime)
		failed = append(failed, float64(r.LoadFailed))
		refused = append(refused, float64(r.LoadRefused))
		lok = append(lok, float64(r.LongOK))
		lfail = append(lfail, float64(r.LongFailed))
		early = append(early, float64(r.Early()))
	}
	s.OutOfService, s.DeadTime = median(oos), median(dead)
	s.LoadFailed, s.LoadRefused = median(failed), median(refused)
	s.LongOK, s.LongFailed, s.Early = median(lok), median(lfail), median(early)
	idx := make([]int, len(runs))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int {
		switch {
		case runs[a].OutOfService < runs[b].OutOfService:
			return -1
		case runs[a].OutOfService > runs[b].OutOfService:
			return 1
		}
		return 0
	})
	s.MedianRun = idx[(len(idx)-1)/2]
	return s
}

// AgentCost is what the agent itself costs, measured in the same run.
type AgentCost struct {
	IdleRSSKiB       int64    `json:"daemon_idle_rss_kib"`
	IdleCPUSeconds   float64  `json:"daemon_idle_cpu_s"`
	IdleWindow       float64  `json:"daemon_idle_window_s"`
	BinaryBytes      int64    `json:"binary_bytes"`
	ReconcileMedian  float64  `json:"reconcile_round_trip_median_s"`
	ReconcileSamples int      `json:"reconcile_round_trip_samples"`
	ConnsLines       []string `json:"conns_benchmark_lines"`
	ConnsError       string   `json:"conns_benchmark_error,omitempty"`
}

// Results is everything one bench invocation produced.
type Results struct {
	Started   time.Time  `json:"started"`
	N         int        `json:"n"`
	AppStart  float64    `json:"app_start_to_healthy_s"`
	NPMMode   string     `json:"npm_mode"`
	Load      string     `json:"load"`
	Summaries []Summary  `json:"summaries"`
	Cost      *AgentCost `json:"agent_cost,omitempty"` // nil: not measured (-skip-cost)
	Runs      []Run      `json:"runs"`
}

// formulas documents every figure.
const formulas = `## How the figures are computed

- **exit codes**: pre/post/exit of each run (distinct triples listed).
- **back**: runs where, after exit returned, a new outside connection got 200 within 5 s.
- **out of service** = t_back - t_out. t_out: the first outside probe (a new connection + GET /health-check from the client netns every 20 ms, 1 s timeout) at or after the start of pre that was not answered 200 (refused, dropped, reset, non-200). t_back: the first probe answered 200 at or after the start of exit from which every later probe was answered 200. If there is none ("never back", marked ≥), t_back is the end of the recording (exit's return + the 5 s back-in-service check + 0.5 s).
- **dead time** = out of service - (patch + npm + reboot + app start + in-flight), where patch is the simulated OS patch (a fixed 2 s sleep), npm is post's own npm time (the scripts: the whole post script; patchagent: its "update" step), reboot is the simulated reboot (pm2 kill, rules flushed, pm2 resurrect; not counting the patchagent daemon's own start), app start is the app's own pm2 start -> first 200 from outside, unblocked (measured once per run set), and in-flight is the longest in-flight long request's remaining time at the block (its start + its duration - the block). Negative means the hooks overlapped those parts.
- **failed**: load requests dropped (timeouts, resets, non-2xx), not counting refused ones; **refused**: refused by the block or a closed port.
- **long ok/failed**: the 3 s, 3 s and 8 s /slow requests started 200 ms before pre (scenario reboot+long-requests only).
- **accepted early**: outside requests accepted after post (so after the reboot, when there is one) and before the health check passed: probe attempts answered (any status) plus load requests answered 200 (counted by 100 ms completion bucket, only buckets wholly in that window). Health check passed: patchagent, the start of exit's unblock step; the scripts, when their curl ran (if it never ran: exit's end).
- Medians over the runs of each variant x scenario.
`

// fmtSec formats seconds with one decimal.
func fmtSec(s float64) string { return fmt.Sprintf("%.1f", s) }

// fmtNum formats a median count (a half when the run count is even).
func fmtNum(x float64) string {
	if x == float64(int64(x)) {
		return fmt.Sprintf("%d", int64(x))
	}
	return fmt.Sprintf("%.1f", x)
}

// renderMarkdown renders the results as results.md.
func renderMarkdown(res Results) string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	p("# patchagent vs the AWS tutorial scripts\n\n")
	p("%d run(s) per variant x scenario (medians), %s. Load: %s. App start-to-healthy (pm2 start -> first outside 200): %.2f s. npm: %s.\n\n",
		res.N, res.Started.UTC().Format("2006-01-02 15:04 UTC"), res.Load, res.AppStart, res.NPMMode)
	var scenarios []string
	for _, s := range res.Summaries {
		if !slices.Contains(scenarios, s.Scenario) {
			scenarios = append(scenarios, s.Scenario)
		}
	}
	for _, sc := range scenarios {
		p("## Scenario: %s\n\n", sc)
		p("| variant | exit codes pre/post/exit | back in service | out of service (s) | dead time (s) | failed requests | refused | long requests ok/failed | accepted before health check |\n")
		p("|---|---|---|---|---|---|---|---|---|\n")
		for _, s := range res.Summaries {
			if s.Scenario != sc {
				continue
			}
			back := "no"
			if s.Back*2 > s.Runs {
				back = "yes"
			}
			back += fmt.Sprintf(" (%d/%d)", s.Back, s.Runs)
			oos, dead := fmtSec(s.OutOfService), fmtSec(s.DeadTime)
			if s.NeverBack*2 > s.Runs {
				oos, dead = "≥ "+oos+" (never back)", "≥ "+dead
			}
			long := "—"
			if sc == sLong {
				long = fmtNum(s.LongOK) + "/" + fmtNum(s.LongFailed)
			}
			codes := strings.Join(s.Codes, ", ")
			if s.Errors > 0 {
				codes += fmt.Sprintf(" (%d run(s) with errors)", s.Errors)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Variant, codes, back, oos, dead,
				fmtNum(s.LoadFailed), fmtNum(s.LoadRefused), long, fmtNum(s.Early))
		}
		p("\n")
	}
	p("## Agent cost\n\n")
	if res.Cost == nil {
		p("Not measured (-skip-cost).\n\n%s", formulas)
		return b.String()
	}
	c := *res.Cost
	const procTick = 0.01 // s: USER_HZ 100
	p("| figure | value |\n|---|---|\n")
	p("| daemon idle RSS | %.1f MiB |\n", float64(c.IdleRSSKiB)/1024)
	cpu := 0.0
	if c.IdleWindow > 0 {
		cpu = 100 * c.IdleCPUSeconds / c.IdleWindow
	}
	if c.IdleCPUSeconds < procTick && c.IdleWindow > 0 {
		// /proc counts CPU time in clock ticks: less than one shows as 0.
		p("| daemon idle CPU over %.0f s | < %.2f s (under one %.0f ms clock tick; < %.3f %% of one core) |\n",
			c.IdleWindow, procTick, procTick*1000, 100*procTick/c.IdleWindow)
	} else {
		p("| daemon idle CPU over %.0f s | %.2f s (%.3f %% of one core) |\n", c.IdleWindow, c.IdleCPUSeconds, cpu)
	}
	p("| binary size (stripped, static) | %.1f MiB (%d bytes) |\n", float64(c.BinaryBytes)/(1<<20), c.BinaryBytes)
	p("| CLI round trip of a nothing-to-do `patchagent reconcile` through the daemon | %.0f ms (median of %d) |\n", c.ReconcileMedian*1000, c.ReconcileSamples)
	p("\nConnection counting (`go test -tags integration -run '^$' -bench BenchmarkConns -benchtime 10x ./firewall/`):\n\n```\n")
	for _, l := range c.ConnsLines {
		p("%s\n", l)
	}
	if c.ConnsError != "" {
		p("error: %s\n", c.ConnsError)
	}
	p("```\n\n")
	p("%s", formulas)
	return b.String()
}

// connsLines keeps the benchmark output lines that matter: the setup log
// and each sub-benchmark's result (sock_diag, ss, procfs).
func connsLines(out string) []string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "BenchmarkConns/") || strings.Contains(t, "setup:") {
			keep = append(keep, t)
		}
	}
	return keep
}
