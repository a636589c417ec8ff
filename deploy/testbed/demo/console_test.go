package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/agent"
)

func TestFormatProgress(t *testing.T) {
	p := progress{Elapsed: 2345 * time.Millisecond, Stage: "pre", Daemon: "running pre (step drain)",
		Drain: "drain: 3 connection(s), 1 busy, 2 idle >= 500ms, after 1.2s", OK: 10, Refused: 4, LongDone: 2, LongAll: 3}
	want := "[  2.3s] pre | daemon: running pre (step drain) | draining: 3 conn(s), 1 busy | ok 10 refused 4 failed 0 | long 2/3 done"
	if got := formatProgress(p, 200); got != want {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	// The cycle id is shortened, an unparsable drain line left out, no long
	// requests no long part.
	p = progress{Stage: "patch", Daemon: "cycle 20261126T004007Z-a0758610 open, blocked", Drain: "block: refusing"}
	if got := formatProgress(p, 200); got != "[  0.0s] patch | daemon: cycle open, blocked | ok 0 refused 0 failed 0" {
		t.Errorf("got %q", got)
	}
	if got := formatProgress(p, 20); len(got) != 20 || !strings.HasSuffix(got, "...") {
		t.Errorf("not cut to 20: %q", got)
	}
	if strings.ContainsAny(formatProgress(p, 200), "\r\n") {
		t.Error("line breaks in the progress line")
	}
}

// TestParseDrain: the demo reads the drain line the agent prints (one
// owner of the format: agent.DrainProgress), not a copy of it.
func TestParseDrain(t *testing.T) {
	line := agent.DrainProgress{Conns: 12, Busy: 3, Idle: 9, IdleFor: time.Second, After: 3 * time.Second}.String()
	if c, b, ok := agent.ParseDrainProgress(line); !ok || c != 12 || b != 3 {
		t.Errorf("%q: got %d %d %v", line, c, b, ok)
	}
	p := progress{Stage: "pre", Drain: line}
	if got := formatProgress(p, 200); !strings.Contains(got, "draining: 12 conn(s), 3 busy") {
		t.Errorf("the progress line does not show the drain: %q", got)
	}
	for _, l := range []string{"", "drain:", "stop: pm2 stop", "drain: x connection(s)"} {
		if _, _, ok := agent.ParseDrainProgress(l); ok {
			t.Errorf("parsed %q", l)
		}
	}
}

func TestConsole(t *testing.T) {
	var b bytes.Buffer
	c := &console{w: &b, tty: true}
	c.progress(progress{Stage: "pre"})
	c.say("hello %d", 1)
	c.endProgress()
	out := b.String()
	if !strings.HasPrefix(out, "\r\x1b[K[  0.0s] pre") || !strings.Contains(out, "\r\x1b[Khello 1\n[  0.0s] pre") || !strings.HasSuffix(out, "\r\x1b[K") {
		t.Errorf("tty output %q", out)
	}
	b.Reset()
	c = &console{w: &b}
	c.progress(progress{Stage: "pre", OK: 1})
	c.progress(progress{Stage: "pre", OK: 2}) // same stage and status: not printed again
	c.progress(progress{Stage: "exit"})
	c.say("x")
	if got := strings.Count(b.String(), "\n"); got != 3 || strings.Contains(b.String(), "\r") {
		t.Errorf("non-tty output %q", b.String())
	}
}
