package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// FleetResults is a fleet bench: every rollout, for the report and
// fleet.json.
type FleetResults struct {
	Started time.Time  `json:"started"`
	Nodes   int        `json:"nodes"`
	N       int        `json:"rollouts_per_mode_and_scenario"`
	Load    string     `json:"load"`
	LB      string     `json:"lb"`
	Runs    []FleetRun `json:"runs"`
}

// fleetMain runs the fleet bench: nodes sandbox nodes behind a real
// HAProxy, n rollouts per mode x scenario, into outDir (fleet.md,
// fleet.json, one capacity SVG per rollout).
func fleetMain(ctx context.Context, nodes, n int, outDir, prefix, binary string, modes, scenarios, reuses []string) error {
	if nodes < 2 || nodes > 8 {
		return fmt.Errorf("-fleet %d: want 2 to 8 nodes", nodes)
	}
	if err := errors.Join(known("mode", modes, allModes), known("fleet scenario", scenarios, fleetScenarios), known("http-reuse", reuses, reuseModes)); err != nil {
		return err
	}
	if _, err := os.Stat("/usr/sbin/haproxy"); err != nil {
		return fmt.Errorf("the fleet bench needs Debian's haproxy (make setup installs it): %w", err)
	}
	work, logDir, err := workDirs(outDir, "pa-fl-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	f, err := newFleet(ctx, prefix, nodes, binary, work, logDir)
	if err != nil {
		return err
	}
	defer func() {
		if err := f.teardown(); err != nil {
			status("teardown: %v", err)
		}
	}()
	res := FleetResults{Started: time.Now(), Nodes: nodes, N: n,
		Load: "from the LB netns through HAProxy's frontend, open-loop (each request on its own, whatever the others do): GET / every 20 ms (50/s) and GET /slow?ms=800 every 100 ms (10/s), 10 s timeout per request",
		LB:   "HAProxy (Debian 12's package) in its own netns, roundrobin, checks every 2 s, fall 2, rise 2, retries 0, http-reuse never (a new connection to the node per request) and always (pooled connections)"}
	for _, sc := range scenarios {
		for _, reuse := range reuses {
			for _, m := range modes {
				for i := range n {
					if err := ctx.Err(); err != nil {
						return err
					}
					if err := f.reset(ctx); err != nil {
						return fmt.Errorf("resetting the fleet before %s/%s/reuse %s #%d: %w", m, sc, reuse, i+1, err)
					}
					status("fleet %s / %s / http-reuse %s #%d", m, sc, reuse, i+1)
					r, err := f.rollout(ctx, m, sc, reuse, i+1)
					if err != nil {
						return fmt.Errorf("fleet %s/%s/reuse %s #%d: %w", m, sc, reuse, i+1, err)
					}
					status("  errors %d (short %d, long %d), min in rotation %d/%d, rollout %.1fs, failed cycles %q", r.Errors(), r.ShortFailed, r.LongFailed, r.MinInRotation, nodes, r.Rollout, r.Failed)
					svg := filepath.Join(outDir, rolloutName(r)+".svg")
					title := fmt.Sprintf("%d nodes behind HAProxy (http-reuse %s), %s, %s (rollout %d): %d client errors", nodes, reuse, m, sc, i+1, r.Errors())
					if err := sandbox.WriteCapacitySVG(svg, title, r.capacity); err != nil {
						return err
					}
					res.Runs = append(res.Runs, r)
				}
			}
		}
	}
	return writeResults(outDir, "fleet", renderFleetMarkdown(res), res)
}

// renderFleetMarkdown is the report: one row per mode x scenario.
func renderFleetMarkdown(res FleetResults) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# patchagent fleet bench (%s)\n\n", res.Started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "%d sandbox nodes behind %s; load %s. The nodes are patched one at a time as SSM's rate control does (concurrency 1): each node's pre, a %s OS patch, post, the reboot if any, exit; the next node only after exit returned. SSM with an error threshold of 0 stops at the first failed cycle; the bench goes on (as MaxErrors 100%% would), so that every mode is measured on every node, and counts the failed cycles. %d rollout(s) per mode and scenario.\n\n",
		res.Nodes, res.LB, res.Load, patchTime, res.N)
	b.WriteString("Modes: `tutorial-fixed` is the tutorial's scripts (its unblock line given the port it lacks); `block-only` is patchagent with HAProxy checking the app; `readiness` points HAProxy's check at patchagent's readiness endpoint (`lb.health_listen`); `haproxy-api` has patchagent drive HAProxy's runtime API (`lb.haproxy`).\n\n")
	b.WriteString("| scenario | http-reuse | mode | rollouts | client errors per rollout | min nodes in rotation | out of rotation per node, s (median / max) | node cycle, s (median) | rollout, s (median) | failed cycles |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|---|---|\n")
	type key struct{ mode, scenario, reuse string }
	var order []key
	by := map[key][]FleetRun{}
	for _, r := range res.Runs {
		k := key{r.Mode, r.Scenario, r.Reuse}
		if _, ok := by[k]; !ok {
			order = append(order, k)
		}
		by[k] = append(by[k], r)
	}
	for _, k := range order {
		runs := by[k]
		var errs []string
		var out, cycle, rollout []float64
		minIn, failed := res.Nodes, 0
		for _, r := range runs {
			errs = append(errs, fmt.Sprintf("%d", r.Errors()))
			minIn = min(minIn, r.MinInRotation)
			rollout = append(rollout, r.Rollout)
			failed += len(r.Failed)
			for _, nd := range r.Nodes {
				out = append(out, nd.OutOfRotation)
				cycle = append(cycle, nd.Cycle)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %d | %s | %d of %d | %s / %s | %s | %s | %d |\n", k.scenario, k.reuse, k.mode, len(runs), strings.Join(errs, ", "), minIn, res.Nodes,
			fmtSec(median(out)), fmtSec(slices.Max(append(out, 0))), fmtSec(median(cycle)), fmtSec(median(rollout)), failed)
	}
	b.WriteString("\nClient errors are requests HAProxy answered with anything but 200 (its 503 when the node it picked refused or reset the connection), short and long together. Out of rotation is how long HAProxy's stats (read every 100 ms) had the node not UP; node cycle is its pre's start to its exit's end; rollout is the first pre's start to the last exit's end. Each rollout's capacity timeline is fleet_<mode>_<scenario>_reuse-<http-reuse>_<n>.svg; logs/ holds every phase's output and HAProxy's log.\n")
	for _, r := range res.Runs {
		for _, f := range r.Failed {
			fmt.Fprintf(&b, "\n- %s/%s/http-reuse %s #%d failed cycle: %s", r.Mode, r.Scenario, r.Reuse, r.Iter, f)
		}
	}
	b.WriteString("\n")
	return b.String()
}
