package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// Variants and scenarios.
const (
	vTutorial   = "tutorial"
	vFixed      = "tutorial-fixed"
	vPatchagent = "patchagent"

	sReboot   = "reboot"
	sNoReboot = "no-reboot"
	sLong     = "reboot+long-requests"
)

var (
	allVariants  = []string{vTutorial, vFixed, vPatchagent}
	allScenarios = []string{sReboot, sNoReboot, sLong}
	// longRequests are the /slow requests in flight at pre (scenario c).
	longRequests = []time.Duration{3 * time.Second, 3 * time.Second, 8 * time.Second}
)

// patchTime is the simulated OS patch between pre and post.
const patchTime = 2 * time.Second

// phaseResult is one hook run.
type phaseResult struct {
	Code   int
	Start  time.Time
	End    time.Time
	Output string
	// Trace: for scripts, each `sh -x` trace line with when it was read.
	Trace []traceLine
	// Report: for patchagent, the phase's JSON report.
	Report *agent.Report
}

type traceLine struct {
	At   time.Time
	Line string
}

// traceAt returns when the first trace line starting with prefix was read.
func (p phaseResult) traceAt(prefix string) (time.Time, bool) {
	for _, l := range p.Trace {
		if strings.HasPrefix(l.Line, prefix) {
			return l.At, true
		}
	}
	return time.Time{}, false
}

// steps returns the report's steps.
// step is when the report's step name began and ended: the CLI's start
// plus the offsets in the report.
func (p phaseResult) step(name string) (start, end time.Time, ok bool) {
	if p.Report == nil {
		return time.Time{}, time.Time{}, false
	}
	s, e, ok := p.Report.StepSpan(name)
	return p.Start.Add(s), p.Start.Add(e), ok
}

// bench holds what every run shares.
type bench struct {
	n        *sandbox.Node
	binary   string
	work     string // temp dir: configs, state, daemon logs
	logDir   string
	appStart time.Duration
	daemon   *sandbox.Daemon
	cfg      string // patchagent config of the current run
}

// runScript runs script with `sh -xc` inside the node's netns as SSM would:
// root, no HOME, SSM's PATH, cwd /. The trace lines are timestamped as read.
func (b *bench) runScript(ctx context.Context, script string) phaseResult {
	if !sandbox.NetnsExists(b.n.ServerNS) {
		return phaseResult{Code: -1, Output: "netns " + b.n.ServerNS + " missing: refusing to run"}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", b.n.ServerNS, "sh", "-xc", script)
	cmd.Env = []string{"PATH=" + sandbox.SSMPath}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	var out bytes.Buffer
	var mu sync.Mutex
	cmd.Stdout = lockedWriter{&mu, &out}
	errPipe, err := cmd.StderrPipe()
	r := phaseResult{Start: time.Now()}
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		r.Code, r.End, r.Output = -1, time.Now(), err.Error()
		return r
	}
	sc := bufio.NewScanner(errPipe)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "+ ") {
			r.Trace = append(r.Trace, traceLine{time.Now(), strings.TrimPrefix(l, "+ ")})
		}
		mu.Lock()
		out.WriteString(l + "\n")
		mu.Unlock()
	}
	err = cmd.Wait()
	r.End = time.Now()
	r.Code = exitCode(err)
	r.Output = out.String()
	return r
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		if ee.ExitCode() < 0 {
			return 128 + int(ee.Sys().(syscall.WaitStatus).Signal())
		}
		return ee.ExitCode()
	default:
		return -1
	}
}

// patchagent runs `patchagent <args> --config cfg` inside the node's netns
// as SSM would (root, no HOME, SSM's PATH); with asJSON it decodes the report.
func (b *bench) patchagent(ctx context.Context, asJSON bool, args ...string) phaseResult {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	args = append(args, "--config", b.cfg)
	if asJSON {
		args = append(args, "--output", "json")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", b.n.ServerNS, b.binary}, args...)...)
	cmd.Env = []string{"PATH=" + sandbox.SSMPath}
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	r := phaseResult{Start: time.Now()}
	err := cmd.Run()
	r.End = time.Now()
	r.Code = exitCode(err)
	r.Output = stdout.String() + stderr.String()
	if asJSON {
		var rep agent.Report
		if jerr := json.Unmarshal(stdout.Bytes(), &rep); jerr == nil {
			r.Report = &rep
		}
	}
	return r
}

// startDaemon starts the daemon as systemd would and waits for READY=1 (the
// daemon re-applies an open cycle's block before it).
func (b *bench) startDaemon(ctx context.Context) (*sandbox.Daemon, error) {
	return b.n.StartDaemon(ctx, b.binary, b.cfg, b.work, 30*time.Second)
}

// stopDaemon stops d (systemctl stop), if there is one.
func stopDaemon(d *sandbox.Daemon) {
	if d != nil {
		_ = d.Stop()
	}
}

// writeConfig writes a fresh patchagent config (and state dir) for one run;
// more holds further sections (e.g. lb:).
func (b *bench) writeConfig(name, more string) error {
	dir := filepath.Join(b.work, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	body := b.n.PatchagentConfig(filepath.Join(dir, "state"), "  dir: "+b.n.AppDir+"\n",
		"  metrics_listen: 127.0.0.1:18749\npost:\n  npm:\n    fetch_timeout: 10s\n"+more)
	b.cfg = filepath.Join(dir, "config.yaml")
	return os.WriteFile(b.cfg, []byte(body), 0o600)
}

// reset puts the node back in service between runs: the server netns's
// filter table emptied (never the host's), the app dir owned by the app user
// again (the tutorial's npm update runs as root), the app online and healthy.
func (b *bench) reset(ctx context.Context) error {
	if err := b.n.FlushFirewall(ctx); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "chown", "-R", fmt.Sprintf("%d:%d", b.n.UID, b.n.GID), b.n.AppDir).CombinedOutput(); err != nil {
		return fmt.Errorf("chown %s: %v: %s", b.n.AppDir, err, out)
	}
	if err := b.n.StartApp(ctx); err != nil {
		return err
	}
	return b.n.WaitHealthy(ctx, 20*time.Second)
}

// measureAppStart is the app's own start-to-healthy time: pm2 stop, then
// pm2 start and a health request from outside every 5 ms, unblocked; the
// median of k.
func (b *bench) measureAppStart(ctx context.Context, k int) (time.Duration, error) {
	var ds []time.Duration
	for range k {
		d, err := b.n.AppStartTime(ctx, 30*time.Second)
		if err != nil {
			return 0, err
		}
		ds = append(ds, d)
	}
	return medianDuration(ds), nil
}

// Run is one variant x scenario run.
type Run struct {
	Variant  string `json:"variant"`
	Scenario string `json:"scenario"`
	Iter     int    `json:"iteration"`
	Error    string `json:"error,omitempty"`

	PreCode  int `json:"pre_exit_code"`
	PostCode int `json:"post_exit_code"`
	ExitCode int `json:"exit_exit_code"`
	// BackInService: a new outside connection got 200 within 5 s after exit returned.
	BackInService bool `json:"back_in_service"`

	OutOfService float64 `json:"out_of_service_s"`
	NeverBack    bool    `json:"never_back"`
	DeadTime     float64 `json:"dead_time_s"`
	Overheads    struct {
		Patch, NPM, Reboot, AppStart, InFlight float64
	} `json:"overheads_s"`

	LoadOK        int    `json:"load_ok"`
	LoadRefused   int    `json:"load_refused"`
	LoadFailed    int    `json:"load_failed"`
	LoadLastError string `json:"load_last_error,omitempty"`
	LongOK        int    `json:"long_ok"`
	LongFailed    int    `json:"long_failed"`
	// Accepted from outside after post (the reboot) and before the health
	// check passed: probe attempts answered and load requests answered 200.
	EarlyProbe int `json:"accepted_early_probe"`
	EarlyLoad  int `json:"accepted_early_load"`

	// Phase bands, seconds from the load start.
	Bands []bandJSON `json:"bands"`

	stats sandbox.Stats
	bands []sandbox.Band
}

type bandJSON struct {
	Name  string  `json:"name"`
	Start float64 `json:"start_s"`
	End   float64 `json:"end_s"`
}

// Early is the number accepted early, probe + load.
func (r Run) Early() int { return r.EarlyProbe + r.EarlyLoad }

// run does one variant x scenario run on a node in service.
func (b *bench) run(ctx context.Context, variant, scenario string, iter int) (r Run, err error) {
	r = Run{Variant: variant, Scenario: scenario, Iter: iter}
	name := fmt.Sprintf("%s_%s_%d", variant, strings.ReplaceAll(scenario, "+", "-"), iter)
	logf, err := os.Create(filepath.Join(b.logDir, name+".log"))
	if err != nil {
		return r, err
	}
	defer logf.Close()
	if variant == vPatchagent {
		if err := b.writeConfig(name, ""); err != nil {
			return r, err
		}
		if b.daemon, err = b.startDaemon(ctx); err != nil {
			return r, err
		}
		defer func() { stopDaemon(b.daemon); b.daemon = nil }()
	}
	var pre, post, exit string
	if variant != vPatchagent {
		pre, post, exit = scripts(b.n, variant == vFixed)
		fmt.Fprintf(logf, "==== scripts\n--- pre\n%s--- post\n%s--- exit\n%s\n", pre, post, exit)
	}
	loadStart := time.Now()
	load := b.n.Load(ctx, sandbox.LoadOptions{Workers: 4, Path: "/", Interval: 20 * time.Millisecond, Timeout: 2 * time.Second})
	probe := b.n.Probe(ctx, sandbox.ProbeOptions{Interval: 20 * time.Millisecond})
	stopped := false
	stopAll := func() ([]sandbox.Attempt, sandbox.Stats) {
		stopped = true
		return probe.Stop(), load.Stop()
	}
	defer func() {
		if !stopped {
			stopAll()
		}
	}()
	time.Sleep(time.Second)

	// Long requests, started just before pre.
	type longRes struct {
		code int
		err  error
	}
	longCh := make(chan longRes, len(longRequests))
	var longStarts []time.Time
	if scenario == sLong {
		c := b.n.Client(false)
		for _, d := range longRequests {
			longStarts = append(longStarts, time.Now())
			go func() {
				cctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
				defer cancel()
				code, err := sandbox.Get(cctx, c, b.n.URL(fmt.Sprintf("/slow?ms=%d", d.Milliseconds()), false))
				longCh <- longRes{code, err}
			}()
		}
		time.Sleep(200 * time.Millisecond)
	}

	c := b.cycle(ctx, variant == vPatchagent, scenario != sNoReboot, [3]string{pre, post, exit}, logf)
	pr, po, ex := c.pre, c.post, c.exit
	r.PreCode, r.PostCode, r.ExitCode = pr.Code, po.Code, ex.Code
	if c.rebootErr != nil {
		r.Error = c.rebootErr.Error()
	}
	patchStart, patchEnd, rebootStart, rebootEnd, bootAgent := c.patchStart, c.patchEnd, c.rebootStart, c.rebootEnd, c.bootAgent

	// Back in service: a new outside connection gets 200 within 5 s.
	backDeadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(backDeadline) {
		if b.n.Health(ctx, false) == nil {
			r.BackInService = true
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	end := time.Now()
	attempts, stats := stopAll()
	r.stats = stats
	r.LoadOK, r.LoadRefused, r.LoadFailed, r.LoadLastError = stats.OK, stats.Refused, stats.Failed, stats.LastError
	if scenario == sLong {
		for range longRequests {
			if lr := <-longCh; lr.err == nil && lr.code == 200 {
				r.LongOK++
			} else {
				r.LongFailed++
			}
		}
	}

	// Marks.
	block := pr.Start
	if t, ok := pr.traceAt("iptables -I"); ok {
		block = t
	} else if t, _, ok := pr.step("block"); ok {
		block = t
	}
	healthPassed := ex.End // the scripts' curl never ran: no check before the end
	if variant == vPatchagent {
		if t, _, ok := ex.step("unblock"); ok && ex.Code == 0 {
			healthPassed = t
		}
	} else if t, ok := ex.traceAt("/usr/bin/curl"); ok {
		healthPassed = t
	}
	var ov Overheads
	ov.Patch = patchEnd.Sub(patchStart)
	ov.NPM = po.End.Sub(po.Start)
	if variant == vPatchagent {
		ov.NPM = 0
		if s, e, ok := po.step("update"); ok {
			ov.NPM = e.Sub(s)
		}
	}
	if !rebootStart.IsZero() {
		ov.Reboot = rebootEnd.Sub(rebootStart) - bootAgent
	}
	ov.AppStart = b.appStart
	ov.InFlight = inFlightRemaining(block, longStarts, longRequests)
	out := outOfService(attempts, pr.Start, ex.Start, end)
	r.OutOfService = out.Duration.Seconds()
	r.NeverBack = out.NeverBack()
	r.DeadTime = deadTime(out.Duration, ov).Seconds()
	r.Overheads.Patch, r.Overheads.NPM, r.Overheads.Reboot = ov.Patch.Seconds(), ov.NPM.Seconds(), ov.Reboot.Seconds()
	r.Overheads.AppStart, r.Overheads.InFlight = ov.AppStart.Seconds(), ov.InFlight.Seconds()
	r.EarlyProbe, r.EarlyLoad = acceptedEarly(attempts, stats.Timeline, loadStart, po.End, healthPassed)

	add := func(name string, s, e time.Time) {
		if s.IsZero() {
			return
		}
		r.bands = append(r.bands, sandbox.Band{Name: name, Start: s.Sub(loadStart), End: e.Sub(loadStart)})
		r.Bands = append(r.Bands, bandJSON{name, s.Sub(loadStart).Seconds(), e.Sub(loadStart).Seconds()})
	}
	add("pre", pr.Start, pr.End)
	add("patch", patchStart, patchEnd)
	add("post", po.Start, po.End)
	add("reboot", rebootStart, rebootEnd)
	add("exit", ex.Start, ex.End)
	fmt.Fprintf(logf, "==== load: %s\n%s\n==== outage: %+v\n==== run: %+v\n", stats, stats.TimelineString(), out, r)
	return r, nil
}

// nodeCycle is one node's pre, the OS patch, post, the reboot if any, and
// exit, as SSM runs them, and when each ran.
type nodeCycle struct {
	pre, post, exit        phaseResult
	patchStart, patchEnd   time.Time
	rebootStart, rebootEnd time.Time // zero without a reboot
	bootAgent              time.Duration
	rebootErr              error
}

// failed says what stopped the cycle, "" if every phase exited 0.
func (c nodeCycle) failed() string {
	switch {
	case c.pre.Code != 0:
		return fmt.Sprintf("pre exited %d", c.pre.Code)
	case c.post.Code != 0:
		return fmt.Sprintf("post exited %d", c.post.Code)
	case c.rebootErr != nil:
		return c.rebootErr.Error()
	case c.exit.Code != 0:
		return fmt.Sprintf("exit exited %d", c.exit.Code)
	}
	return ""
}

// cycle runs one node's cycle: with patchagent, its pre/post/exit (the
// daemon b.daemon restarted by the reboot before pm2, as systemd orders
// them), else the scripts; every phase runs, whatever the one before
// returned, as the bench's single-node runs always did (SSM would stop,
// the fleet rollout stops after the cycle). Each phase's output goes to
// logf.
func (b *bench) cycle(ctx context.Context, usePatchagent, reboot bool, scripts [3]string, logf io.Writer) (c nodeCycle) {
	phase := func(i int, which string) phaseResult {
		var p phaseResult
		if usePatchagent {
			p = b.patchagent(ctx, true, which)
		} else {
			p = b.runScript(ctx, scripts[i])
		}
		fmt.Fprintf(logf, "==== %s %s: exit %d in %s\n%s\n", b.n.Opts.Prefix, which, p.Code, p.End.Sub(p.Start).Round(time.Millisecond), p.Output)
		return p
	}
	c.pre = phase(0, "pre")
	c.patchStart = time.Now()
	time.Sleep(patchTime)
	c.patchEnd = time.Now()
	c.post = phase(1, "post")
	if reboot {
		if b.daemon != nil {
			stopDaemon(b.daemon) // shutdown stops every service
		}
		c.rebootStart = time.Now()
		c.rebootErr = b.n.Reboot(ctx, func() error {
			if !usePatchagent {
				return nil
			}
			t := time.Now()
			d, err := b.startDaemon(ctx)
			c.bootAgent = time.Since(t)
			b.daemon = d
			return err
		})
		c.rebootEnd = time.Now()
		if c.rebootErr != nil {
			fmt.Fprintf(logf, "==== reboot: %v\n", c.rebootErr)
		}
	}
	c.exit = phase(2, "exit")
	return c
}
