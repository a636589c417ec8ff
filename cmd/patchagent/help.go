package main

import (
	"fmt"
	"strings"
)

// width is the longest line of the texts, in bytes (they are ASCII).
const width = 78

// usage is the top-level usage text: the commands under their headings,
// the flags of the hook commands and the exit codes.
func usage() string {
	var b strings.Builder
	b.WriteString("usage: patchagent <command> [flags]\n")
	group := ""
	for _, c := range commands {
		if c.group != group {
			group = c.group
			b.WriteString("\n")
			writeItem(&b, "", group)
		}
		writeItem(&b, fmt.Sprintf("  %-12s  ", c.name), c.summary)
	}
	for _, s := range flagSections {
		b.WriteString("\n")
		writeItem(&b, "", s.title)
		writeFlags(&b, s.flags)
	}
	b.WriteString("\n")
	writeItem(&b, "", "'patchagent COMMAND --help' (or 'patchagent help COMMAND') shows a command's "+
		"synopsis and all its flags; 'patchagent completion bash|zsh' prints the shell completion.")
	b.WriteString("\n")
	writeItem(&b, "", "Exit codes: 0 ok, 1 the phase failed (or was forced), 2 usage or config error, "+
		"3 another phase holds the lock (status: the node's state is unknown).")
	return b.String()
}

// synopsis is the one line that shows how to call c.
func (c *command) synopsis() string {
	s := "patchagent " + c.name
	for _, f := range c.flags {
		if f.boolean() {
			s += " [--" + f.name + "]"
		} else {
			s += " [--" + f.name + " " + f.metavar() + "]"
		}
	}
	if c.args != "" {
		s += " " + c.args
	}
	return s
}

// help is what `patchagent NAME --help` and `patchagent help NAME` print.
func (c *command) help() string {
	var b strings.Builder
	b.WriteString("usage: " + c.synopsis() + "\n\n")
	writeItem(&b, "", c.desc)
	b.WriteString("\nFlags:\n")
	writeFlags(&b, c.flags)
	writeItem(&b, fmt.Sprintf("  %-19s  ", "-h, --help"), "show this help")
	return b.String()
}

// writeFlags writes one item per flag: `--name VALUE  usage (default D)`.
func writeFlags(b *strings.Builder, flags []flagSpec) {
	for _, f := range flags {
		name := "--" + f.name
		if !f.boolean() {
			name += " " + f.metavar()
		}
		text := f.usage
		if f.def != "" {
			text += " (default " + f.def + ")"
		}
		writeItem(b, fmt.Sprintf("  %-19s  ", name), text)
	}
}

// writeItem writes text wrapped after the column head, its continuation
// lines indented to where text starts.
func writeItem(b *strings.Builder, head, text string) {
	indent := strings.Repeat(" ", len(head))
	for i, line := range wrap(text, width-len(head)) {
		if i == 0 {
			b.WriteString(head + line + "\n")
		} else {
			b.WriteString(indent + line + "\n")
		}
	}
}

// wrap breaks text into lines of at most n bytes at spaces; a word longer
// than n gets a line of its own.
func wrap(text string, n int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= n:
			line += " " + w
		default:
			lines = append(lines, line)
			line = w
		}
	}
	return append(lines, line)
}
