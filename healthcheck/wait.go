package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Defaults for Policy.
const (
	DefaultInterval = 250 * time.Millisecond
	// DefaultRefusedInterval is the pause after a refused connection.
	DefaultRefusedInterval = 20 * time.Millisecond
	DefaultDeadline        = 2 * time.Minute
)

// Policy says how long and how often WaitHealthy probes. The zero value of
// each field means its default.
type Policy struct {
	// Interval is the pause between the end of one attempt and the start of
	// the next (default 250ms).
	Interval time.Duration
	// RefusedInterval replaces Interval after an attempt whose connection
	// was refused (default 20ms, at most Interval): nothing listens yet, so
	// the attempt cost the target nothing, and the first answer of an app
	// that is starting is seen within this much of its listen().
	RefusedInterval time.Duration
	// Deadline bounds the whole wait, attempts included (default 2m). Each
	// attempt's own timeout is cut by what remains of it.
	Deadline time.Duration
	// Successes is how many consecutive successes make the target healthy
	// (default 1). A failure resets the count.
	Successes int
}

func (p Policy) withDefaults() (Policy, error) {
	var errs []error
	if p.Interval < 0 {
		errs = append(errs, fmt.Errorf("interval: %s must not be negative", p.Interval))
	}
	if p.RefusedInterval < 0 {
		errs = append(errs, fmt.Errorf("refused interval: %s must not be negative", p.RefusedInterval))
	}
	if p.Deadline < 0 {
		errs = append(errs, fmt.Errorf("deadline: %s must not be negative", p.Deadline))
	}
	if p.Successes < 0 {
		errs = append(errs, fmt.Errorf("successes: %d must not be negative", p.Successes))
	}
	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("health-check policy: %w", err)
	}
	if p.Interval == 0 {
		p.Interval = DefaultInterval
	}
	if p.RefusedInterval == 0 {
		p.RefusedInterval = DefaultRefusedInterval
	}
	p.RefusedInterval = min(p.RefusedInterval, p.Interval)
	if p.Deadline == 0 {
		p.Deadline = DefaultDeadline
	}
	if p.Successes == 0 {
		p.Successes = 1
	}
	return p, nil
}

// Outcome summarises a wait.
type Outcome struct {
	Healthy  bool
	Attempts int
	Elapsed  time.Duration // since the wait began
	Last     Result        // the last attempt's result
}

// ErrUnhealthy is wrapped by WaitHealthy's error when the target did not
// become healthy in time.
var ErrUnhealthy = errors.New("unhealthy")

// unhealthyError carries a readable message and wraps ErrUnhealthy and, when
// the caller's context ended, that context's error.
type unhealthyError struct {
	msg   string
	cause error
}

func (e *unhealthyError) Error() string { return e.msg }

func (e *unhealthyError) Unwrap() []error {
	if e.cause == nil {
		return []error{ErrUnhealthy}
	}
	return []error{ErrUnhealthy, e.cause}
}

// WaitHealthy probes p until it succeeds pol.Successes times in a row, and
// then returns nil. It returns an error wrapping ErrUnhealthy when the
// deadline passes, when pol.Fails consecutive failures are reached, or when
// ctx ends (the error then also wraps ctx's error). That message names the
// prober, the last failure's reason, the attempt count and the elapsed time:
//
//	health-check http://localhost:443/health-check: status 500 after 12 attempts in 2m0s
//
// If the probe cannot run at all, or pol is invalid, the error does not wrap
// ErrUnhealthy. progress, if not nil, is called after every attempt, on the
// calling goroutine.
func WaitHealthy(ctx context.Context, p Prober, pol Policy, progress func(attempt int, r Result)) (Outcome, error) {
	var out Outcome
	if p == nil {
		return out, errors.New("health-check: nil prober")
	}
	pol, err := pol.withDefaults()
	if err != nil {
		return out, err
	}
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, pol.Deadline)
	defer cancel()
	timer := time.NewTimer(pol.Interval)
	timer.Stop() // armed after each attempt
	defer timer.Stop()

	passes := 0
	for {
		if wctx.Err() != nil {
			return out, unhealthy(ctx, p, &out, start)
		}
		r, err := p.Probe(wctx)
		if err != nil {
			out.Elapsed = time.Since(start)
			return out, fmt.Errorf("health-check %s: %w", name(p), err)
		}
		if r.Status != Success && wctx.Err() != nil && ctx.Err() == nil && out.Attempts > 0 {
			// Cut short by the overall deadline: it says nothing about the
			// app; the previous attempt's answer does.
			return out, unhealthy(ctx, p, &out, start)
		}
		out.Attempts++
		out.Last = r
		if r.Status == Success {
			passes++
		} else {
			passes = 0
		}
		if progress != nil {
			progress(out.Attempts, r)
		}
		if passes >= pol.Successes {
			out.Healthy = true
			out.Elapsed = time.Since(start)
			return out, nil
		}
		pause := pol.Interval
		if r.Refused {
			pause = pol.RefusedInterval
		}
		timer.Reset(pause)
		select {
		case <-wctx.Done():
			return out, unhealthy(ctx, p, &out, start)
		case <-timer.C:
		}
	}
}

func unhealthy(ctx context.Context, p Prober, out *Outcome, start time.Time) error {
	out.Elapsed = time.Since(start)
	last := "no attempt made"
	if out.Attempts > 0 {
		last = out.Last.Reason
		if out.Last.Status == Success {
			last = "not enough consecutive successes"
		}
	}
	msg := fmt.Sprintf("health-check %s: %s after %d %s in %s",
		name(p), last, out.Attempts, plural(out.Attempts, "attempt"), roundDuration(out.Elapsed))
	e := &unhealthyError{msg: msg}
	if err := ctx.Err(); err != nil { // the caller's context, not our deadline
		e.cause = err
		e.msg += " (" + err.Error() + ")"
	}
	return e
}

func name(p Prober) string {
	if s, ok := p.(fmt.Stringer); ok {
		return s.String()
	}
	return fmt.Sprintf("%T", p)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}
