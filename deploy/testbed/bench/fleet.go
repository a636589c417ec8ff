package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
	"github.com/patchagent/patchagent/firewall/lb"
)

// Fleet modes: how each node leaves and rejoins the LB.
const (
	// mTutorial is the tutorial's scripts with the unblock line's port
	// filled in (verbatim, exit fails on the first node and SSM stops).
	mTutorial  = "tutorial-fixed"
	mBlock     = "block-only"  // patchagent, HAProxy checks the app
	mReadiness = "readiness"   // patchagent's readiness endpoint is HAProxy's check
	mHAProxy   = "haproxy-api" // patchagent drives HAProxy's runtime API
)

var (
	allModes       = []string{mTutorial, mBlock, mReadiness, mHAProxy}
	fleetScenarios = []string{sReboot, sNoReboot}
	// reuseModes are HAProxy's http-reuse settings the bench runs: never
	// (a new connection to the node for every request: the block refuses
	// each one sent in the LB's detection window) and always (requests
	// ride pooled connections, which the block leaves alone).
	reuseModes = []string{"never", "always"}
)

// readinessPort is where the readiness mode's endpoint listens.
const readinessPort = 8742

// fleetLB is what differs between the modes: HAProxy's check and each
// node's lb section.
func fleetLB(mode, socket string, node int) (checkPath, checkOpts, lbSection string) {
	switch mode {
	case mReadiness:
		return "/ready", fmt.Sprintf(" port %d", readinessPort),
			fmt.Sprintf("lb:\n  health_listen: 0.0.0.0:%d\n  interval: 2s\n  unhealthy_threshold: 2\n  healthy_threshold: 2\n  deadline: 30s\n", readinessPort)
	case mHAProxy:
		return "/health-check", "", fmt.Sprintf("lb:\n  deadline: 30s\n  haproxy:\n    socket: %s\n    backend: be\n    server: %s\n", socket, nodeName(node))
	}
	return "/health-check", "", ""
}

func nodeName(i int) string { return fmt.Sprintf("n%d", i) }

// fleet is N sandbox nodes behind one HAProxy in an LB netns.
type fleet struct {
	nodes  []*bench
	lbNet  *sandbox.LBNet
	logDir string
}

// FleetRun is one rollout: every node patched in turn, the next only after
// the previous one's exit returned (SSM's rate control, concurrency 1).
type FleetRun struct {
	Mode     string `json:"mode"`
	Scenario string `json:"scenario"`
	Reuse    string `json:"http_reuse"`
	Iter     int    `json:"iteration"`
	// Failed are the nodes whose cycle had a phase fail, and which. SSM,
	// with an error threshold of 0, stops the rollout at the first; the
	// bench goes on (as MaxErrors 100% would) so that every mode is
	// measured on every node.
	Failed []string `json:"failed_cycles,omitempty"`

	ShortOK     int `json:"short_ok"`
	ShortFailed int `json:"short_failed"`
	LongOK      int `json:"long_ok"`
	LongFailed  int `json:"long_failed"`
	// MinInRotation is the fewest nodes HAProxy had in rotation.
	MinInRotation int         `json:"min_in_rotation"`
	Rollout       float64     `json:"rollout_s"` // first pre's start to the last exit's end
	Nodes         []FleetNode `json:"nodes"`

	capacity sandbox.Capacity
}

// FleetNode is one node's part of a rollout.
type FleetNode struct {
	Name string `json:"name"`
	// Cycle is its pre's start to its exit's end.
	Cycle float64 `json:"cycle_s"`
	// OutOfRotation is how long HAProxy had it out (sampled every 100 ms).
	OutOfRotation float64 `json:"out_of_rotation_s"`
	Codes         [3]int  `json:"pre_post_exit_codes"`
}

// Errors is every failed client request.
func (r FleetRun) Errors() int { return r.ShortFailed + r.LongFailed }

// rollout runs one mode x scenario rollout on a fleet in service.
func (f *fleet) rollout(ctx context.Context, mode, scenario, reuse string, iter int) (r FleetRun, err error) {
	r = FleetRun{Mode: mode, Scenario: scenario, Reuse: reuse, Iter: iter}
	name := rolloutName(r)
	logf, err := os.Create(filepath.Join(f.logDir, name+".log"))
	if err != nil {
		return r, err
	}
	defer logf.Close()
	dir, err := os.MkdirTemp("", "pa-flb") // short: it holds the admin socket
	if err != nil {
		return r, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "haproxy.sock")

	var servers []string
	checkPath := ""
	for i, b := range f.nodes {
		path, opts, lbSection := fleetLB(mode, sock, i)
		checkPath = path
		servers = append(servers, fmt.Sprintf("%s %s:%d check%s inter 2s fall 2 rise 2", nodeName(i), f.lbNet.NodeAddr(i), b.n.Opts.Port, opts))
		if mode == mTutorial {
			continue
		}
		if err := b.writeConfig(name, lbSection); err != nil {
			return r, err
		}
		if b.daemon, err = b.startDaemon(ctx); err != nil {
			return r, fmt.Errorf("%s: %w", nodeName(i), err)
		}
	}
	defer func() {
		for _, b := range f.nodes {
			stopDaemon(b.daemon)
			b.daemon = nil
		}
	}()
	// The LB of the fleet: checks every 2 s, fall 2, rise 2 and no
	// retries, as issue 15's harness measured.
	h, err := sandbox.StartHAProxy(f.lbNet.NS, dir, sandbox.HTTPConfig(18080, reuse, checkPath, servers))
	if err != nil {
		return r, err
	}
	defer h.Stop()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for i := range f.nodes {
		if err := h.WaitStatus(wctx, "be", nodeName(i), "UP"); err != nil {
			return r, fmt.Errorf("before the rollout: %w\n%s", err, h.Log())
		}
	}

	start := time.Now()
	front := "http://127.0.0.1:18080"
	short := f.lbNet.Load(ctx, front+"/", sandbox.LoadOptions{Every: 20 * time.Millisecond, Timeout: 10 * time.Second})
	long := f.lbNet.Load(ctx, front+"/slow?ms=800", sandbox.LoadOptions{Every: 100 * time.Millisecond, Timeout: 10 * time.Second})
	smp := startSampler(ctx, &lb.HAProxy{Socket: sock, Backend: "be"}, start, 100*time.Millisecond)
	stopped := false
	stopAll := func() (sandbox.Stats, sandbox.Stats, []sample) {
		stopped = true
		return short.Stop(), long.Stop(), smp.stop()
	}
	defer func() {
		if !stopped {
			stopAll()
		}
	}()
	time.Sleep(2 * time.Second)

	var tracks []sandbox.Track
	var first, last time.Time
	for i, b := range f.nodes {
		var s [3]string
		if mode == mTutorial {
			s[0], s[1], s[2] = scripts(b.n, true)
		}
		c := b.cycle(ctx, mode != mTutorial, scenario == sReboot, s, logf)
		if first.IsZero() {
			first = c.pre.Start
		}
		last = c.exit.End
		r.Nodes = append(r.Nodes, FleetNode{Name: nodeName(i), Cycle: c.exit.End.Sub(c.pre.Start).Seconds(), Codes: [3]int{c.pre.Code, c.post.Code, c.exit.Code}})
		tracks = append(tracks, sandbox.Track{Name: nodeName(i), Phases: c.bands(start)})
		if msg := c.failed(); msg != "" {
			r.Failed = append(r.Failed, nodeName(i)+": "+msg)
		}
	}
	time.Sleep(3 * time.Second) // the LB's view after the last exit
	ss, ls, samples := stopAll()
	r.ShortOK, r.ShortFailed = ss.OK, ss.Failed+ss.Refused
	r.LongOK, r.LongFailed = ls.OK, ls.Failed+ls.Refused
	r.Rollout = last.Sub(first).Seconds()
	names := make([]string, len(f.nodes))
	for i := range names {
		names[i] = nodeName(i)
	}
	steps, outs, minIn := capacityFrom(samples, names)
	r.MinInRotation = minIn
	for i := range tracks {
		tracks[i].Out = outs[i]
		r.Nodes[i].OutOfRotation = spanSum(outs[i]).Seconds()
	}
	load := ss
	for i, b := range ls.Timeline {
		for len(load.Timeline) <= i {
			load.Timeline = append(load.Timeline, sandbox.Bucket{})
		}
		load.Timeline[i].OK += b.OK
		load.Timeline[i].Failed += b.Failed
		load.Timeline[i].Refused += b.Refused
	}
	load.Total, load.OK, load.Failed, load.Refused = ss.Total+ls.Total, ss.OK+ls.OK, ss.Failed+ls.Failed, ss.Refused+ls.Refused
	r.capacity = sandbox.Capacity{Steps: steps, Nodes: tracks, Load: load}
	fmt.Fprintf(logf, "==== short: %s\n%s\n==== long: %s\n==== run: %+v\n==== haproxy\n%s\n", ss, ss.TimelineString(), ls, r, h.Log())
	return r, nil
}

// rolloutName names a rollout's log and SVG.
func rolloutName(r FleetRun) string {
	return fmt.Sprintf("fleet_%s_%s_reuse-%s_%d", r.Mode, r.Scenario, r.Reuse, r.Iter)
}

// bands are the cycle's phases as offsets from start.
func (c nodeCycle) bands(start time.Time) []sandbox.Band {
	var out []sandbox.Band
	add := func(name string, s, e time.Time) {
		if !s.IsZero() {
			out = append(out, sandbox.Band{Name: name, Start: s.Sub(start), End: e.Sub(start)})
		}
	}
	add("pre", c.pre.Start, c.pre.End)
	add("patch", c.patchStart, c.patchEnd)
	add("post", c.post.Start, c.post.End)
	add("reboot", c.rebootStart, c.rebootEnd)
	add("exit", c.exit.Start, c.exit.End)
	return out
}

// sample is what HAProxy said of every server at one time.
type sample struct {
	at     time.Duration
	status map[string]string
}

type sampler struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	samples []sample
}

// startSampler reads h's backend stats every interval until stop.
func startSampler(ctx context.Context, h *lb.HAProxy, start time.Time, every time.Duration) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{cancel: cancel}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for ctx.Err() == nil {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			all, err := h.BackendStats(rctx)
			rcancel()
			if err == nil {
				st := map[string]string{}
				for name, v := range all {
					st[name] = v.Status
				}
				s.mu.Lock()
				s.samples = append(s.samples, sample{time.Since(start), st})
				s.mu.Unlock()
			}
			select {
			case <-ctx.Done():
			case <-time.After(every):
			}
		}
	}()
	return s
}

func (s *sampler) stop() []sample {
	s.cancel()
	s.wg.Wait()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.samples
}

// inRotation: HAProxy sends new requests to a server whose status is UP,
// including "UP 1/2" (a check failed, not yet fall); DOWN, "DOWN 1/2"
// (coming up), DRAIN, MAINT and NOLB get none.
func inRotation(status string) bool { return strings.HasPrefix(status, "UP") }

// capacityFrom turns the samples into the in-rotation count over time (a
// step whenever it changes), each named node's spans out of rotation (from
// the sample that saw it out to the next that saw it in, or the last
// sample), and the smallest count seen. A server absent from a sample
// counts as out.
func capacityFrom(samples []sample, names []string) (steps []sandbox.Step, out [][]sandbox.Band, minIn int) {
	out = make([][]sandbox.Band, len(names))
	outSince := make([]time.Duration, len(names))
	for i := range outSince {
		outSince[i] = -1
	}
	minIn = len(names)
	for _, s := range samples {
		n := 0
		for i, name := range names {
			in := inRotation(s.status[name])
			if in {
				n++
			}
			switch {
			case !in && outSince[i] < 0:
				outSince[i] = s.at
			case in && outSince[i] >= 0:
				out[i] = append(out[i], sandbox.Band{Name: "out", Start: outSince[i], End: s.at})
				outSince[i] = -1
			}
		}
		minIn = min(minIn, n)
		if len(steps) == 0 || steps[len(steps)-1].InRotation != n {
			steps = append(steps, sandbox.Step{At: s.at, InRotation: n})
		}
	}
	if len(samples) == 0 {
		return nil, out, 0
	}
	end := samples[len(samples)-1].at
	for i := range names {
		if outSince[i] >= 0 {
			out[i] = append(out[i], sandbox.Band{Name: "out", Start: outSince[i], End: end})
		}
	}
	return steps, out, minIn
}

func spanSum(bs []sandbox.Band) time.Duration {
	var d time.Duration
	for _, b := range bs {
		d += b.End - b.Start
	}
	return d
}

// newFleet sets up n sandbox nodes (prefix+"0".., users prefix+"<i>-app"),
// each with the lockfile post needs, joined to the LB netns prefix+"lb".
func newFleet(ctx context.Context, prefix string, n int, binary, work, logDir string) (f *fleet, err error) {
	f = &fleet{logDir: logDir}
	defer func() {
		if err != nil {
			err = errors.Join(err, f.teardown())
		}
	}()
	var nodes []*sandbox.Node
	for i := range n {
		p := fmt.Sprintf("%s%d", prefix, i)
		status("setting up the sandbox %s", p)
		node, err := sandbox.Setup(ctx, sandbox.Options{Prefix: p, AppUser: p + "-app"})
		if err != nil {
			return f, err
		}
		nodes = append(nodes, node)
		dir := filepath.Join(work, p)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return f, err
		}
		f.nodes = append(f.nodes, &bench{n: node, binary: binary, work: dir, logDir: logDir})
		if err := ensureLockfile(ctx, node); err != nil {
			return f, err
		}
	}
	if f.lbNet, err = sandbox.JoinLB(ctx, prefix+"lb", nodes); err != nil {
		return f, err
	}
	return f, nil
}

func (f *fleet) reset(ctx context.Context) error {
	for _, b := range f.nodes {
		if err := b.reset(ctx); err != nil {
			return fmt.Errorf("%s: %w", b.n.Opts.Prefix, err)
		}
	}
	return nil
}

func (f *fleet) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	if f.lbNet != nil {
		errs = append(errs, f.lbNet.Teardown(ctx))
	}
	for _, b := range f.nodes {
		stopDaemon(b.daemon)
		errs = append(errs, b.n.Teardown(ctx))
	}
	return errors.Join(errs...)
}
