// Package lb takes the node out of a load balancer's rotation before the
// firewall refuses anything, and back in before exit reports success
// (issue 15). The firewall package takes the node's ports out of service
// in the kernel; this one does it where the clients' traffic is routed.
//
// Readiness is the LB-agnostic signal: an HTTP endpoint the LB's health
// check targets instead of the app's. In service it answers what the
// app's health check answers; taken out, 503. It knows when the LB has
// acted without any API: it counts the answers it served to each checker
// address (an ALB runs one checker per LB node, each counting on its
// own), and the LB has taken the node out once every checker seen lately
// has had its unhealthy threshold of failures in a row.
package lb

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/patchagent/patchagent/healthcheck"
)

// Options tune a Readiness.
type Options struct {
	// Interval is the LB's health check interval: a checker not seen for
	// two of them is not counted (an LB node gone, a checker of the past).
	Interval time.Duration
	// Unhealthy and Healthy are the LB's thresholds: how many failed
	// (passed) checks in a row take the node out (put it back).
	Unhealthy, Healthy int
	// ProbeTimeout bounds the app check behind an in-service answer.
	ProbeTimeout time.Duration
}

// Readiness serves the maintenance signal and counts what each checker
// was told. Build it with NewReadiness; serve it as an http.Handler.
type Readiness struct {
	app   healthcheck.Prober
	o     Options
	now   func() time.Time
	after func(time.Duration) <-chan time.Time

	probe    sync.Mutex // one app probe at a time
	probed   bool       // its last verdict
	probedAt time.Time

	mu      sync.Mutex
	ready   uint64    // 200 answers served (Stats)
	unavail uint64    // 503 answers served
	out     bool      // taken out of rotation: every check answers 503
	since   time.Time // when out last changed
	sources map[netip.Addr]*checker
	changed chan struct{} // closed and replaced at every answer
}

// checker is what one LB checker address was told since the signal last
// changed.
type checker struct {
	last   time.Time // its last check
	streak int       // answers in a row of the current signal's kind since it changed
}

// NewReadiness returns the signal, in service, answering for app.
func NewReadiness(app healthcheck.Prober, o Options) *Readiness {
	return &Readiness{app: app, o: o, now: time.Now, after: time.After, sources: map[netip.Addr]*checker{}, changed: make(chan struct{})}
}

// ServeHTTP answers one health check: 503 while out of rotation, else the
// app's own health check's verdict.
func (r *Readiness) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	out := r.out
	r.mu.Unlock()
	status, body := http.StatusServiceUnavailable, "out of rotation: patchagent maintenance\n"
	if !out {
		if r.appHealthy(req.Context()) {
			status, body = http.StatusOK, "ready\n"
		} else {
			body = "app unhealthy\n"
		}
	}
	r.record(remoteAddr(req), status == http.StatusOK)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body))
}

// probeEvery is the most often the endpoint probes the app: the endpoint
// is reachable from outside, and a flood of requests to it must not become
// a flood of health checks on the app. Requests meanwhile share the last
// verdict (an LB checks every few seconds).
const probeEvery = 250 * time.Millisecond

// appHealthy is the app's health check's verdict, at most probeEvery old;
// one probe runs at a time, the others wait for it.
func (r *Readiness) appHealthy(ctx context.Context) bool {
	r.probe.Lock()
	defer r.probe.Unlock()
	if now := r.now(); !r.probedAt.IsZero() && now.Sub(r.probedAt) < probeEvery {
		return r.probed
	}
	ctx, cancel := context.WithTimeout(ctx, r.o.ProbeTimeout)
	res, err := r.app.Probe(ctx)
	cancel()
	r.probed, r.probedAt = err == nil && res.Status == healthcheck.Success, r.now()
	return r.probed
}

// remoteAddr is the checker's address (the zero Addr if unparsable).
func remoteAddr(req *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		return netip.Addr{}
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// record counts an answer: a streak grows with answers of the kind the
// signal asks for (failures while out, passes while in) and restarts at
// any other.
func (r *Readiness) record(src netip.Addr, passed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if passed {
		r.ready++
	} else {
		r.unavail++
	}
	c := r.sources[src]
	if c == nil {
		if len(r.sources) >= maxSources {
			r.forget(now)
		}
		if len(r.sources) >= maxSources {
			return // a flood from many addresses: not tracked, not counted
		}
		c = &checker{}
		r.sources[src] = c
	}
	if c.last.Before(r.since) {
		c.streak = 0 // its first check since the signal changed
	}
	c.last = now
	if passed != r.out {
		c.streak++
	} else {
		c.streak = 0
	}
	close(r.changed)
	r.changed = make(chan struct{})
}

// Stats is what the endpoint has done, for metrics.
type Stats struct {
	// Checkers are the addresses that checked within two intervals.
	Checkers int
	// Ready and Unavailable count the 200 and 503 answers served.
	Ready, Unavailable uint64
}

// Stats says how many checkers check the endpoint and what it answered.
func (r *Readiness) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	now, n := r.now(), 0
	for _, c := range r.sources {
		if now.Sub(c.last) <= 2*r.o.Interval {
			n++
		}
	}
	return Stats{Checkers: n, Ready: r.ready, Unavailable: r.unavail}
}

// maxSources bounds the addresses tracked: the endpoint is reachable from
// outside, and an LB has a handful of checkers.
const maxSources = 256

// forget drops the addresses not seen for two intervals; r.mu is held.
func (r *Readiness) forget(now time.Time) {
	for a, c := range r.sources {
		if now.Sub(c.last) > 2*r.o.Interval {
			delete(r.sources, a)
		}
	}
}

// set changes the signal; the streaks start again.
func (r *Readiness) set(out bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out == out && !r.since.IsZero() {
		return
	}
	r.out, r.since = out, r.now()
	for _, c := range r.sources {
		c.streak = 0
	}
}

// SetOut changes the signal without waiting for the LB.
func (r *Readiness) SetOut(out bool) { r.set(out) }

// Wait is how a wait for the LB ended.
type Wait struct {
	// By says what confirmed it, for reports ("2 checker(s)", "HAProxy
	// be/node DRAIN, 0 session(s)").
	By string
	// Checkers are the LB checker addresses that counted.
	Checkers []netip.Addr
	// NoChecker: no checker was seen within two intervals; nothing says
	// what the LB does (the caller falls back on a fixed wait).
	NoChecker bool
	// NotIn: the node was in no rotation of the LB's to take it out of
	// (an AWS instance registered in none of the target groups), or to
	// put it back in: nothing was changed.
	NotIn bool
	Took  time.Duration
}

// ErrNotConfirmed means the deadline passed before every checker had its
// threshold.
var ErrNotConfirmed = errors.New("the load balancer did not confirm")

// Poll calls try at once and then every interval until it reports done or
// fails (its error is returned), or until ctx ends: then Poll returns
// ctx's error, and the caller says what try saw last. The backends' waits
// for a load balancer are this loop.
func Poll(ctx context.Context, every time.Duration, try func() (done bool, err error)) error {
	for {
		done, err := try()
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(every):
		}
	}
}

// TakeOut makes every check answer 503 and waits, up to deadline, until
// every checker seen lately has been told so Unhealthy times in a row:
// the LB has taken the node out of rotation.
func (r *Readiness) TakeOut(ctx context.Context, deadline time.Duration) (Wait, error) {
	r.set(true)
	return r.wait(ctx, r.o.Unhealthy, deadline, "out of rotation")
}

// PutBack makes checks answer as the app does again and waits, up to
// deadline, until every checker seen lately has had Healthy passes in a
// row: the LB routes to the node again.
func (r *Readiness) PutBack(ctx context.Context, deadline time.Duration) (Wait, error) {
	r.set(false)
	return r.wait(ctx, r.o.Healthy, deadline, "back in rotation")
}

// wait waits until every checker seen within two intervals has a streak
// of n. With none seen since the change for two intervals, it says so.
func (r *Readiness) wait(ctx context.Context, n int, deadline time.Duration, what string) (Wait, error) {
	start := r.now()
	timeout := r.after(deadline)
	for {
		r.mu.Lock()
		now := r.now()
		var active []netip.Addr
		done := true
		for a, c := range r.sources {
			if now.Sub(c.last) > 2*r.o.Interval {
				continue
			}
			active = append(active, a)
			done = done && !c.last.Before(r.since) && c.streak >= n
		}
		changed, since := r.changed, r.since
		r.mu.Unlock()
		slices.SortFunc(active, netip.Addr.Compare)
		w := Wait{Checkers: active, Took: now.Sub(start), By: fmt.Sprintf("%d checker(s)", len(active))}
		switch {
		case len(active) > 0 && done:
			return w, nil
		case len(active) == 0 && now.Sub(since) >= 2*r.o.Interval:
			w.NoChecker = true
			return w, nil
		}
		select {
		case <-changed:
		case <-r.after(r.o.Interval / 4):
		case <-timeout:
			return w, fmt.Errorf("%w %s within %s: %d checker(s) seen, not all told %d time(s) in a row", ErrNotConfirmed, what, deadline, len(active), n)
		case <-ctx.Done():
			return w, ctx.Err()
		}
	}
}
