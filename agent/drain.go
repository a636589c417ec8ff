package agent

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/patchagent/patchagent/firewall"
)

// DrainResult says how the drain ended.
type DrainResult struct {
	// Seen is the most non-loopback connections seen at once.
	Seen int `json:"seen"`
	// Remaining: non-loopback connections left at the end; Active: those of
	// them not idle for drain.idle yet; Busy: those carrying a request.
	Remaining int           `json:"remaining"`
	Active    int           `json:"active"`
	Busy      int           `json:"busy"`
	TimedOut  bool          `json:"timed_out"`
	Waited    time.Duration `json:"-"` // JSON: duration_seconds
	Polls     int           `json:"polls"`
}

// drain waits until no non-loopback connection to the ports is busy and
// every remaining one has been idle for drain.idle (drain.keepalive_idle for
// one that answered a request during the drain), but at least
// drain.min_wait after blockedAt, and at most drain.timeout. A time-out is
// not an error: the result says how many were still busy.
func (a *Agent) drain(ctx context.Context, blockedAt time.Time) (DrainResult, error) {
	c := a.cfg.Drain
	ports := ports16(a.cfg.Traffic.Ports)
	var r DrainResult
	var last firewall.Summary
	lastPrint := time.Time{}
	track := firewall.NewTracker()
	for {
		conns, err := a.d.Conns.Established(ctx, ports)
		if err != nil {
			return r, fmt.Errorf("reading connections to %v: %w", a.cfg.Traffic.Ports, err)
		}
		r.Polls++
		s := track.Summarize(conns, c.Idle.D(), c.KeepAliveIdle.D())
		r.Seen = max(r.Seen, s.Total)
		r.Remaining, r.Active, r.Busy = s.Total, s.Total-s.Idle, s.Busy
		now := a.d.Now()
		r.Waited = now.Sub(blockedAt)
		if s.Total != last.Total || s.Busy != last.Busy || s.Idle != last.Idle || now.Sub(lastPrint) >= time.Second {
			a.progress("%s", DrainProgress{Conns: s.Total, Busy: s.Busy, Idle: s.Idle, IdleFor: c.Idle.D(), After: r.Waited}.String())
			last, lastPrint = s, now
		}
		if s.Drained() && r.Waited >= c.MinWait.D() {
			a.log.Info("drained", zap.Int("seen", r.Seen), zap.Int("idle_left", s.Total),
				zap.Duration("took", r.Waited), zap.Int("polls", r.Polls))
			return r, nil
		}
		if r.Waited >= c.Timeout.D() {
			r.TimedOut = true
			a.log.Warn("drain timed out", zap.Int("active", r.Active), zap.Int("busy", s.Busy), zap.Int("remaining", s.Total),
				zap.Duration("timeout", c.Timeout.D()))
			return r, nil
		}
		// Poll every drain.interval, or sooner when a connection is due to
		// become idle enough before that.
		wait := c.Interval.D()
		if s.NextIdle > 0 {
			wait = min(wait, s.NextIdle+time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return r, fmt.Errorf("draining: %w", ctx.Err())
		case <-a.d.After(wait):
		}
	}
}

// DrainProgress is the drain's live progress line, which tools that watch
// a phase (the demo) read back with ParseDrainProgress.
type DrainProgress struct {
	Conns, Busy, Idle int
	IdleFor, After    time.Duration
}

const drainProgressFormat = "drain: %d connection(s), %d busy, %d idle >= %s, after %s"

func (p DrainProgress) String() string {
	return fmt.Sprintf(drainProgressFormat, p.Conns, p.Busy, p.Idle, Duration(p.IdleFor), p.After.Round(10*time.Millisecond))
}

// ParseDrainProgress reads the connection and busy counts back from a
// progress line; ok is false for any other line.
func ParseDrainProgress(line string) (conns, busy int, ok bool) {
	if _, err := fmt.Sscanf(line, "drain: %d connection(s), %d busy", &conns, &busy); err != nil {
		return 0, 0, false
	}
	return conns, busy, true
}
