package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

const manPage = "../../packaging/man/patchagent.8"

// manSynopsis is the SYNOPSIS section of patchagent(8) made from the
// command table: one form per command, in the table's order.
func manSynopsis() string {
	roff := func(s string) string { return strings.ReplaceAll(s, "-", `\-`) }
	var b strings.Builder
	for i, c := range commands {
		if i > 0 {
			b.WriteString(".br\n")
		}
		b.WriteString(".B patchagent " + roff(c.name) + "\n")
		for _, f := range c.flags {
			switch {
			case f.boolean():
				fmt.Fprintf(&b, ".RB [ %s ]\n", roff("--"+f.name))
			case f.arg != "":
				fmt.Fprintf(&b, ".RB [ %s\n.IR %s ]\n", roff("--"+f.name), strings.ToLower(f.arg))
			default:
				fmt.Fprintf(&b, ".RB [ %s\n.BR %s ]\n", roff("--"+f.name), strings.Join(f.values, " | "))
			}
		}
		switch {
		case c.args == "":
		case strings.HasPrefix(c.args, "["):
			fmt.Fprintf(&b, ".RI [ %s ]\n", strings.ToLower(strings.Trim(c.args, "[]")))
		default:
			fmt.Fprintf(&b, ".BR %s\n", strings.ReplaceAll(c.args, "|", " | "))
		}
	}
	return b.String()
}

func readManPage(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(manPage)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestManSynopsisIsTheTable: the hand-written man page's SYNOPSIS is,
// line for line, what the command table says.
func TestManSynopsisIsTheTable(t *testing.T) {
	_, section, ok := strings.Cut(readManPage(t), "\n.SH SYNOPSIS\n")
	if !ok {
		t.Fatal("no .SH SYNOPSIS in " + manPage)
	}
	section, _, _ = strings.Cut(section, "\n.SH ")
	if want := manSynopsis(); section+"\n" != want {
		t.Errorf("SYNOPSIS of %s is not the command table's; it has\n%s\nthe table makes\n%s", manPage, section, want)
	}
}

// TestManPageDescribesEveryCommand: each command of the table has its
// entry under COMMANDS, each flag is described.
func TestManPageDescribesEveryCommand(t *testing.T) {
	page := strings.ReplaceAll(readManPage(t), `\-`, "-")
	for _, c := range commands {
		if !strings.Contains(page, "\n.B "+c.name+"\n") {
			t.Errorf("man page has no .B %s entry", c.name)
		}
		for _, f := range c.flags {
			if !strings.Contains(page, "\n.B --"+f.name+"\n") && !strings.Contains(page, "\n.BI --"+f.name+` "`) && !strings.Contains(page, "\n.BR --"+f.name+` " "`) {
				t.Errorf("man page has no OPTIONS entry for --%s", f.name)
			}
		}
	}
}
