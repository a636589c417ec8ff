package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// Load shape: short requests, each on a new connection.
const (
	workers  = 4
	interval = 20 * time.Millisecond
)

// cycle runs the demo on a node that is up: a daemon, client load, and
// pre, a simulated patch, post, a simulated reboot and exit through the
// CLI. It stops every daemon it started before returning.
type cycle struct {
	n    *sandbox.Node
	bin  string
	cfg  string
	dir  string
	out  *console
	mu   sync.Mutex
	d    *sandbox.Daemon
	load *sandbox.Load

	origin   time.Time
	stage    atomic.Value // string
	drain    atomic.Value // string: pre's last drain line
	longDone atomic.Int32
	longAll  int
}

func (c *cycle) daemon() *sandbox.Daemon {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.d
}

func (c *cycle) setDaemon(d *sandbox.Daemon) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.d = d
}

// startDaemon starts a daemon and waits for READY=1; without it the daemon
// is stopped and none is recorded.
func (c *cycle) startDaemon(ctx context.Context) error {
	d, err := c.n.StartDaemon(ctx, c.bin, c.cfg, c.dir, 30*time.Second)
	if err != nil {
		return err
	}
	c.setDaemon(d)
	return nil
}

// stopDaemon sends SIGTERM to the running daemon, if any.
func (c *cycle) stopDaemon() error {
	d := c.daemon()
	if d == nil {
		return nil
	}
	err := d.Stop()
	c.setDaemon(nil)
	return err
}

func (c *cycle) setStage(s string) { c.stage.Store(s) }

// ticker redraws the progress line every 500 ms until ctx ends.
func (c *cycle) ticker(ctx context.Context) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		c.showProgress()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *cycle) showProgress() {
	p := progress{Elapsed: time.Since(c.origin), LongAll: c.longAll, LongDone: int(c.longDone.Load())}
	p.Stage, _ = c.stage.Load().(string)
	p.Drain, _ = c.drain.Load().(string)
	if d := c.daemon(); d != nil {
		p.Daemon = d.Status()
	} else {
		p.Daemon = "not running"
	}
	if c.load != nil {
		s := c.load.Stats()
		p.OK, p.Refused, p.Failed = s.OK, s.Refused, s.Failed
	}
	c.out.progress(p)
}

// run is the cycle.
func (c *cycle) run(ctx context.Context) (res demoResult, err error) {
	say := c.out.say
	c.setStage("daemon start")
	say("== patchagent daemon in netns %s (NOTIFY_SOCKET of our own, as systemd runs it)", c.n.ServerNS)
	if err := c.startDaemon(ctx); err != nil {
		return res, err
	}
	defer func() {
		if serr := c.stopDaemon(); serr != nil && err == nil {
			err = serr
		}
	}()
	say("   READY=1: %s", c.daemon().Status())

	say("== load from netns %s: %d clients, GET / on a new connection each, every %s", c.n.ClientNS, workers, interval)
	c.origin = time.Now()
	res.Origin, res.Workers, res.Interval = c.origin, workers, interval
	c.load = c.n.Load(ctx, sandbox.LoadOptions{Workers: workers, Interval: interval})
	defer func() { res.Stats = c.load.Stop() }()
	tctx, stopTicker := context.WithCancel(ctx)
	var tw sync.WaitGroup
	tw.Add(1)
	go func() { defer tw.Done(); c.ticker(tctx) }()
	defer func() { stopTicker(); tw.Wait(); c.out.endProgress() }()
	c.setStage("load")
	if err := sleep(ctx, 1500*time.Millisecond); err != nil {
		return res, err
	}

	paths := []string{"/slow?ms=3000", "/slow?ms=3000", "/slow?ms=6000"}
	say("== long requests in flight when pre starts: %s", strings.Join(paths, ", "))
	c.longAll = len(paths)
	longs := make([]longResult, len(paths))
	var lw sync.WaitGroup
	for i, p := range paths {
		lw.Add(1)
		go func() {
			defer lw.Done()
			start := time.Now()
			code, err := sandbox.Get(ctx, c.n.Client(false), c.n.URL(p, false))
			longs[i] = longResult{Path: p, Code: code, Err: err, Took: time.Since(start)}
			c.longDone.Add(1)
		}()
	}
	defer func() { lw.Wait(); res.Long = longs }()
	if err := sleep(ctx, 300*time.Millisecond); err != nil {
		return res, err
	}

	c.setStage("pre")
	say("== patchagent pre (through the daemon): block, drain, stop")
	if res.Pre, err = c.phase(ctx, "pre"); err != nil {
		return res, err
	}

	c.setStage("patch (simulated)")
	say("== the OS patch (simulated: 2 s)")
	res.Patch.Start = time.Now()
	if err := sleep(ctx, 2*time.Second); err != nil {
		return res, err
	}
	res.Patch.End = time.Now()

	c.setStage("post")
	say("== patchagent post (post.npm.enabled false: the sample app has no dependencies and there is no registry)")
	if res.Post, err = c.phase(ctx, "post"); err != nil {
		return res, err
	}

	c.setStage("reboot (simulated)")
	say("== the reboot (simulated): daemon stopped (SIGTERM), pm2 killed, firewall flushed, new boot id,")
	say("   a new daemon started at boot before pm2 (its boot reconciliation re-blocks), then pm2 resurrect")
	res.Reboot.Start = time.Now()
	if err := c.stopDaemon(); err != nil {
		return res, err
	}
	err = c.n.Reboot(ctx, func() error {
		if err := c.startDaemon(ctx); err != nil {
			return err
		}
		fw, err := c.n.ServerFirewall(ctx, false)
		res.Reblocked = err == nil && strings.Contains(fw, "PATCHAGENT-BLOCK")
		return nil
	})
	res.Reboot.End = time.Now()
	if err != nil {
		return res, err
	}
	say("   new daemon READY=1: %s", c.daemon().Status())

	c.setStage("exit")
	say("== patchagent exit (through the daemon): start, health, unblock")
	if res.Exit, err = c.phase(ctx, "exit"); err != nil {
		return res, err
	}
	c.setStage("back in service")
	if err := sleep(ctx, time.Second); err != nil {
		return res, err
	}
	return res, nil
}

// phase runs `patchagent <name> --output json` in the node's netns as SSM
// runs it; its stderr progress lines feed the live line.
func (c *cycle) phase(ctx context.Context, name string) (phaseRun, error) {
	var pr phaseRun
	cmd := sandbox.NetnsCommand(c.n.ServerNS, c.bin, name, "--config", c.cfg, "--output", "json")
	cmd.Env = []string{"PATH=" + sandbox.SSMPath}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return pr, err
	}
	pr.Start = time.Now()
	if err := cmd.Start(); err != nil {
		return pr, fmt.Errorf("running patchagent %s: %w", name, err)
	}
	stop := context.AfterFunc(ctx, func() { _ = cmd.Process.Kill() })
	defer stop()
	var errLines []string
	sc := bufio.NewScanner(stderr)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "drain:") {
			c.drain.Store(l)
		}
		if strings.Contains(l, "running the phase in this process") {
			c.out.say("   warning: %s", l)
		}
		errLines = append(errLines, l)
	}
	werr := cmd.Wait()
	pr.End = time.Now()
	if name == "pre" {
		c.drain.Store("")
	}
	if ctx.Err() != nil {
		return pr, ctx.Err()
	}
	var rep agent.Report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		return pr, fmt.Errorf("patchagent %s (%v) printed no JSON report: %v\n%s\n%s", name, werr, err, stdout.String(), strings.Join(errLines, "\n"))
	}
	pr.Rep = &rep
	c.out.say("   %s", rep.Verdict())
	if werr != nil || rep.ExitCode != 0 {
		return pr, fmt.Errorf("patchagent %s failed (%v):\n%s", name, werr, rep.Text())
	}
	return pr, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// writeConfig writes the root-owned 0600 config for the node into dir.
func writeConfig(n *sandbox.Node, dir string) (string, error) {
	extra := "  watch_interval: 250ms\n" +
		"drain:\n  idle: 500ms\n" +
		"post:\n  npm:\n    enabled: false\n"
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(n.PatchagentConfig(filepath.Join(dir, "state"), "", extra)), 0o600); err != nil {
		return "", err
	}
	return path, nil
}
