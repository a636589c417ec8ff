package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	ok   = Result{Status: Success, Code: 200}
	fail = Result{Status: Failure, Code: 500, Reason: "status 500"}
)

// scripted is a fake Prober replaying results; past the end it repeats the
// last one, or, if hang is set, answers nothing until the attempt's context
// ends (then fails).
type scripted struct {
	mu      sync.Mutex
	results []Result
	hang    bool
	err     error
	calls   int
}

func (s *scripted) Probe(ctx context.Context) (Result, error) {
	s.mu.Lock()
	s.calls++
	calls := s.calls
	s.mu.Unlock()
	if s.err != nil {
		return Result{}, s.err
	}
	if s.hang && calls > len(s.results) {
		<-ctx.Done()
		return fail, nil
	}
	return s.results[min(calls, len(s.results))-1], nil
}

func (s *scripted) String() string { return "scripted" }

func TestWaitHealthyPolicy(t *testing.T) {
	errBadConfig := errors.New("bad config")
	tests := []struct {
		name          string
		results       []Result
		probeErr      error
		pol           Policy
		wantHealthy   bool
		wantAttempts  int
		wantFailures  int
		wantUnhealthy bool   // err wraps ErrUnhealthy
		wantErr       error  // err wraps this
		wantMsg       string // err message contains this
	}{
		{name: "one success is enough by default", results: []Result{ok}, wantHealthy: true, wantAttempts: 1},
		{
			name: "three in a row needed after a flaky start", results: []Result{ok, fail, ok, ok, ok},
			pol: Policy{Successes: 3}, wantHealthy: true, wantAttempts: 5, wantFailures: 1,
		},
		{
			name: "a failure resets the consecutive count", results: []Result{ok, fail, ok, fail, ok, ok},
			pol: Policy{Successes: 2}, wantHealthy: true, wantAttempts: 6, wantFailures: 2,
		},
		{
			name: "probe that cannot run stops the wait without ErrUnhealthy", probeErr: errBadConfig,
			wantErr: errBadConfig, wantMsg: "health-check scripted: bad config",
		},
		{name: "negative interval rejected", pol: Policy{Interval: -1}, wantMsg: "interval"},
		{name: "negative successes rejected", pol: Policy{Successes: -1}, wantMsg: "successes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &scripted{results: tt.results, err: tt.probeErr}
			if tt.pol.Interval == 0 {
				tt.pol.Interval = time.Millisecond
			}
			if tt.pol.Deadline == 0 {
				tt.pol.Deadline = 5 * time.Second
			}
			var progress []int
			failures := 0
			out, err := WaitHealthy(t.Context(), p, tt.pol, func(attempt int, r Result) {
				progress = append(progress, attempt)
				if r.Status != Success {
					failures++
				}
			})
			if out.Healthy != tt.wantHealthy || out.Attempts != tt.wantAttempts || failures != tt.wantFailures {
				t.Errorf("Outcome %+v with %d failures, want Healthy=%v Attempts=%d failures=%d", out, failures, tt.wantHealthy, tt.wantAttempts, tt.wantFailures)
			}
			if len(progress) != out.Attempts || (len(progress) > 0 && progress[len(progress)-1] != out.Attempts) {
				t.Errorf("progress saw attempts %v, want 1..%d", progress, out.Attempts)
			}
			if tt.wantHealthy {
				if err != nil {
					t.Fatalf("WaitHealthy: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("WaitHealthy: no error")
			}
			if errors.Is(err, ErrUnhealthy) != tt.wantUnhealthy {
				t.Errorf("errors.Is(%v, ErrUnhealthy) = %v, want %v", err, !tt.wantUnhealthy, tt.wantUnhealthy)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("error %v does not wrap %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q lacks %q", err, tt.wantMsg)
			}
		})
	}
}

func TestWaitHealthyRefusedThenHealthy(t *testing.T) {
	const startAfter = 300 * time.Millisecond
	addr := closedAddr(t)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	started := make(chan struct{})
	go func() {
		defer close(started)
		time.Sleep(startAfter)
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("re-listening on %s: %v", addr, err)
			return
		}
		srv.Listener.Close()
		srv.Listener = l
		srv.Start()
	}()
	t.Cleanup(func() { <-started; srv.Close() })

	h := newProbe(t, HTTPOptions{URL: "http://" + addr + "/health-check", Timeout: time.Second})
	refused := 0
	out, err := WaitHealthy(t.Context(), h, Policy{Interval: 10 * time.Millisecond, Deadline: 3 * time.Second}, func(_ int, r Result) {
		if r.Refused {
			refused++
		}
	})
	if err != nil {
		t.Fatalf("WaitHealthy: %v", err)
	}
	if !out.Healthy || out.Attempts < 2 || refused != out.Attempts-1 || out.Last.Status != Success {
		t.Errorf("Outcome %+v, %d refused, want healthy after several refused attempts", out, refused)
	}
	if out.Elapsed < startAfter || out.Elapsed > startAfter+300*time.Millisecond {
		t.Errorf("healthy after %v, want about %v", out.Elapsed, startAfter)
	}
}

func TestWaitHealthyRetriesRefusedConnectionsSooner(t *testing.T) {
	refused := Result{Status: Failure, Reason: "connect: connection refused", Refused: true}
	tests := []struct {
		name     string
		results  []Result
		pol      Policy
		min, max time.Duration
	}{
		// Five refused attempts at the 1s interval would take 5s.
		{"refused: the short pause", []Result{refused, refused, refused, refused, refused, ok}, Policy{Interval: time.Second, RefusedInterval: 10 * time.Millisecond}, 50 * time.Millisecond, 900 * time.Millisecond},
		{"refused: the default short pause", []Result{refused, refused, ok}, Policy{Interval: 5 * time.Second}, 2 * DefaultRefusedInterval, time.Second},
		// An answer (even a bad one) waits the full interval.
		{"answered: the interval", []Result{fail, ok}, Policy{Interval: 300 * time.Millisecond, RefusedInterval: 10 * time.Millisecond}, 300 * time.Millisecond, 900 * time.Millisecond},
		// Never more than the interval.
		{"refused pause capped by the interval", []Result{refused, refused, refused, ok}, Policy{Interval: 10 * time.Millisecond, RefusedInterval: 5 * time.Second}, 30 * time.Millisecond, 900 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &scripted{results: tt.results}
			start := time.Now()
			out, err := WaitHealthy(t.Context(), s, tt.pol, nil)
			took := time.Since(start)
			if err != nil || !out.Healthy || out.Attempts != len(tt.results) {
				t.Fatalf("WaitHealthy = %+v, %v; want healthy after %d attempts", out, err, len(tt.results))
			}
			if took < tt.min || took > tt.max {
				t.Errorf("took %s, want within [%s, %s]", took, tt.min, tt.max)
			}
		})
	}
	if _, err := WaitHealthy(t.Context(), &scripted{results: []Result{ok}}, Policy{RefusedInterval: -time.Second}, nil); err == nil || !strings.Contains(err.Error(), "refused interval") {
		t.Errorf("negative RefusedInterval: err = %v", err)
	}
}

func TestWaitHealthyAlways500(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}))
	t.Cleanup(srv.Close)
	h := newProbe(t, HTTPOptions{URL: srv.URL + "/health-check"})
	start := time.Now()
	failures := 0
	out, err := WaitHealthy(t.Context(), h, Policy{Interval: 10 * time.Millisecond, Deadline: 200 * time.Millisecond}, func(_ int, r Result) {
		if r.Status != Success {
			failures++
		}
	})
	if !errors.Is(err, ErrUnhealthy) {
		t.Fatalf("WaitHealthy error %v, want ErrUnhealthy", err)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		t.Errorf("error %v wraps a context error, but the caller's context did not end", err)
	}
	want := regexp.MustCompile(`^health-check ` + regexp.QuoteMeta(srv.URL) + `/health-check: status 500 after (\d+) attempts in \d+ms$`)
	m := want.FindStringSubmatch(err.Error())
	if m == nil || m[1] != fmt.Sprint(out.Attempts) {
		t.Errorf("error %q does not match %v with %d attempts", err, want, out.Attempts)
	}
	if out.Healthy || out.Attempts < 2 || failures != out.Attempts || out.Last.Code != 500 {
		t.Errorf("Outcome %+v, want several failed attempts", out)
	}
	if e := time.Since(start); e < 200*time.Millisecond || e > 400*time.Millisecond {
		t.Errorf("WaitHealthy took %v, want about the 200ms deadline", e)
	}
}

func TestWaitHealthyReturnsPromptlyOnCancel(t *testing.T) {
	const cancelAfter = 100 * time.Millisecond
	tests := []struct {
		name string
		p    func(t *testing.T) Prober
		pol  Policy
	}{
		{
			name: "during a hanging attempt",
			p: func(t *testing.T) Prober {
				release := make(chan struct{})
				srv := httptest.NewServer(hang(release))
				t.Cleanup(srv.Close)
				t.Cleanup(func() { close(release) })
				return newProbe(t, HTTPOptions{URL: srv.URL, Timeout: 5 * time.Second})
			},
			pol: Policy{Interval: 10 * time.Millisecond},
		},
		{
			name: "during the pause between attempts",
			p:    func(*testing.T) Prober { return &scripted{results: []Result{fail}} },
			pol:  Policy{Interval: time.Minute},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			timer := time.AfterFunc(cancelAfter, cancel)
			t.Cleanup(func() { timer.Stop(); cancel() })
			start := time.Now()
			out, err := WaitHealthy(ctx, tt.p(t), tt.pol, nil)
			if e := time.Since(start); e > cancelAfter+200*time.Millisecond {
				t.Errorf("WaitHealthy returned %v after start, want soon after the cancel at %v", e, cancelAfter)
			}
			if !errors.Is(err, ErrUnhealthy) || !errors.Is(err, context.Canceled) {
				t.Errorf("error %v, want it to wrap ErrUnhealthy and context.Canceled", err)
			}
			if out.Healthy || out.Attempts != 1 {
				t.Errorf("Outcome %+v, want one failed attempt", out)
			}
		})
	}
}

func TestWaitHealthyCutsAnAttemptAtTheDeadline(t *testing.T) {
	const deadline = 300 * time.Millisecond
	release := make(chan struct{})
	srv := httptest.NewServer(hang(release))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) })
	h := newProbe(t, HTTPOptions{URL: srv.URL, Timeout: 10 * time.Second})
	start := time.Now()
	out, err := WaitHealthy(t.Context(), h, Policy{Interval: 10 * time.Millisecond, Deadline: deadline}, nil)
	if e := time.Since(start); e < deadline || e > deadline+200*time.Millisecond {
		t.Errorf("WaitHealthy took %v, want about the %v deadline, not the 10s attempt timeout", e, deadline)
	}
	if !errors.Is(err, ErrUnhealthy) || !strings.Contains(err.Error(), "timeout after") || !strings.Contains(err.Error(), "after 1 attempt in") {
		t.Errorf("error %v, want ErrUnhealthy naming the timeout after 1 attempt", err)
	}
	if out.Attempts != 1 || out.Last.Status != Failure {
		t.Errorf("Outcome %+v, want one failed attempt", out)
	}
}

func TestWaitHealthyDeadlineWithTooFewSuccessesInARow(t *testing.T) {
	// Two successes, then an attempt the deadline cuts short: it says
	// nothing of the app, so the last answer is a success.
	p := &scripted{results: []Result{ok, ok}, hang: true}
	out, err := WaitHealthy(t.Context(), p, Policy{Interval: time.Millisecond, Deadline: 100 * time.Millisecond, Successes: 3}, nil)
	if !errors.Is(err, ErrUnhealthy) || out.Healthy || out.Attempts != 2 || out.Last.Status != Success {
		t.Errorf("got %+v, %v; want unhealthy after 2 successes", out, err)
	}
	if err == nil || !strings.Contains(err.Error(), "scripted: not enough consecutive successes after 2 attempts") {
		t.Errorf("error %v, want it to say the successes were not consecutive enough", err)
	}
}

func TestWaitHealthyRejectsNilProber(t *testing.T) {
	if _, err := WaitHealthy(t.Context(), nil, Policy{}, nil); err == nil || errors.Is(err, ErrUnhealthy) {
		t.Errorf("WaitHealthy(nil prober) error %v, want a configuration error", err)
	}
}
