// Command sandbox builds, inspects, loads and removes the local patchagent
// sandbox node (see package sandbox). It must run as root.
//
//	sandbox up     [-prefix pa] [-port 443]
//	sandbox status [-prefix pa]
//	sandbox load   [-prefix pa] [-d 10s] [-workers 4] [-path /] [-interval 0] [-keepalive] [-6]
//	sandbox down   [-prefix pa]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
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

const usage = "usage: sandbox up|status|load|down [-prefix pa] [flags]"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || !map[string]bool{"up": true, "down": true, "status": true, "load": true}[args[0]] {
		fmt.Fprintln(stderr, usage)
		return 2
	}
	fs := flag.NewFlagSet("sandbox "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o sandbox.Options
	fs.StringVar(&o.Prefix, "prefix", sandbox.DefaultPrefix, "name prefix of the namespaces and veth pair")
	port := fs.Uint("port", sandbox.DefaultPort, "app port (up)")
	dur := fs.Duration("d", 10*time.Second, "load duration (load)")
	var lo sandbox.LoadOptions
	fs.IntVar(&lo.Workers, "workers", 4, "concurrent clients (load)")
	fs.StringVar(&lo.Path, "path", "/", "request path (load)")
	fs.DurationVar(&lo.Interval, "interval", 0, "pause between a worker's requests (load)")
	fs.BoolVar(&lo.KeepAlive, "keepalive", false, "reuse connections (load)")
	fs.BoolVar(&lo.V6, "6", false, "use IPv6 (load)")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	if *port > 65535 {
		fmt.Fprintf(stderr, "-port %d out of range\n", *port)
		return 2
	}
	o.Port = uint16(*port)

	var err error
	switch args[0] {
	case "up":
		var n *sandbox.Node
		if n, err = sandbox.Setup(ctx, o); err == nil {
			fmt.Fprintf(stdout, "sandbox %s up: %s and %s from netns %s\n",
				o.Prefix, n.URL("/health-check", false), n.URL("/health-check", true), n.ClientNS)
		}
	case "down":
		var n *sandbox.Node
		if n, err = sandbox.Attach(o); err == nil {
			err = n.Teardown(ctx)
		}
	case "status":
		var n *sandbox.Node
		if n, err = sandbox.Attach(o); err == nil {
			s := n.Status(ctx)
			fmt.Fprint(stdout, s)
			if !s.Healthy() {
				return 1
			}
		}
	case "load":
		var n *sandbox.Node
		if n, err = sandbox.Attach(o); err == nil {
			lctx, cancel := context.WithTimeout(ctx, *dur)
			l := n.Load(lctx, lo)
			<-lctx.Done()
			cancel()
			s := l.Stop()
			fmt.Fprintln(stdout, s)
			fmt.Fprintf(stdout, "timeline (%s/char, | = 1s; . ok, r refused, X failed):\n%s\n", sandbox.BucketWidth, s.TimelineString())
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	return 0
}
