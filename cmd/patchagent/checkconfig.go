package main

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/patchagent/patchagent/agent"
)

// stdinConfig is the --config of check-config that reads the draft from
// stdin, and the name its messages give it.
const (
	stdinConfig     = "-"
	stdinConfigName = "<stdin>"
)

func runCheckConfig(_ context.Context, _ *command, o opts, stdout, stderr io.Writer) int {
	return checkConfig(o.value("config"), os.Stdin, agent.HostNode(), stdout, stderr)
}

// checkConfig is check-config: the config at path (stdinConfig: read from
// stdin) is valid, then node has what it names. Either kind of problem is
// exit 2, each listed apart on stderr. A valid config's effective values
// are printed on stdout even when the node lacks what it names: the
// package's maintainer scripts read daemon.state_dir and
// daemon.textfile_dir from them, and a node being taken apart (pm2 or the
// app user already gone) must still be found where its state is. On
// success what the agent will use on this node follows, as YAML comments.
func checkConfig(path string, stdin io.Reader, node agent.NodeChecker, stdout, stderr io.Writer) int {
	name := path
	var cfg agent.Config
	var err error
	if path == stdinConfig {
		name = stdinConfigName
		cfg, err = agent.ReadConfig(name, stdin)
	} else {
		cfg, err = agent.LoadConfig(path)
	}
	if err != nil {
		fmt.Fprintf(stderr, "patchagent check-config: %v\n", err)
		return agent.ExitUsage
	}
	fmt.Fprintf(stdout, "# %s is valid; effective configuration:\n", name)
	stdout.Write(cfg.YAML())
	r := node.CheckNode(cfg)
	if len(r.Problems) > 0 {
		fmt.Fprintf(stderr, "patchagent check-config: config %s is valid, but on this node: %d problem(s)\n", name, len(r.Problems))
		for _, p := range r.Problems {
			fmt.Fprintf(stderr, "  %s\n", p)
		}
		writeFound(stderr, "found on this node:\n", "  ", r.Found)
		return agent.ExitUsage
	}
	writeFound(stdout, "# on this node:\n", "#   ", r.Found)
	return agent.ExitOK
}

// writeFound writes what the node check found, under title.
func writeFound(w io.Writer, title, indent string, found []string) {
	if len(found) == 0 {
		return
	}
	io.WriteString(w, title)
	for _, f := range found {
		fmt.Fprintf(w, "%s%s\n", indent, f)
	}
}
