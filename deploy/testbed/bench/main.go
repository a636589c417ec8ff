// Command bench compares patchagent with the three scripts of AWS's
// AWS-RunPatchBaselineWithHooks tutorial on the sandbox node, under the same
// client load: `go run ./deploy/testbed/bench -n 3 -out bench-results` as root,
// with the patchagent binary -patchagent (default bin/patchagent: `make
// bench` builds it with the Makefile's flags first). It writes results.md,
// results.json and one timeline SVG per variant x scenario into -out, and
// prints results.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

func main() {
	n := flag.Int("n", 3, "runs per variant x scenario")
	out := flag.String("out", "bench-results", "output directory")
	prefix := flag.String("prefix", "pa-bn", "sandbox namespace prefix")
	binary := flag.String("patchagent", "bin/patchagent", "the patchagent binary (make build)")
	variants := flag.String("variants", strings.Join(allVariants, ","), "variants to run")
	scenarios := flag.String("scenarios", strings.Join(allScenarios, ","), "scenarios to run")
	noCost := flag.Bool("skip-cost", false, "skip the agent cost figures")
	fleet := flag.Int("fleet", 0, "run the fleet bench instead: this many nodes behind a real HAProxy (-n rollouts per mode x scenario)")
	modes := flag.String("modes", strings.Join(allModes, ","), "fleet modes to run")
	fleetSc := flag.String("fleet-scenarios", strings.Join(fleetScenarios, ","), "fleet scenarios to run")
	reuse := flag.String("http-reuse", strings.Join(reuseModes, ","), "HAProxy http-reuse settings the fleet bench runs")
	flag.Parse()
	var err error
	if *fleet > 0 {
		err = fleetMainErr(*fleet, *n, *out, *prefix, *binary, split(*modes), split(*fleetSc), split(*reuse))
	} else {
		err = mainErr(*n, *out, *prefix, *binary, split(*variants), split(*scenarios), !*noCost)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// known checks that every one of got (the kind of thing a flag names) is
// one of want.
func known(kind string, got, want []string) error {
	for _, g := range got {
		if !slices.Contains(want, g) {
			return fmt.Errorf("unknown %s %q (want %v)", kind, g, want)
		}
	}
	return nil
}

// workDirs makes a bench's scratch dir (the caller removes it) and outDir's
// logs/.
func workDirs(outDir, pattern string) (work, logDir string, err error) {
	logDir = filepath.Join(outDir, "logs")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", "", err
	}
	work, err = os.MkdirTemp("", pattern)
	return work, logDir, err
}

// checkRun checks what every bench needs: root, -n, the binary (its
// absolute path returned).
func checkRun(n int, binary string) (string, error) {
	if os.Geteuid() != 0 {
		return "", errors.New("needs root (network namespaces, iptables inside them, pm2 as the app user)")
	}
	if n < 1 {
		return "", errors.New("-n must be at least 1")
	}
	binary, err := filepath.Abs(binary)
	if err != nil {
		return "", err
	}
	if st, err := os.Stat(binary); err != nil {
		return "", fmt.Errorf("the patchagent binary (make build, or -patchagent): %w", err)
	} else if !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("the patchagent binary %s is not an executable file (make build, or -patchagent)", binary)
	}
	return binary, nil
}

func fleetMainErr(nodes, n int, outDir, prefix, binary string, modes, scenarios, reuses []string) error {
	binary, err := checkRun(n, binary)
	if err != nil {
		return err
	}
	if prefix == "pa-bn" {
		prefix = "pa-f" // the single-node bench's default: the fleet names its nodes pa-f0..
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return fleetMain(ctx, nodes, n, outDir, prefix, binary, modes, scenarios, reuses)
}

func mainErr(n int, outDir, prefix, binary string, variants, scenarios []string, cost bool) error {
	binary, err := checkRun(n, binary)
	if err != nil {
		return err
	}
	if err := errors.Join(known("variant", variants, allVariants), known("scenario", scenarios, allScenarios)); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	work, logDir, err := workDirs(outDir, "patchagent-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	status("setting up the sandbox %s", prefix)
	node, err := sandbox.Setup(ctx, sandbox.Options{Prefix: prefix, AppUser: "pa-bn-app"})
	if err != nil {
		return err
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := node.Teardown(tctx); err != nil {
			status("teardown: %v", err)
		}
	}()
	b := &bench{n: node, binary: binary, work: work, logDir: logDir}
	defer func() { stopDaemon(b.daemon) }()

	// post: the sample app has no dependencies; npm update needs no registry
	// then, only a lockfile (patchagent post requires one in sync).
	if err := ensureLockfile(ctx, node); err != nil {
		return err
	}

	status("measuring the app's own start-to-healthy time")
	if b.appStart, err = b.measureAppStart(ctx, 3); err != nil {
		return err
	}
	res := Results{Started: time.Now(), N: n, AppStart: b.appStart.Seconds(), NPMMode: npmMode,
		Load: "4 workers from the client netns, GET / on a new connection each, 20 ms pause, 2 s timeout per request; probe every 20 ms"}
	byKey := map[string][]Run{}
	for _, sc := range scenarios {
		for _, v := range variants {
			for i := range n {
				if err := ctx.Err(); err != nil {
					return err
				}
				if err := b.reset(ctx); err != nil {
					return fmt.Errorf("resetting the node before %s/%s #%d: %w", v, sc, i+1, err)
				}
				status("%s / %s #%d", v, sc, i+1)
				r, err := b.run(ctx, v, sc, i+1)
				if err != nil {
					return fmt.Errorf("%s/%s #%d: %w", v, sc, i+1, err)
				}
				status("  codes %d/%d/%d back=%v out-of-service=%.1fs dead=%.1fs failed=%d early=%d %s",
					r.PreCode, r.PostCode, r.ExitCode, r.BackInService, r.OutOfService, r.DeadTime, r.LoadFailed, r.Early(), r.Error)
				res.Runs = append(res.Runs, r)
				byKey[v+"|"+sc] = append(byKey[v+"|"+sc], r)
			}
			runs := byKey[v+"|"+sc]
			s := summarize(runs)
			res.Summaries = append(res.Summaries, s)
			m := runs[s.MedianRun]
			svg := filepath.Join(outDir, fmt.Sprintf("timeline_%s_%s.svg", v, strings.ReplaceAll(sc, "+", "-")))
			title := fmt.Sprintf("%s, %s (run %d, median out of service %.1f s)", v, sc, m.Iter, m.OutOfService)
			if err := sandbox.WriteTimelineSVG(svg, title, m.stats, m.bands); err != nil {
				return err
			}
		}
	}
	if err := b.reset(ctx); err != nil {
		return fmt.Errorf("resetting the node: %w", err)
	}
	if cost {
		status("measuring the agent's cost")
		c, err := b.agentCost(ctx)
		if err != nil {
			return err
		}
		res.Cost = &c
	}
	return writeResults(outDir, "results", renderMarkdown(res), res)
}

// writeResults writes a bench's report md as name.md and res as name.json
// into outDir, and prints the report.
func writeResults(outDir, name, md string, res any) error {
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, name+".md"), []byte(md), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(outDir, name+".json"), append(js, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Print(md)
	return nil
}

// npmMode is what post's npm update runs against in every bench.
const npmMode = "the sample app (no dependencies) with a package-lock.json generated once offline; the tutorial's `npm update` and patchagent post's `npm update` both run against it, no registry"

// ensureLockfile generates the sample app's package-lock.json once,
// offline: patchagent post requires one in sync.
func ensureLockfile(ctx context.Context, node *sandbox.Node) error {
	if _, err := os.Stat(filepath.Join(node.AppDir, "package-lock.json")); err == nil {
		return nil
	}
	if out, err := node.NPM(ctx, "install", "--package-lock-only", "--offline", "--no-audit", "--no-fund"); err != nil {
		return fmt.Errorf("generating the lockfile in %s: %v\n%s", node.AppDir, err, out)
	}
	return nil
}

func status(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: %s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// agentCost measures the daemon at rest, the binary, a nothing-to-do
// reconcile through the daemon, and runs the connection-counting benchmark.
func (b *bench) agentCost(ctx context.Context) (AgentCost, error) {
	var c AgentCost
	if st, err := os.Stat(b.binary); err == nil {
		c.BinaryBytes = st.Size()
	}
	if err := b.writeConfig("cost", ""); err != nil {
		return c, err
	}
	d, err := b.startDaemon(ctx)
	if err != nil {
		return c, err
	}
	b.daemon = d
	defer func() { stopDaemon(d); b.daemon = nil }()
	time.Sleep(2 * time.Second) // past its start
	const window = 30 * time.Second
	cpu0, err := procCPU(d.PID())
	if err != nil {
		return c, err
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return c, ctx.Err()
	case <-time.After(window):
	}
	cpu1, err := procCPU(d.PID())
	if err != nil {
		return c, err
	}
	c.IdleWindow = time.Since(t0).Seconds()
	c.IdleCPUSeconds = cpu1 - cpu0
	if c.IdleRSSKiB, err = procRSS(d.PID()); err != nil {
		return c, err
	}
	var rt []float64
	for range 10 {
		r := b.patchagent(ctx, false, "reconcile")
		if r.Code != 0 {
			return c, fmt.Errorf("reconcile through the daemon: exit %d: %s", r.Code, r.Output)
		}
		rt = append(rt, r.End.Sub(r.Start).Seconds())
	}
	c.ReconcileMedian, c.ReconcileSamples = median(rt), len(rt)

	cmd := exec.CommandContext(ctx, "go", "test", "-tags", "integration", "-run", "^$", "-bench", "BenchmarkConns", "-benchtime", "10x", "./firewall/")
	out, err := cmd.CombinedOutput()
	c.ConnsLines = connsLines(string(out))
	if err != nil {
		c.ConnsError = fmt.Sprintf("%v: %s", err, lastLines(string(out), 5))
	}
	return c, nil
}

func lastLines(s string, k int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-k):], "\n")
}

// procCPU returns utime+stime of pid in seconds (/proc/pid/stat, USER_HZ 100).
func procCPU(pid int) (float64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return parseStatCPU(string(raw), 100)
}

// parseStatCPU reads utime and stime (fields 14 and 15) of a /proc/pid/stat line.
func parseStatCPU(stat string, hz float64) (float64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	// f[0] is field 3 (state): utime is field 14, stime 15.
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("malformed utime/stime in /proc stat")
	}
	return float64(u+s) / hz, nil
}

// procRSS returns VmRSS of pid in KiB.
func procRSS(pid int) (int64, error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(raw), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			return strconv.ParseInt(f[1], 10, 64)
		}
	}
	return 0, errors.New("no VmRSS")
}
