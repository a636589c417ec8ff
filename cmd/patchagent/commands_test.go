package main

import (
	"bytes"
	"context"
	"reflect"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/agent"
)

func runArgs(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestCommandHelp runs --help, -h and help CMD for every command of the
// table: the same text on stdout, exit 0, the synopsis first and every flag
// in GNU form with its default.
func TestCommandHelp(t *testing.T) {
	for _, c := range commands {
		t.Run(c.name, func(t *testing.T) {
			var first string
			for _, args := range [][]string{{c.name, "--help"}, {c.name, "-h"}, {"help", c.name}} {
				code, out, errs := runArgs(args...)
				if code != 0 || errs != "" {
					t.Fatalf("%q: exit %d, stderr %q", args, code, errs)
				}
				if first == "" {
					first = out
				} else if out != first {
					t.Errorf("%q prints another text than %s --help:\n%s", args, c.name, out)
				}
			}
			if !strings.HasPrefix(first, "usage: "+c.synopsis()+"\n\n") {
				t.Errorf("does not start with the synopsis:\n%s", first)
			}
			words := " " + strings.Join(strings.Fields(first), " ") + " "
			if !strings.Contains(words, " "+strings.Join(strings.Fields(c.desc), " ")+" ") {
				t.Errorf("lacks the description %q:\n%s", c.desc, first)
			}
			for _, f := range append(c.flags, flagSpec{name: "help"}) {
				item := "\n  --" + f.name + " "
				if !f.boolean() {
					item = "\n  --" + f.name + " " + f.metavar() + " "
				}
				if f.name == "help" {
					item = "\n  -h, --help "
				}
				if !strings.Contains(first, item) {
					t.Errorf("no line %q:\n%s", item[1:], first)
				}
				if f.def != "" && !strings.Contains(words, " (default "+f.def+") ") {
					t.Errorf("--%s: default %s not shown:\n%s", f.name, f.def, first)
				}
			}
		})
	}
}

func TestHelpCommand(t *testing.T) {
	code, out, errs := runArgs("help")
	if code != 0 || errs != "" || out != usage() {
		t.Errorf("help: exit %d, stderr %q, stdout is not the usage text:\n%s", code, errs, out)
	}
	for _, c := range commands {
		if !strings.Contains(out, "\n  "+c.name+" ") {
			t.Errorf("usage text does not list %s", c.name)
		}
	}
	for _, p := range agent.Phases {
		if lookup(p) == nil {
			t.Errorf("phase %s is not a command", p)
		}
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"help", "patch"}, "patchagent help: unknown command \"patch\"\nTry 'patchagent --help'.\n"},
		{[]string{"help", "pre", "post"}, "patchagent help: unexpected argument \"post\"\nTry 'patchagent help --help'.\n"},
	}
	for _, tt := range tests {
		code, out, errs := runArgs(tt.args...)
		if code != 2 || out != "" || errs != tt.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2, stderr %q", tt.args, code, out, errs, tt.want)
		}
	}
}

// TestBadCommandLine: a wrong command line is exit 2, one GNU-style line
// and the pointer to --help on stderr, nothing on stdout.
func TestBadCommandLine(t *testing.T) {
	type bad struct {
		args []string
		want string
	}
	var tests []bad
	for _, c := range commands {
		tests = append(tests, bad{[]string{c.name, "--bogus"}, "patchagent " + c.name + ": unknown flag --bogus\nTry 'patchagent " + c.name + " --help'.\n"})
	}
	tests = append(tests,
		bad{[]string{"pre", "-bogus=1"}, "patchagent pre: unknown flag -bogus\nTry 'patchagent pre --help'.\n"},
		bad{[]string{"exit", "--config"}, "patchagent exit: flag --config needs a value: --config FILE\nTry 'patchagent exit --help'.\n"},
		bad{[]string{"pre", "--dry-run=maybe"}, "patchagent pre: flag --dry-run takes no value, not \"maybe\"\nTry 'patchagent pre --help'.\n"},
		bad{[]string{"version", "now"}, "patchagent version: unexpected argument \"now\"\nTry 'patchagent version --help'.\n"},
		bad{[]string{"completion"}, "patchagent completion: want bash or zsh\nTry 'patchagent completion --help'.\n"},
		bad{[]string{"completion", "fish"}, "patchagent completion: shell \"fish\": want bash or zsh\nTry 'patchagent completion --help'.\n"},
		bad{[]string{"patch"}, "patchagent: unknown command \"patch\"\nTry 'patchagent --help'.\n"},
	)
	for _, tt := range tests {
		code, out, errs := runArgs(tt.args...)
		if code != 2 || out != "" || errs != tt.want {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want exit 2, stderr %q", tt.args, code, out, errs, tt.want)
		}
	}
}

// TestParseFlagForms: what Go's flag package accepted before the table
// still parses the same.
func TestParseFlagForms(t *testing.T) {
	o, err := parse(lookup("exit"), []string{"-config", "/c.yaml", "--output=json", "--dry-run=false", "-force", "--reason", "-h"})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"config": "/c.yaml", "output": "json", "dry-run": "false", "log-level": "info", "log-format": "auto", "force": "true", "reason": "-h"}
	if !reflect.DeepEqual(o.flags, want) || len(o.args) != 0 {
		t.Errorf("flags %v, args %q; want %v", o.flags, o.args, want)
	}
	o, err = parse(lookup("help"), []string{"--", "--config"})
	if err != nil || !reflect.DeepEqual(o.args, []string{"--config"}) {
		t.Errorf("after --: args %q, %v", o.args, err)
	}
	o, err = parse(lookup("status"), nil)
	if err != nil || o.value("config") != "/etc/patchagent/config.yaml" || o.value("output") != "text" {
		t.Errorf("defaults: %v, %v", o.flags, err)
	}
}
