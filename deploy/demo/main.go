// Command demo runs `patchagent pre` on the sandbox node under client load
// and shows what happened: the hook's own output, what the clients saw
// (completed, refused, dropped requests, on a timeline), and the firewall.
// It must run as root; `make demo` builds patchagent and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/deploy/sandbox"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bin := fs.String("patchagent", "bin/patchagent", "the patchagent binary")
	prefix := fs.String("prefix", "pa-demo", "sandbox name prefix")
	keep := fs.Bool("keep", false, "leave the sandbox up (blocked, app stopped) for a look around")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	if err := demo(ctx, abs, *prefix, *keep, stdout); err != nil {
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, bin, prefix string, keep bool, out io.Writer) (err error) {
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	say("== sandbox: a node (netns %s-srv) running a Node.js app under pm2 as an unprivileged user, clients in %s-cli", prefix, prefix)
	n, err := sandbox.Setup(ctx, sandbox.Options{Prefix: prefix, Env: map[string]string{"KEEPALIVE_MS": "60000"}})
	if err != nil {
		return err
	}
	if !keep {
		defer func() {
			tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			if terr := n.Teardown(tctx); terr != nil && err == nil {
				err = terr
			}
		}()
	}
	dir, err := os.MkdirTemp("", "patchagent-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(n.PatchagentConfig(filepath.Join(dir, "state"), "")), 0o600); err != nil {
		return err
	}
	say("   app %s online as user %s; health %s", n.Opts.AppName, n.AppUser, n.URL("/health-check", false))

	say("== load: 4 keep-alive clients (IPv4, GET /slow?ms=150) standing for a load balancer's pooled connections,")
	say("   2 clients opening a new connection per request (IPv6, GET /) standing for its health checks and new clients")
	ka := n.Load(ctx, sandbox.LoadOptions{Workers: 4, Path: "/slow?ms=150", KeepAlive: true})
	fresh := n.Load(ctx, sandbox.LoadOptions{Workers: 2, Path: "/", V6: true, Interval: 20 * time.Millisecond})
	long := make(chan string, 1)
	go func() {
		start := time.Now()
		code, err := sandbox.Get(ctx, n.Client(false), n.URL("/slow?ms=3000", false))
		long <- fmt.Sprintf("status %d, error %v, after %s", code, err, time.Since(start).Round(10*time.Millisecond))
	}()
	time.Sleep(2 * time.Second)
	// A load balancer stops using its pooled connections once its health
	// checks (new connections) fail for interval x threshold: here 1 s x 2.
	go func() {
		for fresh.Stats().Refused == 0 && ctx.Err() == nil {
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(2 * time.Second)
		ka.Quiesce()
	}()

	say("== patchagent pre (as SSM runs it: root, no HOME, minimal PATH), while a 3 s request is in flight")
	cmd := sandbox.NetnsCommand(n.ServerNS, bin, "pre", "--config", cfg)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"}
	cmd.Stdout = out
	var logs limitedBuffer
	cmd.Stderr = &logs
	runErr := cmd.Run()
	code := 0
	if ee, ok := runErr.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if runErr != nil {
		return runErr
	}
	say("   exit code %d", code)
	time.Sleep(time.Second)
	kaStats, freshStats := ka.Stop(), fresh.Stop()
	say("== what the clients saw")
	say("   the 3 s request in flight at the block: %s", <-long)
	say("   keep-alive clients (quiet 2 s after the first refusal, as an LB marking the node unhealthy): %s", kaStats)
	say("   new-connection clients: %s", freshStats)
	say("   timeline of the new-connection clients (100 ms per mark, | = 1 s; . ok, r refused by the block, X dropped):")
	say("   %s", freshStats.TimelineString())
	say("== firewall in the node after pre")
	for _, b := range []string{"iptables", "ip6tables"} {
		rules, err := sandbox.NetnsCommand(n.ServerNS, b, "-w", "5", "-S", "INPUT").CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s -S: %w", b, err)
		}
		chain, _ := sandbox.NetnsCommand(n.ServerNS, b, "-w", "5", "-S", "PATCHAGENT-BLOCK").CombinedOutput()
		say("   %s:\n%s%s", b, indent(rules), indent(chain))
	}
	if keep {
		say("== left up: `go run ./deploy/sandbox/cmd/sandbox down -prefix %s` removes it", prefix)
	}
	if code != 0 {
		return fmt.Errorf("patchagent pre exited %d; its log:\n%s", code, logs.String())
	}
	return nil
}

func indent(b []byte) string {
	s := ""
	for _, l := range splitLines(string(b)) {
		s += "     " + l + "\n"
	}
	return s
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

// limitedBuffer keeps the first 64 KiB written to it.
type limitedBuffer struct{ b []byte }

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := 64<<10 - len(l.b); room > 0 {
		l.b = append(l.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string { return string(l.b) }
