package main

import (
	"slices"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// median returns the median of xs (the mean of the two middle values for an
// even count), 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// medianDuration is median over durations.
func medianDuration(ds []time.Duration) time.Duration {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d)
	}
	return time.Duration(median(xs))
}

// Outage is when outside clients could not get in.
type Outage struct {
	// Start is the first outside attempt at or after the pre start that was
	// not answered 200 (refused, timed out, reset, bad status); zero if none.
	Start time.Time
	// Back is the first 200 at or after the exit start from which every
	// later attempt is answered 200; zero if the node never came back.
	Back time.Time
	// Duration is Back-Start, or end-Start if the node never came back.
	Duration time.Duration
}

// NeverBack reports an outage that did not end before the recording did.
func (o Outage) NeverBack() bool { return !o.Start.IsZero() && o.Back.IsZero() }

// outOfService computes the outage from the probe attempts (ordered by At),
// the pre start, the exit start and the end of the recording.
func outOfService(attempts []sandbox.Attempt, preStart, exitStart, end time.Time) Outage {
	var o Outage
	for _, a := range attempts {
		if !a.At.Before(preStart) && !a.OK() {
			o.Start = a.At
			break
		}
	}
	if o.Start.IsZero() {
		return o
	}
	// The final run of 200s; its first attempt at or after the exit start.
	i := len(attempts)
	for i > 0 && attempts[i-1].OK() {
		i--
	}
	for ; i < len(attempts); i++ {
		if !attempts[i].At.Before(exitStart) && attempts[i].At.After(o.Start) {
			o.Back = attempts[i].At
			break
		}
	}
	if o.Back.IsZero() {
		o.Duration = end.Sub(o.Start)
	} else {
		o.Duration = o.Back.Sub(o.Start)
	}
	return o
}

// Overheads are the parts of an outage that are not the hooks' overhead.
type Overheads struct {
	Patch    time.Duration // the simulated OS patch (fixed)
	NPM      time.Duration // post's own npm update
	Reboot   time.Duration // the simulated reboot (pm2 kill, flush, resurrect)
	AppStart time.Duration // the app's own pm2 start -> first 200 from outside
	InFlight time.Duration // the longest in-flight request's remaining time at the block
}

// Sum is the total of the overheads.
func (o Overheads) Sum() time.Duration {
	return o.Patch + o.NPM + o.Reboot + o.AppStart + o.InFlight
}

// deadTime is the out-of-service time minus what was not overhead; it can
// be negative when the hooks overlap the parts (e.g. the app started while
// something else was waited for).
func deadTime(outage time.Duration, o Overheads) time.Duration { return outage - o.Sum() }

// inFlightRemaining is the longest remaining time, at block, of requests
// that started at starts[i] and take durs[i]; 0 if every one ended before.
func inFlightRemaining(block time.Time, starts []time.Time, durs []time.Duration) time.Duration {
	var m time.Duration
	for i, s := range starts {
		if r := s.Add(durs[i]).Sub(block); r > m {
			m = r
		}
	}
	return m
}

// acceptedEarly counts outside requests answered (any HTTP status: the
// connection was accepted) in [from, until): probe attempts by their start,
// plus load requests answered 200 in the timeline buckets (BucketWidth wide,
// counted by completion time from loadStart) that lie wholly in the window
// (a bucket straddling an end may hold requests answered after it).
func acceptedEarly(attempts []sandbox.Attempt, tl []sandbox.Bucket, loadStart, from, until time.Time) (probe, load int) {
	if !until.After(from) {
		return 0, 0
	}
	for _, a := range attempts {
		if a.Status != 0 && !a.At.Before(from) && a.At.Before(until) {
			probe++
		}
	}
	for i, b := range tl {
		t := loadStart.Add(time.Duration(i) * sandbox.BucketWidth)
		if !t.Before(from) && !t.Add(sandbox.BucketWidth).After(until) {
			load += b.OK
		}
	}
	return probe, load
}
