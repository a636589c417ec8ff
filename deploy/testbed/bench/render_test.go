package main

import (
	"strings"
	"testing"
)

func TestSummarize(t *testing.T) {
	runs := []Run{
		{Variant: vTutorial, Scenario: sNoReboot, Iter: 1, PreCode: 0, PostCode: 0, ExitCode: 2, OutOfService: 30, NeverBack: true, DeadTime: 25, LoadFailed: 40, Error: "x"},
		{Variant: vTutorial, Scenario: sNoReboot, Iter: 2, PreCode: 0, PostCode: 0, ExitCode: 2, OutOfService: 28, NeverBack: true, DeadTime: 23, LoadFailed: 44},
		{Variant: vTutorial, Scenario: sNoReboot, Iter: 3, PreCode: 0, PostCode: 1, ExitCode: 2, OutOfService: 31, NeverBack: true, DeadTime: 26, LoadFailed: 42, BackInService: true, EarlyProbe: 2, EarlyLoad: 5},
	}
	s := summarize(runs)
	if s.Runs != 3 || s.Errors != 1 || s.Back != 1 || s.NeverBack != 3 || s.OutOfService != 30 || s.DeadTime != 25 || s.LoadFailed != 42 || s.Early != 0 {
		t.Fatalf("summary %+v", s)
	}
	if strings.Join(s.Codes, " ") != "0/0/2 0/1/2" {
		t.Fatalf("codes %v", s.Codes)
	}
	if runs[s.MedianRun].Iter != 1 {
		t.Fatalf("median run %d, want iteration 1 (30 s)", runs[s.MedianRun].Iter)
	}
	if got := summarize([]Run{{OutOfService: 2}, {OutOfService: 1}}); got.MedianRun != 1 || got.OutOfService != 1.5 {
		t.Fatalf("even count: %+v", got)
	}
}

func TestRenderMarkdown(t *testing.T) {
	res := Results{N: 1, AppStart: 0.25, NPMMode: "offline", Load: "4 workers",
		Summaries: []Summary{
			{Variant: vTutorial, Scenario: sNoReboot, Runs: 1, Codes: []string{"0/0/2"}, NeverBack: 1, OutOfService: 30.04, DeadTime: 25.5, LoadFailed: 40},
			{Variant: vPatchagent, Scenario: sNoReboot, Runs: 1, Codes: []string{"0/0/0"}, Back: 1, OutOfService: 4.26, DeadTime: 0.9, LoadRefused: 700},
			{Variant: vPatchagent, Scenario: sLong, Runs: 2, Codes: []string{"0/0/0"}, Back: 2, OutOfService: 11, DeadTime: 1, LongOK: 3, Early: 0.5},
		},
		Cost: &AgentCost{IdleRSSKiB: 10240, IdleCPUSeconds: 0.03, IdleWindow: 30, BinaryBytes: 7 << 20, ReconcileMedian: 0.012, ReconcileSamples: 10,
			ConnsLines: []string{"BenchmarkConns/SockDiag-8  10  1000 ns/op"}},
	}
	md := renderMarkdown(res)
	for _, want := range []string{
		"## Scenario: no-reboot\n",
		"| tutorial | 0/0/2 | no (0/1) | ≥ 30.0 (never back) | ≥ 25.5 | 40 | 0 | — | 0 |\n",
		"| patchagent | 0/0/0 | yes (1/1) | 4.3 | 0.9 | 0 | 700 | — | 0 |\n",
		"## Scenario: reboot+long-requests\n",
		"| patchagent | 0/0/0 | yes (2/2) | 11.0 | 1.0 | 0 | 0 | 3/0 | 0.5 |\n",
		"| daemon idle RSS | 10.0 MiB |\n",
		"| daemon idle CPU over 30 s | 0.03 s (0.100 % of one core) |\n",
		"| binary size (stripped, static) | 7.0 MiB (7340032 bytes) |\n",
		"through the daemon | 12 ms (median of 10) |\n",
		"BenchmarkConns/SockDiag-8  10  1000 ns/op\n",
		"**dead time** = out of service - (patch + npm + reboot + app start + in-flight)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Index(md, "no-reboot") > strings.Index(md, "reboot+long-requests") {
		t.Error("scenarios out of order")
	}
	// Less than one clock tick of CPU is not shown as zero.
	res.Cost.IdleCPUSeconds = 0
	if md := renderMarkdown(res); !strings.Contains(md, "| daemon idle CPU over 30 s | < 0.01 s (under one 10 ms clock tick; < 0.033 % of one core) |\n") {
		t.Errorf("markdown for no measurable CPU:\n%s", md)
	}
	// Skipped (-skip-cost): said so, no zeros shown as figures.
	res.Cost = nil
	if md := renderMarkdown(res); !strings.Contains(md, "## Agent cost\n\nNot measured (-skip-cost).") || strings.Contains(md, "daemon idle RSS") {
		t.Errorf("markdown without the cost:\n%s", md)
	}
}

func TestConnsLines(t *testing.T) {
	out := "goos: linux\n    conns_bench_test.go:292: setup: 8 helpers, 80000 ESTABLISHED sockets\nBenchmarkConns/SockDiag-8   \t      10\t  1234 ns/op\t 40000 conns\nBenchmarkConns/SS-8 10 99 ns/op\nPASS\nok  x 1s\n"
	got := connsLines(out)
	if len(got) != 3 || !strings.HasPrefix(got[0], "conns_bench_test.go:292: setup:") || !strings.HasPrefix(got[2], "BenchmarkConns/SS-8") {
		t.Fatalf("lines %q", got)
	}
}
