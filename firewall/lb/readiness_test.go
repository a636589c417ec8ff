package lb

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/patchagent/patchagent/healthcheck"
)

// clock is a manual clock: After's channels fire when Advance passes them.
type clock struct {
	mu     sync.Mutex
	now    time.Time
	timers []timer
}

type timer struct {
	at time.Time
	ch chan time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.timers = append(c.timers, timer{c.now.Add(d), ch})
	return ch
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

type appProbe struct {
	healthy bool
	probes  int
}

func (p *appProbe) Probe(ctx context.Context) (healthcheck.Result, error) {
	p.probes++
	if p.healthy {
		return healthcheck.Result{Status: healthcheck.Success, Code: 200}, nil
	}
	return healthcheck.Result{Status: healthcheck.Failure, Code: 500, Reason: "status 500"}, nil
}

func newTestReadiness(app healthcheck.Prober) (*Readiness, *clock) {
	r := NewReadiness(app, Options{Interval: 2 * time.Second, Unhealthy: 2, Healthy: 3, ProbeTimeout: time.Second})
	c := &clock{now: time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC)}
	r.now, r.after = c.Now, c.After
	return r, c
}

// check is one health check from src; it returns the status served.
func check(r *Readiness, src string) int {
	req := httptest.NewRequest(http.MethodGet, "/ready", nil)
	req.RemoteAddr = src + ":40000"
	w := httptest.NewRecorder()
	r.ServeHTTP(w, req)
	return w.Code
}

// result runs f in the background and returns its outcome channel.
func result(f func() (Wait, error)) chan struct {
	w   Wait
	err error
} {
	ch := make(chan struct {
		w   Wait
		err error
	}, 1)
	go func() {
		w, err := f()
		ch <- struct {
			w   Wait
			err error
		}{w, err}
	}()
	return ch
}

func TestReadinessAnswersAsTheAppThenMaintenance(t *testing.T) {
	app := &appProbe{healthy: true}
	r, c := newTestReadiness(app)
	if got := check(r, "10.0.1.5"); got != 200 {
		t.Fatalf("in service, app healthy: %d", got)
	}
	// A flood of requests within probeEvery: one probe of the app.
	for range 100 {
		check(r, "198.51.100.7")
	}
	if app.probes != 1 {
		t.Fatalf("%d app probes for 101 requests within %s", app.probes, probeEvery)
	}
	app.healthy = false
	c.Advance(probeEvery)
	if got := check(r, "10.0.1.5"); got != 503 {
		t.Fatalf("in service, app unhealthy: %d", got)
	}
	app.healthy = true
	r.set(true)
	if got := check(r, "10.0.1.5"); got != 503 || !isOut(r) {
		t.Fatalf("out of rotation: %d", got)
	}
}

// TestTakeOutWaitsForEveryChecker: two LB nodes check on their own
// schedules; TakeOut returns only once each has been told "503" twice in
// a row (the LB's unhealthy threshold), a checker not seen for two
// intervals no longer counts, and a pass in between restarts a streak.
func TestTakeOutWaitsForEveryChecker(t *testing.T) {
	r, c := newTestReadiness(&appProbe{healthy: true})
	a, b, gone := "10.0.1.5", "10.0.2.7", "10.0.3.9"
	check(r, a)
	check(r, b)
	check(r, gone)
	c.Advance(5 * time.Second) // gone stops checking: > 2 intervals
	check(r, a)
	check(r, b)
	done := result(func() (Wait, error) { return r.TakeOut(context.Background(), time.Minute) })
	waitFor(t, func() bool { return isOut(r) })
	step := func(srcs ...string) {
		t.Helper()
		c.Advance(time.Second)
		for _, s := range srcs {
			if got := check(r, s); got != 503 {
				t.Fatalf("%s told %d while out", s, got)
			}
		}
		time.Sleep(5 * time.Millisecond) // let the wait look
	}
	step(a)
	step(a) // a: 2 in a row
	step(b) // b: 1
	select {
	case res := <-done:
		t.Fatalf("returned with b told once: %+v %v", res.w, res.err)
	default:
	}
	step(b) // b: 2
	var res struct {
		w   Wait
		err error
	}
	select {
	case res = <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("TakeOut did not return once both checkers had their threshold")
	}
	want := []netip.Addr{netip.MustParseAddr(a), netip.MustParseAddr(b)}
	if res.err != nil || !slices.Equal(res.w.Checkers, want) || res.w.NoChecker || res.w.Took != 4*time.Second {
		t.Fatalf("wait %+v, %v; want checkers %v after 4s", res.w, res.err, want)
	}
}

// TestPutBackCountsPassesInARow: back in rotation once every checker had
// the healthy threshold of passes in a row; an app failing meanwhile
// restarts the streak; the deadline ends the wait with ErrNotConfirmed.
func TestPutBackCountsPassesInARow(t *testing.T) {
	app := &appProbe{healthy: true}
	r, c := newTestReadiness(app)
	r.set(true)
	check(r, "10.0.1.5")
	done := result(func() (Wait, error) { return r.PutBack(context.Background(), 10*time.Second) })
	waitFor(t, func() bool { return !isOut(r) })
	for i, healthy := range []bool{true, true, false, true, true} {
		app.healthy = healthy
		c.Advance(time.Second)
		check(r, "10.0.1.5")
		time.Sleep(5 * time.Millisecond)
		select {
		case res := <-done:
			t.Fatalf("returned after check %d: %+v %v", i, res.w, res.err)
		default:
		}
	}
	c.Advance(time.Second)
	check(r, "10.0.1.5") // third pass in a row
	if res := <-done; res.err != nil || len(res.w.Checkers) != 1 {
		t.Fatalf("%+v %v", res.w, res.err)
	}

	// A checker that never passes: the deadline.
	r.set(true)
	app.healthy = false
	done = result(func() (Wait, error) { return r.PutBack(context.Background(), 3*time.Second) })
	waitFor(t, func() bool { return !isOut(r) })
	for range 4 {
		time.Sleep(5 * time.Millisecond)
		c.Advance(time.Second)
		check(r, "10.0.1.5")
	}
	if res := <-done; !errors.Is(res.err, ErrNotConfirmed) {
		t.Fatalf("want ErrNotConfirmed, got %+v %v", res.w, res.err)
	}
}

// TestTakeOutWithNoCheckerSaysSo: nothing checks the endpoint (no LB
// configured for it): after two intervals the wait says so instead of
// waiting out its deadline.
func TestTakeOutWithNoCheckerSaysSo(t *testing.T) {
	r, c := newTestReadiness(&appProbe{healthy: true})
	done := result(func() (Wait, error) { return r.TakeOut(context.Background(), time.Minute) })
	for range 5 {
		time.Sleep(5 * time.Millisecond)
		c.Advance(time.Second)
	}
	res := <-done
	if res.err != nil || !res.w.NoChecker || len(res.w.Checkers) != 0 {
		t.Fatalf("%+v %v", res.w, res.err)
	}
}

// waitFor waits up to 5 s for cond (the wait under test runs in its own
// goroutine).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
	}
}

// TestReadinessTracksABoundedNumberOfAddresses: a flood from many
// addresses is answered but not tracked past maxSources; addresses gone
// for two intervals make room again.
func TestReadinessTracksABoundedNumberOfAddresses(t *testing.T) {
	r, c := newTestReadiness(&appProbe{healthy: true})
	for i := range 2 * maxSources {
		a := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
		if got := check(r, a.String()); got != 200 {
			t.Fatalf("%s told %d", a, got)
		}
	}
	if n := len(r.sources); n != maxSources {
		t.Fatalf("%d addresses tracked, want at most %d", n, maxSources)
	}
	c.Advance(5 * time.Second)
	check(r, "10.0.1.5")
	if _, ok := r.sources[netip.MustParseAddr("10.0.1.5")]; !ok || len(r.sources) != 1 {
		t.Fatalf("the old addresses were not forgotten: %d tracked", len(r.sources))
	}
}

// isOut reads the signal (the product has no use for it: the checks see it).
func isOut(r *Readiness) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out
}

// TestReadinessStats: the checkers seen within two intervals, and every
// answer served, also from addresses past the tracked bound.
func TestReadinessStats(t *testing.T) {
	app := &appProbe{healthy: true}
	r, c := newTestReadiness(app)
	if s := r.Stats(); s != (Stats{}) {
		t.Fatalf("before any check: %+v", s)
	}
	check(r, "10.0.1.5")
	check(r, "10.0.2.5")
	r.SetOut(true)
	check(r, "10.0.1.5")
	if s := r.Stats(); s != (Stats{Checkers: 2, Ready: 2, Unavailable: 1}) {
		t.Fatalf("two checkers, 2 passes, 1 failure: %+v", s)
	}
	c.Advance(3 * time.Second)
	check(r, "10.0.1.5")
	c.Advance(2 * time.Second) // 10.0.2.5 last seen 5 s ago: more than two intervals
	if s := r.Stats(); s != (Stats{Checkers: 1, Ready: 2, Unavailable: 2}) {
		t.Fatalf("one checker gone: %+v", s)
	}
	for i := range maxSources + 10 {
		check(r, fmt.Sprintf("10.9.%d.%d", i/256, i%256))
	}
	if s := r.Stats(); s.Unavailable != uint64(2+maxSources+10) || s.Checkers > maxSources {
		t.Fatalf("a flood: %+v", s)
	}
}

// TestPoll: done on the third try; try's error at once; ctx's end is
// ctx's error, with try called no more.
func TestPoll(t *testing.T) {
	n := 0
	if err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return n == 3, nil }); err != nil || n != 3 {
		t.Fatalf("Poll = %v after %d tries, want nil after 3", err, n)
	}
	boom := errors.New("refused")
	n = 0
	if err := Poll(context.Background(), time.Millisecond, func() (bool, error) { n++; return false, boom }); err != boom || n != 1 {
		t.Fatalf("Poll = %v after %d tries, want the error after 1", err, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	n = 0
	err := Poll(ctx, 5*time.Millisecond, func() (bool, error) { n++; return false, nil })
	if !errors.Is(err, context.DeadlineExceeded) || n < 2 {
		t.Fatalf("Poll = %v after %d tries, want the deadline after several", err, n)
	}
	after := n
	time.Sleep(20 * time.Millisecond)
	if n != after {
		t.Fatal("try called after Poll returned")
	}
}
