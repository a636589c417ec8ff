package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// span is a stretch of wall-clock time.
type span struct{ Start, End time.Time }

func (s span) dur() time.Duration { return s.End.Sub(s.Start) }

// phaseRun is one hook command: when the CLI ran and the report it printed.
type phaseRun struct {
	span
	Rep *agent.Report
}

// stepEnd is when step ended: the CLI's start plus the durations of the
// report's steps up to and including step.
func (p phaseRun) stepEnd(step string) (time.Time, bool) {
	if p.Rep == nil {
		return time.Time{}, false
	}
	_, end, ok := p.Rep.StepSpan(step)
	return p.Start.Add(end), ok
}

// detail is the detail of a step of the report, or def if it has none.
func (p phaseRun) detail(name, def string) string {
	if p.Rep != nil {
		for _, s := range p.Rep.Steps {
			if s.Name == name && s.Detail != "" {
				return s.Detail
			}
		}
	}
	return def
}

// step is the duration of a step of the report (0 if absent).
func (p phaseRun) step(name string) time.Duration {
	if p.Rep == nil {
		return 0
	}
	var d time.Duration
	for _, s := range p.Rep.Steps {
		if s.Name == name {
			d += s.Dur
		}
	}
	return d
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// part is one share of the time out of service.
type part struct {
	Name string
	Dur  time.Duration
	Note string
}

// outage is the time out of service, from the block in pre to the unblock
// in exit, and what filled it.
type outage struct {
	Block, Unblock time.Time
	Total          time.Duration
	Parts          []part
	Other          time.Duration // the rest: checks, re-block, unblock, CLI round trips
}

// computeOutage breaks the time between pre's block and exit's unblock down
// into drain and stop (pre's steps), the patch, post and the reboot (wall
// clock), and start and health (exit's steps).
func computeOutage(pre phaseRun, patch, post, reboot span, exit phaseRun) (outage, error) {
	var o outage
	var ok bool
	if o.Block, ok = pre.stepEnd("block"); !ok {
		return o, errors.New("pre's report has no block step")
	}
	if o.Unblock, ok = exit.stepEnd("unblock"); !ok {
		return o, errors.New("exit's report has no unblock step")
	}
	o.Total = o.Unblock.Sub(o.Block)
	o.Parts = []part{
		{"drain", pre.step("drain"), pre.detail("drain", "until no connection was busy")},
		{"stop", pre.step("stop"), pre.detail("stop", "pm2 stop")},
		{"patch", patch.dur(), "simulated OS update (sleep)"},
		{"post", post.dur(), "post.npm.enabled false: the sample app has no dependencies, no registry"},
		{"reboot", reboot.dur(), "daemon stopped, pm2 killed, firewall flushed, new daemon re-blocks at boot, pm2 resurrect (the app back online behind the block)"},
		{"start", exit.step("start"), exit.detail("start", "pm2 start")},
		{"health", exit.step("health"), exit.detail("health", "health check over loopback")},
	}
	o.Other = o.Total
	for _, p := range o.Parts {
		o.Other -= p.Dur
	}
	return o, nil
}

// longResult is one long request in flight at the block.
type longResult struct {
	Path string
	Code int
	Err  error
	Took time.Duration
}

// demoResult is everything the report shows.
type demoResult struct {
	Origin          time.Time // the load's start: offset 0 of the timeline
	Pre, Post, Exit phaseRun
	Patch, Reboot   span
	Reblocked       bool // the new daemon's boot reconciliation put the block back
	Stats           sandbox.Stats
	Long            []longResult
	Workers         int
	Interval        time.Duration
	SVG             string
}

// bands are the timeline's labelled spans.
func (r demoResult) bands() []sandbox.Band {
	b := func(name string, s span) sandbox.Band {
		return sandbox.Band{Name: name, Start: s.Start.Sub(r.Origin), End: s.End.Sub(r.Origin)}
	}
	return []sandbox.Band{b("pre", r.Pre.span), b("patch", r.Patch), b("post", r.Post.span), b("reboot", r.Reboot), b("exit", r.Exit.span)}
}

// longCounts returns how many long requests completed with 200 and failed.
func longCounts(ls []longResult) (ok, failed int) {
	for _, l := range ls {
		if l.Err == nil && l.Code == 200 {
			ok++
		} else {
			failed++
		}
	}
	return ok, failed
}

// writeReport prints the report and returns an error if a request was
// dropped.
func writeReport(say func(string, ...any), r demoResult) error {
	o, err := computeOutage(r.Pre, r.Patch, r.Post.span, r.Reboot, r.Exit)
	if err != nil {
		return err
	}
	at := func(t time.Time) string { return fmt.Sprintf("%.2fs", t.Sub(r.Origin).Seconds()) }
	say("== report")
	say("out of service: %.2fs (the block in pre at %s to the unblock in exit at %s, on the load's clock)", o.Total.Seconds(), at(o.Block), at(o.Unblock))
	for _, p := range o.Parts {
		say("   %-7s %6.2fs  %s", p.Name, p.Dur.Seconds(), p.Note)
	}
	say("   %-7s %6.2fs  checks, re-block, unblock, CLI round trips through the daemon", "other", o.Other.Seconds())
	if r.Reblocked {
		say("   at the simulated boot the new daemon re-applied the block before READY=1, before pm2 resurrected the app")
	}
	s := r.Stats
	say("requests: %d clients, a new connection per request every %s, over %.1fs:", r.Workers, r.Interval, s.Elapsed.Seconds())
	say("   %6d served (2xx)", s.OK)
	say("   %6d refused at once (TCP reset from the block, or nothing listening while the node rebooted), as intended", s.Refused)
	say("   %6d failed (dropped: reset mid-request, timeout, non-2xx)%s", s.Failed, lastErr(s))
	ok, failed := longCounts(r.Long)
	say("in-flight long requests at the block: %d completed, %d failed", ok, failed)
	for _, l := range r.Long {
		res := fmt.Sprintf("status %d", l.Code)
		if l.Err != nil {
			res = "error: " + l.Err.Error()
		}
		say("   GET %-15s %s after %.2fs", l.Path, res, l.Took.Seconds())
	}
	say("phase timings (each phase's verdict, through the daemon):")
	for _, p := range []phaseRun{r.Pre, r.Post, r.Exit} {
		say("   %s", p.Rep.Verdict())
		for _, st := range p.Rep.Steps {
			say("      %-6s %-7s %6.2fs  %s", st.Result, st.Name, st.Dur.Seconds(), st.Detail)
		}
	}
	say("   simulated patch %.2fs, simulated reboot %.2fs", r.Patch.dur().Seconds(), r.Reboot.dur().Seconds())
	say("timeline (100 ms per mark, | = 1 s; . ok, r refused, X dropped):")
	say("   %s", s.TimelineString())
	if r.SVG != "" {
		abs, _ := filepath.Abs(r.SVG)
		names := make([]string, 0, 5)
		for _, b := range r.bands() {
			names = append(names, b.Name)
		}
		say("timeline SVG: %s (bands: %s)", abs, strings.Join(names, ", "))
	}
	var problems []string
	if s.Failed > 0 {
		problems = append(problems, fmt.Sprintf("%d request(s) dropped", s.Failed))
	}
	if failed > 0 {
		problems = append(problems, fmt.Sprintf("%d in-flight long request(s) failed", failed))
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, ", "))
	}
	say("no request dropped.")
	return nil
}

func lastErr(s sandbox.Stats) string {
	if s.LastError == "" {
		return ""
	}
	return fmt.Sprintf("; last error: %s", s.LastError)
}
