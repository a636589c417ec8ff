// Command demo runs a whole patch cycle on the sandbox node under client
// load, through `patchagent daemon` as systemd runs it: pre, a simulated OS
// patch, post, a simulated reboot (the daemon restarted at boot re-blocks)
// and exit. It shows a live progress line, then what the node's time out of
// service was spent on, what the clients saw (no request may be dropped) and
// a timeline as an SVG file. It must run as root; `make demo` builds
// patchagent and runs it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
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
	out := fs.String("out", "demo-timeline.svg", "where to write the timeline (SVG)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	abs, err := filepath.Abs(*bin)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	con := &console{w: stdout, tty: isTerminal(stdout)}
	if err := demo(ctx, abs, *prefix, *out, con); err != nil {
		con.endProgress()
		fmt.Fprintf(stderr, "demo: %v\n", err)
		return 1
	}
	return 0
}

func demo(ctx context.Context, bin, prefix, svg string, con *console) (err error) {
	con.say("== sandbox: a node (netns %s-srv) running a Node.js app under pm2 as an unprivileged user, clients in %s-cli", prefix, prefix)
	n, err := sandbox.Setup(ctx, sandbox.Options{Prefix: prefix})
	if err != nil {
		return err
	}
	defer func() {
		tctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if terr := n.Teardown(tctx); terr != nil && err == nil {
			err = terr
		}
		con.say("== sandbox torn down")
	}()
	dir, err := os.MkdirTemp("", "patchagent-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfg, err := writeConfig(n, dir)
	if err != nil {
		return err
	}
	con.say("   app %s online as user %s; config %s (drain.idle 500ms, post.npm.enabled false)", n.Opts.AppName, n.AppUser, cfg)

	c := &cycle{n: n, bin: bin, cfg: cfg, dir: dir, out: con}
	res, err := c.run(ctx)
	if err != nil {
		if b, _ := os.ReadFile(filepath.Join(dir, "daemon.log")); len(b) > 0 {
			con.say("daemon log (tail):\n%s", b[max(0, len(b)-4000):])
		}
		if res.Stats.Total > 0 {
			con.say("what the clients saw: %s", res.Stats)
		}
		return err
	}
	if err := sandbox.WriteTimelineSVG(svg, "patchagent: pre, patch, post, reboot, exit under load (requests per 100 ms)", res.Stats, res.bands()); err != nil {
		return err
	}
	res.SVG = svg
	return writeReport(con.say, res)
}

// isTerminal reports whether w is a character device (a terminal).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
