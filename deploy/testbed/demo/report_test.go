package main

import (
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/agent"
)

func rep(phase string, steps ...agent.StepReport) *agent.Report {
	return &agent.Report{Phase: phase, Result: agent.ResultOK, Steps: steps}
}

func st(name string, secs float64) agent.StepReport {
	return agent.StepReport{Name: name, Result: "ok", Dur: seconds(secs), Detail: name + " detail"}
}

func TestComputeOutage(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(seconds(s)) }
	pre := phaseRun{span{at(2), at(9)}, rep("pre", st("check", 0.25), st("block", 0.05), st("drain", 6), st("stop", 0.5))}
	patch := span{at(9.1), at(11.1)}
	post := span{at(11.2), at(11.3)}
	reboot := span{at(11.3), at(12.3)}
	exit := phaseRun{span{at(12.4), at(13.0)}, rep("exit", st("check", 0.02), st("start", 0.2), st("health", 0.25), st("unblock", 0.1))}

	o, err := computeOutage(pre, patch, post, reboot, exit)
	if err != nil {
		t.Fatal(err)
	}
	if want := at(2.3); !o.Block.Equal(want) {
		t.Errorf("block at %s, want %s", o.Block, want)
	}
	if want := at(12.97); !o.Unblock.Equal(want) {
		t.Errorf("unblock at %s, want %s", o.Unblock, want)
	}
	if want := seconds(10.67); (o.Total - want).Abs() > time.Microsecond {
		t.Errorf("total %s, want %s", o.Total, want)
	}
	want := map[string]time.Duration{"drain": 6 * time.Second, "stop": 500 * time.Millisecond, "patch": 2 * time.Second,
		"post": 100 * time.Millisecond, "reboot": time.Second, "start": 200 * time.Millisecond, "health": 250 * time.Millisecond}
	var names []string
	sum := o.Other
	for _, p := range o.Parts {
		names = append(names, p.Name)
		if (p.Dur - want[p.Name]).Abs() > time.Microsecond {
			t.Errorf("%s %s, want %s", p.Name, p.Dur, want[p.Name])
		}
		sum += p.Dur
	}
	if got := strings.Join(names, " "); got != "drain stop patch post reboot start health" {
		t.Errorf("parts %q", got)
	}
	if sum != o.Total {
		t.Errorf("parts and other add up to %s, total %s", sum, o.Total)
	}
	if (o.Other - seconds(0.62)).Abs() > time.Microsecond {
		t.Errorf("other %s, want 0.62s", o.Other)
	}
	if o.Parts[0].Note != "drain detail" || o.Parts[5].Note != "start detail" {
		t.Errorf("notes not from the steps' details: %+v", o.Parts)
	}
}

func TestComputeOutageNeedsBlockAndUnblock(t *testing.T) {
	ok := phaseRun{Rep: rep("pre", st("block", 1))}
	if _, err := computeOutage(phaseRun{Rep: rep("pre", st("check", 1))}, span{}, span{}, span{}, phaseRun{Rep: rep("exit", st("unblock", 1))}); err == nil {
		t.Error("no error without a block step")
	}
	if _, err := computeOutage(ok, span{}, span{}, span{}, phaseRun{Rep: rep("exit", st("health", 1))}); err == nil {
		t.Error("no error without an unblock step")
	}
	if _, err := computeOutage(ok, span{}, span{}, span{}, phaseRun{}); err == nil {
		t.Error("no error without an exit report")
	}
}

func TestBandsAndLongCounts(t *testing.T) {
	t0 := time.Now()
	r := demoResult{Origin: t0,
		Pre:    phaseRun{span: span{t0.Add(time.Second), t0.Add(3 * time.Second)}},
		Patch:  span{t0.Add(3 * time.Second), t0.Add(5 * time.Second)},
		Post:   phaseRun{span: span{t0.Add(5 * time.Second), t0.Add(6 * time.Second)}},
		Reboot: span{t0.Add(6 * time.Second), t0.Add(7 * time.Second)},
		Exit:   phaseRun{span: span{t0.Add(7 * time.Second), t0.Add(8 * time.Second)}},
	}
	b := r.bands()
	if len(b) != 5 || b[0].Name != "pre" || b[0].Start != time.Second || b[4].Name != "exit" || b[4].End != 8*time.Second {
		t.Errorf("bands %+v", b)
	}
	ok, failed := longCounts([]longResult{{Code: 200}, {Code: 502}, {Code: 0, Err: errTest{}}})
	if ok != 1 || failed != 2 {
		t.Errorf("long counts %d ok %d failed", ok, failed)
	}
}

type errTest struct{}

func (errTest) Error() string { return "reset" }
