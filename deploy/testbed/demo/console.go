package main

import (
	"fmt"
	"io"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/patchagent/patchagent/agent"
)

// progress is what the live line shows.
type progress struct {
	Elapsed             time.Duration // since the load started
	Stage               string        // what the demo is doing
	Daemon              string        // the daemon's last STATUS=, "" if none
	Drain               string        // the last drain progress line of pre, "" if none
	OK, Refused, Failed int
	LongDone, LongAll   int
}

var cycleID = regexp.MustCompile(`cycle \S+ open`)

// formatProgress renders p on one line of at most width characters.
func formatProgress(p progress, width int) string {
	parts := []string{fmt.Sprintf("[%5.1fs] %s", p.Elapsed.Seconds(), p.Stage)}
	if p.Daemon != "" {
		parts = append(parts, "daemon: "+cycleID.ReplaceAllString(p.Daemon, "cycle open"))
	}
	if c, busy, ok := agent.ParseDrainProgress(p.Drain); ok {
		parts = append(parts, fmt.Sprintf("draining: %d conn(s), %d busy", c, busy))
	}
	parts = append(parts, fmt.Sprintf("ok %d refused %d failed %d", p.OK, p.Refused, p.Failed))
	if p.LongAll > 0 {
		parts = append(parts, fmt.Sprintf("long %d/%d done", p.LongDone, p.LongAll))
	}
	s := strings.Join(parts, " | ")
	if width > 3 && len(s) > width {
		s = s[:width-3] + "..."
	}
	return s
}

// console writes report lines and, on a terminal, one live progress line
// redrawn in place with a carriage return. Elsewhere (a pipe, a log) the
// progress line is printed only when its stage or daemon status changes.
type console struct {
	mu      sync.Mutex
	w       io.Writer
	tty     bool
	shown   string // the progress line on screen (tty)
	lastKey string // stage+status last printed (not a tty)
}

func (c *console) say(format string, args ...any) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.shown != "" {
		fmt.Fprint(c.w, "\r\x1b[K")
	}
	fmt.Fprintf(c.w, format+"\n", args...)
	if c.tty && c.shown != "" {
		fmt.Fprint(c.w, c.shown)
	}
}

func (c *console) progress(p progress) {
	c.mu.Lock()
	defer c.mu.Unlock()
	line := formatProgress(p, 160)
	if c.tty {
		c.shown = line
		fmt.Fprint(c.w, "\r\x1b[K"+line)
		return
	}
	if key := p.Stage + "\x00" + p.Daemon; key != c.lastKey {
		c.lastKey = key
		fmt.Fprintln(c.w, "   ~ "+line)
	}
}

// endProgress removes the live line.
func (c *console) endProgress() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tty && c.shown != "" {
		fmt.Fprint(c.w, "\r\x1b[K")
	}
	c.shown = ""
}
