package agent

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestReportJSONCarriesDurationsInSeconds checks the JSON form of a
// report's durations (what SSM's output, --output json and the daemon's
// answers carry) and that decoding restores them.
func TestReportJSONCarriesDurationsInSeconds(t *testing.T) {
	rep := &Report{Phase: "pre", Result: ResultOK, Duration: 1500 * time.Millisecond,
		Steps: []StepReport{{Name: "drain", Result: ResultOK, Dur: 250 * time.Millisecond, Detail: "3 polls"}},
		Drain: &DrainResult{Seen: 2, Waited: 2250 * time.Millisecond, Polls: 3}}
	b := rep.JSON()
	var raw struct {
		Seconds float64 `json:"duration_seconds"`
		Steps   []struct {
			Seconds float64 `json:"duration_seconds"`
		} `json:"steps"`
		Drain struct {
			Seconds float64 `json:"duration_seconds"`
		} `json:"drain"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Seconds != 1.5 || len(raw.Steps) != 1 || raw.Steps[0].Seconds != 0.25 || raw.Drain.Seconds != 2.25 {
		t.Fatalf("JSON %s", b)
	}
	var back Report
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(rep, &back); d != "" {
		t.Fatalf("decoded report differs (-sent +decoded):\n%s", d)
	}
}

func TestReportStepSpan(t *testing.T) {
	r := &Report{Steps: []StepReport{{Name: "check", Dur: 100 * time.Millisecond}, {Name: "start", Dur: 2 * time.Second},
		{Name: "health", Dur: 500 * time.Millisecond}, {Name: "unblock", Dur: 50 * time.Millisecond}}}
	for _, tt := range []struct {
		name       string
		start, end time.Duration
	}{
		{"check", 0, 100 * time.Millisecond},
		{"health", 2100 * time.Millisecond, 2600 * time.Millisecond},
		{"unblock", 2600 * time.Millisecond, 2650 * time.Millisecond},
	} {
		if start, end, ok := r.StepSpan(tt.name); !ok || start != tt.start || end != tt.end {
			t.Errorf("StepSpan(%s) = %v, %v, %v; want %v, %v", tt.name, start, end, ok, tt.start, tt.end)
		}
	}
	if _, _, ok := r.StepSpan("block"); ok {
		t.Error("found a missing step")
	}
}

// TestReportTextEscapesWhatTheAppUserWrote: the text report quotes package
// names and versions from the app user's lockfile and npm's stderr: an
// escape sequence or a newline there is printed as text, so it can neither
// act on the operator's terminal nor forge a verdict line of its own.
func TestReportTextEscapesWhatTheAppUserWrote(t *testing.T) {
	r := &Report{Phase: "post", Result: ResultFailed, Error: "npm update: exited with code 1: \x1b[2Jboom\rpatchagent post: ok\n  at line 2",
		Changes: []string{"evil\x1b]0;owned\x07 1.0.0 -> 1.0.1", "+ dep\npatchagent post: ok 2.0.0", "bad\xffutf8 1 -> 2"}}
	text := r.Text()
	if strings.ContainsAny(text, "\x1b\x07\r") || strings.Contains(text, "\xff") {
		t.Fatalf("control characters or invalid UTF-8 reach the text report:\n%q", text)
	}
	for i, line := range strings.Split(strings.TrimSuffix(text, "\n"), "\n") {
		if i > 0 && strings.HasPrefix(line, "patchagent ") {
			t.Fatalf("line %d forges a verdict: %q\n%s", i, line, text)
		}
	}
	for _, want := range []string{`\x1b[2Jboom\rpatchagent post: ok`, `evil\x1b]0;owned\a 1.0.0 -> 1.0.1`, `+ dep\npatchagent post: ok 2.0.0`, `bad\ufffdutf8`, "\n  at line 2"} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in:\n%s", want, text)
		}
	}
}
