package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// BucketWidth is the width of one Stats.Timeline bucket.
const BucketWidth = 100 * time.Millisecond

// LoadOptions configure a load run from the client netns.
type LoadOptions struct {
	Workers   int           // concurrent clients (default 1)
	Path      string        // request path (default "/")
	Interval  time.Duration // pause between a worker's requests (default 0)
	KeepAlive bool          // reuse connections (default: a new connection per request)
	V6        bool          // use the IPv6 address (default IPv4)
	// Timeout bounds one request, dial included (default 10s); a request
	// that hits it counts as failed.
	Timeout time.Duration
	// Every, when set, makes the load open-loop: a request starts every
	// Every, each on its own, whatever the others do (clients arriving
	// independently); Workers and Interval are not used. A closed loop
	// (workers) sends more requests while failures come back fast, so its
	// error counts grow with how fast the server fails; an open loop's
	// count is the requests that met the failure.
	Every time.Duration
}

// Bucket counts the requests that completed within one BucketWidth.
type Bucket struct {
	OK, Refused, Failed int
}

// Stats is a snapshot of a load run. Every request counts in exactly one of
// OK, Refused, Failed. Requests cut short by Stop are not counted.
type Stats struct {
	Total   int
	OK      int // 2xx
	Refused int // ECONNREFUSED: nothing listens, or the block rejects
	// Failed are dropped requests: resets, timeouts, broken bodies and
	// non-2xx answers (also counted in BadStatus).
	Failed    int
	BadStatus int
	LastError string // the most recent failed request's error, for diagnosis
	Elapsed   time.Duration
	Timeline  []Bucket // Timeline[i] covers [i*BucketWidth, (i+1)*BucketWidth) from the start
}

// Load is a running load generator.
type Load struct {
	start  time.Time
	cancel context.CancelFunc
	wg     sync.WaitGroup
	tr     *http.Transport

	mu    sync.Mutex
	stats Stats
	// quiet makes workers stop after their current request (Quiesce).
	quiet atomic.Bool
}

type outcome int

const (
	outOK outcome = iota
	outRefused
	outFailed
	outBadStatus
)

// Load starts o.Workers workers that send GETs to o.Path from the client
// netns until ctx ends or Stop is called.
func (n *Node) Load(ctx context.Context, o LoadOptions) *Load {
	network := "tcp4"
	if o.V6 {
		network = "tcp6"
	}
	return startLoad(ctx, n.ClientNS, n.URL(o.Path, o.V6), o, network)
}

// LoadURL starts a load run (Load's) from the client netns against url,
// an IPv4 one (o.Path and o.V6 are not used), e.g. a load balancer's
// frontend on the client netns's loopback.
func (n *Node) LoadURL(ctx context.Context, url string, o LoadOptions) *Load {
	return startLoad(ctx, n.ClientNS, url, o, "tcp4")
}

// startLoad runs the workers of a load run from netns ns against url
// (o.Path and o.V6 are already in it) over network.
func startLoad(ctx context.Context, ns, url string, o LoadOptions, network string) *Load {
	if o.Workers <= 0 {
		o.Workers = 1
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(ctx)
	l := &Load{start: time.Now(), cancel: cancel, tr: nsTransport(ns, network, o.KeepAlive)}
	l.tr.MaxIdleConnsPerHost = max(o.Workers, l.tr.MaxIdleConnsPerHost)
	client := &http.Client{
		Transport:     l.tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	if o.Every > 0 {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.arrivals(ctx, client, url, o)
		}()
		return l
	}
	for range o.Workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			l.worker(ctx, client, url, o)
		}()
	}
	return l
}

// arrivals starts a request every o.Every until ctx ends or Quiesce.
func (l *Load) arrivals(ctx context.Context, c *http.Client, url string, o LoadOptions) {
	tick := time.NewTicker(o.Every)
	defer tick.Stop()
	for !l.quiet.Load() {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			out, err := request(ctx, c, url, o.Timeout)
			if ctx.Err() == nil {
				l.record(out, err)
			}
		}()
	}
}

func (l *Load) worker(ctx context.Context, c *http.Client, url string, o LoadOptions) {
	for ctx.Err() == nil && !l.quiet.Load() {
		out, err := request(ctx, c, url, o.Timeout)
		if ctx.Err() != nil {
			return // cut short by Stop: not a result
		}
		l.record(out, err)
		pause := o.Interval
		if out != outOK && pause < 10*time.Millisecond {
			pause = 10 * time.Millisecond // do not spin on a closed port
		}
		if pause > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(pause):
			}
		}
	}
}

func request(ctx context.Context, c *http.Client, url string, timeout time.Duration) (outcome, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return outFailed, err
	}
	resp, err := c.Do(req)
	if err != nil {
		if errors.Is(err, syscall.ECONNREFUSED) {
			return outRefused, err
		}
		return outFailed, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return outFailed, fmt.Errorf("reading body: %w", err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return outBadStatus, fmt.Errorf("status %d", resp.StatusCode)
	}
	return outOK, nil
}

func (l *Load) record(out outcome, err error) {
	i := int(time.Since(l.start) / BucketWidth)
	l.mu.Lock()
	defer l.mu.Unlock()
	s := &l.stats
	for len(s.Timeline) <= i {
		s.Timeline = append(s.Timeline, Bucket{})
	}
	s.Total++
	switch out {
	case outOK:
		s.OK++
		s.Timeline[i].OK++
	case outRefused:
		s.Refused++
		s.Timeline[i].Refused++
	case outBadStatus:
		s.BadStatus++
		fallthrough
	default:
		s.Failed++
		s.Timeline[i].Failed++
	}
	if (out == outFailed || out == outBadStatus) && err != nil {
		s.LastError = err.Error()
	}
}

// Quiesce makes every worker stop after its current request completes, as
// a load balancer does once it marks a target unhealthy: nothing is cut.
func (l *Load) Quiesce() { l.quiet.Store(true) }

// Stats returns a snapshot of the counters so far.
func (l *Load) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.stats
	s.Timeline = append([]Bucket(nil), l.stats.Timeline...)
	s.Elapsed = time.Since(l.start)
	return s
}

// Stop ends the run, waits for the workers and returns the final Stats.
// It may be called more than once.
func (l *Load) Stop() Stats {
	l.cancel()
	l.wg.Wait()
	l.tr.CloseIdleConnections()
	return l.Stats()
}

// String summarises s on one line.
func (s Stats) String() string {
	str := fmt.Sprintf("elapsed=%s total=%d ok=%d refused=%d failed=%d (non-2xx %d)",
		s.Elapsed.Round(time.Millisecond), s.Total, s.OK, s.Refused, s.Failed, s.BadStatus)
	if s.LastError != "" {
		str += fmt.Sprintf(" last_error=%q", s.LastError)
	}
	return str
}

// TimelineString renders the timeline compactly, one character per bucket
// grouped in seconds: '.' only ok, 'r' some refused, 'X' some failed, ' '
// nothing completed.
func (s Stats) TimelineString() string {
	var b strings.Builder
	perSecond := int(time.Second / BucketWidth)
	for i, t := range s.Timeline {
		if i > 0 && i%perSecond == 0 {
			b.WriteByte('|')
		}
		switch {
		case t.Failed > 0:
			b.WriteByte('X')
		case t.Refused > 0:
			b.WriteByte('r')
		case t.OK > 0:
			b.WriteByte('.')
		default:
			b.WriteByte(' ')
		}
	}
	return b.String()
}
