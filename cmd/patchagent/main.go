// Command patchagent takes a Linux node out of service for OS patching and
// returns it once its app is healthy, called by AWS Systems Manager's patch
// hooks: `patchagent pre`, `patchagent post`, `patchagent exit`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
