package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/patchagent/patchagent/firewall"
)

// jumpClock is a clock whose waits return at once, moving its time on by
// the wait: a drain of minutes runs in microseconds, on a schedule the
// test can state exactly.
type jumpClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *jumpClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *jumpClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

// TestDrainSchedule: the drain polls every drain.interval on the agent's
// clock, stays open until drain.min_wait even when drained, and gives up
// at drain.timeout to the poll, whatever the wall clock does.
func TestDrainSchedule(t *testing.T) {
	busy, idle := conn(true, 0), conn(false, time.Hour)
	tests := []struct {
		name      string
		snaps     [][]firewall.Conn
		waited    time.Duration
		polls     int
		timedOut  bool
		remaining int
	}{
		// drained at the third poll (t=2s), held open until min_wait 5s.
		{"min_wait holds a drained node", [][]firewall.Conn{{busy}, {busy}, {idle}}, 5 * time.Second, 6, false, 1},
		// busy from start to end: 30 polls a second apart, then the timeout.
		{"busy until the timeout", [][]firewall.Conn{{busy}}, 30 * time.Second, 31, true, 1},
		// drained after min_wait: ends at that poll.
		{"drained late", [][]firewall.Conn{{busy}, {busy}, {busy}, {busy}, {busy}, {busy}, {busy}, {idle}}, 7 * time.Second, 8, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			e.cfg.Drain.Interval = Duration(time.Second)
			e.cfg.Drain.MinWait = Duration(5 * time.Second)
			e.cfg.Drain.Timeout = Duration(30 * time.Second)
			e.cfg.Drain.Idle = Duration(time.Minute)
			e.conns.snaps = tt.snaps
			a := e.agent(t)
			clk := &jumpClock{now: time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC)}
			a.d.Now, a.d.After = clk.Now, clk.After
			start := time.Now()
			r, err := a.drain(context.Background(), clk.Now())
			if err != nil {
				t.Fatal(err)
			}
			if r.Waited != tt.waited || r.Polls != tt.polls || r.TimedOut != tt.timedOut || r.Remaining != tt.remaining {
				t.Fatalf("waited %s, %d polls, timed out %v, %d left; want %s, %d, %v, %d", r.Waited, r.Polls, r.TimedOut, r.Remaining, tt.waited, tt.polls, tt.timedOut, tt.remaining)
			}
			if took := time.Since(start); took > 5*time.Second {
				t.Fatalf("the drain slept on the wall clock: %s", took)
			}
		})
	}
}
