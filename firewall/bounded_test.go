package firewall

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// stubIPTables puts an iptables on PATH (where NewTables finds the binary)
// that answers --version and then runs body for every other command.
func stubIPTables(t *testing.T, version, body string) string {
	t.Helper()
	dir := t.TempDir()
	p := filepath.Join(dir, "iptables")
	script := "#!/bin/sh\ncase \"$1\" in --version) " + version + ";; esac\n" + body + "\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":/usr/bin:/bin")
	return p
}

// stillRunning lists this process's children running path (as
// killChildrenRunning finds them).
func stillRunning(path string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		if pp, ok := ppidOf(pid); ok && pp == os.Getpid() && runs(pid, path) {
			out = append(out, pid)
		}
	}
	return out
}

// TestBoundedTablesKillsAHungIPTables: R4 of issue 13. A binary that never
// returns (here a stub that sleeps; in the field a wedged netlink socket)
// fails the call with ErrHung once the lock wait and the grace are over,
// and is killed with what it started, instead of holding the phase forever.
func TestBoundedTablesKillsAHungIPTables(t *testing.T) {
	stub := stubIPTables(t, `echo "iptables v1.8.9 (nf_tables)"; exit 0`, "sleep 600 # hung")
	tb, err := newTables(IPv4, time.Second, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = tb.List(filterTable, inputChain)
	took := time.Since(start)
	if !errors.Is(err, ErrHung) {
		t.Fatalf("List = %v, want ErrHung", err)
	}
	if !strings.Contains(err.Error(), "-S INPUT") || !strings.Contains(err.Error(), "killed pid(s)") {
		t.Errorf("error %q does not say which command hung and what was killed", err)
	}
	// The lock wait (1s, passed to iptables as -w 1) plus the grace.
	if took < 1200*time.Millisecond || took > 4*time.Second {
		t.Errorf("List returned after %s, want about 1.2s", took)
	}
	if left := stillRunning(stub); len(left) > 0 {
		t.Errorf("the hung iptables %v is still running", left)
	}
	// The next call runs (the first one's lock on the calls is released).
	if err := tb.NewChain(filterTable, Chain); !errors.Is(err, ErrHung) {
		t.Errorf("NewChain = %v, want ErrHung again", err)
	}
}

// TestBoundedTablesVersionProbeHangs: the version probe NewTables runs is
// bounded too (it runs at boot, before the re-block): the hung binary is
// killed and the next candidate (/usr/sbin, /sbin) tried, or the error is
// ErrHung.
func TestBoundedTablesVersionProbeHangs(t *testing.T) {
	stub := stubIPTables(t, "sleep 600", "exit 0")
	start := time.Now()
	tb, err := newTables(IPv4, time.Second, 200*time.Millisecond)
	if took := time.Since(start); took > 4*time.Second {
		t.Errorf("newTables returned after %s", took)
	}
	switch {
	case err != nil && !errors.Is(err, ErrHung):
		t.Errorf("newTables = %v, want ErrHung", err)
	case err == nil && tb.(*boundedTables).path == stub:
		t.Errorf("newTables kept the hung binary")
	}
	if left := stillRunning(stub); len(left) > 0 {
		t.Errorf("the hung iptables %v is still running", left)
	}
}

// TestBoundedTablesPassesAnswers: a command that finishes is untouched:
// output, and iptables' own errors with their exit status.
func TestBoundedTablesPassesAnswers(t *testing.T) {
	stubIPTables(t, `echo "iptables v1.8.9 (nf_tables)"; exit 0`,
		`case "$*" in *-S*) echo "-P INPUT ACCEPT"; echo "-A INPUT -j ACCEPT"; exit 0;; *) echo "iptables: No chain/target/match by that name." >&2; exit 1;; esac`)
	tb, err := newTables(IPv4, time.Second, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := tb.List(filterTable, inputChain)
	if err != nil || len(rules) != 2 {
		t.Fatalf("List = %q, %v", rules, err)
	}
	err = tb.Delete(filterTable, inputChain, "-j", Chain)
	if err == nil || errors.Is(err, ErrHung) || !isNotExist(err) {
		t.Errorf("Delete = %v, want iptables' not-exist error", err)
	}
}
