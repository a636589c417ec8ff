package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"github.com/patchagent/patchagent/agent"
)

// A command is one `patchagent NAME`. The table of them, commands, is the
// CLI's one description: dispatch, the usage text, each command's --help,
// the completion scripts and (checked by man_test.go) the SYNOPSIS of
// patchagent(8) are all made from it.
type command struct {
	name    string
	group   string // the heading it is listed under in the usage text
	summary string // its line in the usage text
	desc    string // what its --help says it does
	// args is its positional argument as the synopsis shows it ("bash|zsh",
	// "[COMMAND]"), "" when it takes none; the command checks it itself.
	args      string
	argValues []string // the words that complete args
	flags     []flagSpec
	run       func(ctx context.Context, c *command, o opts, stdout, stderr io.Writer) int
}

// A flagSpec is one flag of a command. A flag with neither arg nor values
// is a boolean.
type flagSpec struct {
	name string
	// arg names its value in the texts; without it the values, joined
	// with |, do. A FILE completes file names.
	arg    string
	values []string // the values it takes, offered by the completion
	def    string   // its default, shown in the help; "" for none
	usage  string
}

func (f flagSpec) boolean() bool { return f.arg == "" && f.values == nil }

// metavar is what stands for the flag's value in the texts.
func (f flagSpec) metavar() string {
	if f.arg != "" {
		return f.arg
	}
	return strings.Join(f.values, "|")
}

// The headings of the usage text, in its order.
const (
	hookCommands  = "Hook commands (called by the SSM patch hook documents):"
	bootStep      = "Boot step (run before the app's pm2 service, e.g. from a oneshot unit):"
	otherCommands = "Other commands:"
)

var (
	configFlag   = flagSpec{name: "config", arg: "FILE", def: agent.DefaultConfigPath, usage: "config file"}
	logLevelFlag = flagSpec{name: "log-level", arg: "LEVEL", values: []string{"debug", "info", "warn", "error"}, def: "info", usage: "debug, info, warn or error"}
	// logFormatFlag is that of every command that logs.
	logFormatFlag = flagSpec{name: "log-format", values: logFormats, def: "auto",
		usage: "the log lines on stderr: text, json (one object a line), journal (each line with its syslog priority, for systemd's journal) " +
			"or auto: journal when stderr is the journal stream systemd connected (JOURNAL_STREAM), else text"}
	// phaseFlags are the flags of pre, post, exit and reconcile.
	phaseFlags = []flagSpec{
		configFlag,
		{name: "output", values: []string{"text", "json"}, def: "text", usage: "text: verdict on the first line; json: one object"},
		{name: "dry-run", usage: "print the plan, change nothing"},
		logLevelFlag,
		logFormatFlag,
	}
	// breakGlassFlags are exit's own.
	breakGlassFlags = []flagSpec{
		{name: "force", usage: "return the node to service NOW, without the health check: remove the block, " +
			"close the open cycle (result forced; the daemon does not block again), start what pre stopped " +
			"(the app, steps.stop_units) and run steps.exit_commands. Exits 1, first line \"patchagent exit: FORCED, ...\". " +
			"Logged with who ran it. Does not undo an interrupted post. " +
			"If patchagent itself is broken: the iptables commands in patchagent(8)."},
		{name: "reason", arg: "TEXT", usage: "with --force: why (one line, logged and recorded)"},
	}
)

// flagSections are the flags the usage text lists, under their headings;
// the other commands' flags are in their --help.
var flagSections = []struct {
	title string
	flags []flagSpec
}{
	{"Flags of pre, post, exit and reconcile (run by the daemon when one answers, else in this process, which then says so on stderr):", phaseFlags},
	{"Break-glass, flags of exit only:", breakGlassFlags},
}

// phaseNote ends the description of each phase command.
const phaseNote = " Run by the daemon when one answers on its socket, else in this process, which then says so on stderr."

// commands is set by init, not by its declaration: help and completion
// read the table they are in, which an initializer cannot allow.
var commands []*command

func init() {
	commands = []*command{
		{name: "pre", group: hookCommands, flags: phaseFlags, run: runPhase,
			summary: "block new connections, drain, stop the app",
			desc:    "Block new connections to the app's ports, drain the established ones, stop the app." + phaseNote},
		{name: "post", group: hookCommands, flags: phaseFlags, run: runPhase,
			summary: "snapshot and update the app's dependencies (npm update)",
			desc:    "Snapshot and update the app's dependencies (npm update, as the app's user); restore the snapshot on failure." + phaseNote},
		{name: "exit", group: hookCommands, flags: slices.Concat(phaseFlags, breakGlassFlags), run: runPhase,
			summary: "start the app, wait until healthy, unblock (exit --force: the break-glass, see below)",
			desc: "Start the app, wait until it is healthy, unblock. Safe to run when pre failed or never ran; " +
				"undoes a post interrupted during its update. With --force, the break-glass: " +
				"back in service now, without the health check." + phaseNote},
		{name: "reconcile", group: bootStep, flags: phaseFlags, run: runPhase,
			summary: "re-apply the block if a patch cycle is open and the rules are gone",
			desc: "Re-apply the block if a patch cycle is open and its rules are gone (after a reboot). " +
				"The boot step of nodes that do not run the daemon, run before the app's pm2 service." + phaseNote},
		{name: "daemon", group: otherCommands, flags: []flagSpec{configFlag, logLevelFlag, logFormatFlag}, run: runDaemon,
			summary: "the service: runs the phases the hook commands hand it over /run/patchagent/patchagent.sock, " +
				"re-blocks an open cycle at boot, watches the block, serves /metrics",
			desc: "The systemd service: runs the phases the hook commands hand it over /run/patchagent/patchagent.sock, " +
				"re-blocks an open cycle at boot, watches the block and serves /metrics. It re-reads its config " +
				"on SIGHUP (systemctl reload) and before the pre that opens a new cycle."},
		{name: "status", group: otherCommands, run: runStatus,
			flags: []flagSpec{configFlag,
				{name: "output", values: []string{"text", "json"}, def: "text", usage: "text, or json: one object"},
				{name: "check", usage: "exit 0 in service, 1 out of service or a patch cycle open, 3 unknown"},
				logFormatFlag},
			summary: "show the patch cycle, the block as the kernel has it, the app and each phase's last result",
			desc: "Show the patch cycle, the block as the kernel has it, the app and each phase's last result; " +
				"what it cannot read (pm2, the state file, the block: iptables needs root) it says and shows the rest. " +
				"Exit 3 when the node's state is unknown (not root, the state file unreadable), else 0; with --check, " +
				"1 too when the node is out of service or a patch cycle is open."},
		{name: "check-config", group: otherCommands, run: runCheckConfig,
			flags: []flagSpec{{name: "config", arg: "FILE", def: agent.DefaultConfigPath,
				usage: "config file, or - to read a draft from stdin (at most 1 MiB; no owner or mode to check)"}},
			summary: "validate the config, check what it names on this node, print the effective values",
			desc: "Validate the config, then check on this node what it names: the app user (app.user, else the owner of app.dir), " +
				"app.dir, pm2 (app.pm2, else searched as the daemon does), health.ca_file, the program of each " +
				"steps.pre_commands and steps.exit_commands. Print the effective values, then the app user, pm2 and " +
				"PM2_HOME the agent will use; exit 2 when the config is not valid or this node lacks what it names " +
				"(each problem listed by its key, those of the node apart)."},
		{name: "completion", group: otherCommands, args: "bash|zsh", argValues: []string{"bash", "zsh"}, run: runCompletion,
			summary: "print the bash or zsh completion script",
			desc: "Print the completion script of bash or zsh for this patchagent's commands and flags. " +
				"The packages install both; by hand: source <(patchagent completion bash)."},
		{name: "help", group: otherCommands, args: "[COMMAND]", run: runHelp,
			summary: "show this text, or what COMMAND --help shows",
			desc:    "Show the usage text, or with COMMAND what patchagent COMMAND --help shows."},
		{name: "version", group: otherCommands, run: runVersion,
			summary: "print the version",
			desc:    "Print the version, the Go version and the platform."},
	}
	// help takes a command's name, and so completes the names in the table.
	lookup("help").argValues = commandNames()
}

func commandNames() []string {
	var names []string
	for _, c := range commands {
		names = append(names, c.name)
	}
	return names
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

func (c *command) flag(name string) *flagSpec {
	for i := range c.flags {
		if c.flags[i].name == name {
			return &c.flags[i]
		}
	}
	return nil
}

// run is the whole CLI; it returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runAs(ctx, os.Geteuid() == 0, args, stdout, stderr)
}

// runAs is run, root saying whether the process runs as root.
func runAs(ctx context.Context, root bool, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return agent.ExitUsage
	}
	name := args[0]
	switch name {
	case "-h", "--help":
		fmt.Fprint(stdout, usage())
		return agent.ExitOK
	case "--version":
		name = "version"
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(stderr, "patchagent: unknown command %q\nTry 'patchagent --help'.\n", name)
		return agent.ExitUsage
	}
	o, err := parse(c, args[1:])
	if errors.Is(err, errHelp) {
		fmt.Fprint(stdout, c.help())
		return agent.ExitOK
	}
	if err != nil {
		return usageError(stderr, c, err)
	}
	o.root = root
	return c.run(ctx, c, o, stdout, stderr)
}

// usageError reports a wrong command line the GNU way, pointing to the
// command's --help; it is exit code 2.
func usageError(stderr io.Writer, c *command, err error) int {
	fmt.Fprintf(stderr, "patchagent %s: %v\nTry 'patchagent %s --help'.\n", c.name, err, c.name)
	return agent.ExitUsage
}

// opts is what a command line gave a command: the value of each of its
// flags (the default when not given; "true" or "false" for a boolean) and
// its positional arguments; and whether the process runs as root.
type opts struct {
	flags map[string]string
	args  []string
	root  bool
}

func (o opts) value(name string) string {
	v, ok := o.flags[name]
	if !ok {
		panic("patchagent: the command has no flag --" + name) // a table and code out of step
	}
	return v
}

func (o opts) on(name string) bool { return o.value(name) == "true" }

// errHelp is what parse returns for -h or --help.
var errHelp = errors.New("help requested")

// parse reads c's flags as Go's flag package did before the table (-flag
// or --flag, the value as the next argument or after =, flags end at the
// first argument that is not one or after --) and says what is wrong in
// GNU terms.
func parse(c *command, args []string) (opts, error) {
	o := opts{flags: map[string]string{}}
	for _, f := range c.flags {
		o.flags[f.name] = f.def
		if f.boolean() {
			o.flags[f.name] = "false"
		}
	}
	for len(args) > 0 && len(args[0]) > 1 && args[0][0] == '-' {
		a := args[0]
		args = args[1:]
		if a == "--" {
			break
		}
		name, val, hasVal := strings.Cut(strings.TrimPrefix(a[1:], "-"), "=")
		if name == "h" || name == "help" {
			return o, errHelp
		}
		f := c.flag(name)
		if f == nil {
			typed, _, _ := strings.Cut(a, "=")
			return o, fmt.Errorf("unknown flag %s", typed)
		}
		switch {
		case f.boolean() && hasVal:
			b, err := strconv.ParseBool(val)
			if err != nil {
				return o, fmt.Errorf("flag --%s takes no value, not %q", name, val)
			}
			o.flags[name] = strconv.FormatBool(b)
		case f.boolean():
			o.flags[name] = "true"
		case hasVal:
			o.flags[name] = val
		case len(args) == 0:
			return o, fmt.Errorf("flag --%s needs a value: --%s %s", name, name, f.metavar())
		default:
			o.flags[name], args = args[0], args[1:]
		}
	}
	if c.args == "" && len(args) > 0 {
		return o, fmt.Errorf("unexpected argument %q", args[0])
	}
	o.args = args
	return o, nil
}

func runHelp(_ context.Context, c *command, o opts, stdout, stderr io.Writer) int {
	switch len(o.args) {
	case 0:
		fmt.Fprint(stdout, usage())
		return agent.ExitOK
	case 1:
		h := lookup(o.args[0])
		if h == nil {
			fmt.Fprintf(stderr, "patchagent help: unknown command %q\nTry 'patchagent --help'.\n", o.args[0])
			return agent.ExitUsage
		}
		fmt.Fprint(stdout, h.help())
		return agent.ExitOK
	}
	return usageError(stderr, c, fmt.Errorf("unexpected argument %q", o.args[1]))
}

func runVersion(_ context.Context, _ *command, _ opts, stdout, _ io.Writer) int {
	fmt.Fprintf(stdout, "patchagent %s (%s %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return agent.ExitOK
}
