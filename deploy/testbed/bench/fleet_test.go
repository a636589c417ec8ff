package main

import (
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

func TestCapacityFrom(t *testing.T) {
	s := time.Second
	at := func(d time.Duration, n0, n1 string) sample {
		return sample{at: d, status: map[string]string{"n0": n0, "n1": n1}}
	}
	samples := []sample{
		at(0, "UP", "UP"),
		at(1*s, "UP 1/2", "UP"), // a check failed: still in rotation
		at(2*s, "DRAIN", "UP"),
		at(3*s, "DOWN", "UP"),
		at(4*s, "DOWN 1/2", "UP"), // coming up: not yet
		at(5*s, "UP", "UP"),
		at(6*s, "UP", "MAINT"),
		{at: 7 * s, status: map[string]string{"n0": "UP"}}, // n1 absent: out
	}
	steps, out, minIn := capacityFrom(samples, []string{"n0", "n1"})
	step := func(at time.Duration, n int) sandbox.Step { return sandbox.Step{At: at, InRotation: n} }
	wantSteps := []sandbox.Step{step(0, 2), step(2*s, 1), step(5*s, 2), step(6*s, 1)}
	if len(steps) != len(wantSteps) {
		t.Fatalf("steps %v, want %v", steps, wantSteps)
	}
	for i := range steps {
		if steps[i] != wantSteps[i] {
			t.Fatalf("steps %v, want %v", steps, wantSteps)
		}
	}
	if minIn != 1 {
		t.Fatalf("min in rotation %d", minIn)
	}
	if len(out[0]) != 1 || out[0][0].Start != 2*s || out[0][0].End != 5*s || spanSum(out[0]) != 3*s {
		t.Fatalf("n0 out %v", out[0])
	}
	// Still out at the last sample: the span ends there.
	if len(out[1]) != 1 || out[1][0].Start != 6*s || out[1][0].End != 7*s {
		t.Fatalf("n1 out %v", out[1])
	}
	if steps, _, minIn := capacityFrom(nil, []string{"n0"}); steps != nil || minIn != 0 {
		t.Fatalf("no samples: %v %d", steps, minIn)
	}
}

func TestRenderFleetMarkdown(t *testing.T) {
	runs := []FleetRun{
		{Mode: mBlock, Scenario: sReboot, Reuse: "never", Iter: 1, ShortFailed: 9, LongFailed: 2, MinInRotation: 3, Rollout: 80,
			Nodes: []FleetNode{{Name: "n0", Cycle: 20, OutOfRotation: 6}, {Name: "n1", Cycle: 22, OutOfRotation: 8}}},
		{Mode: mReadiness, Scenario: sReboot, Reuse: "never", Iter: 1, MinInRotation: 3, Rollout: 90, Failed: []string{"n1: exit exited 1"},
			Nodes: []FleetNode{{Name: "n0", Cycle: 25, OutOfRotation: 12}}},
	}
	md := renderFleetMarkdown(FleetResults{Nodes: 4, N: 1, Runs: runs})
	for _, want := range []string{
		"| reboot | never | block-only | 1 | 11 | 3 of 4 | 7.0 / 8.0 | 21.0 | 80.0 | 0 |",
		"| reboot | never | readiness | 1 | 0 | 3 of 4 | 12.0 / 12.0 | 25.0 | 90.0 | 1 |",
		"- readiness/reboot/http-reuse never #1 failed cycle: n1: exit exited 1",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("no %q in\n%s", want, md)
		}
	}
}
