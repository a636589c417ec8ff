package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// ErrHung: an iptables command did not finish within its deadline and was
// killed.
var ErrHung = errors.New("iptables did not finish in time")

// callGrace is what a call may take beyond the xtables lock wait: the
// command itself (a few milliseconds; a large ruleset's listing, a second
// or two).
const callGrace = 10 * time.Second

// iptablesCalls serialises every iptables command this process runs: when
// one hangs, the child to kill is then the one running (go-iptables starts
// it with exec and keeps no handle we could reach).
var iptablesCalls sync.Mutex

// boundedTables bounds every call of a go-iptables Tables, which runs
// iptables with no context (its -w bounds only the wait for the xtables
// lock): a binary that hangs (a wedged netlink socket, a stuck nft
// transaction, a broken alternatives link) would otherwise hold the phase,
// its lock and the daemon forever. Past the deadline the command, and
// whatever it started, is killed and the call fails with ErrHung.
type boundedTables struct {
	t       iptablesAPI
	path    string // the binary go-iptables runs: how its child is recognised
	wait    int    // the xtables lock wait, in seconds
	timeout time.Duration
}

// iptablesAPI is what boundedTables asks of go-iptables.
type iptablesAPI interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	ClearAndDeleteChain(table, chain string) error
}

var _ iptablesAPI = (*iptables.IPTables)(nil)

// bounded runs f within timeout, killing the iptables child of this
// process that runs path if f has not returned by then. f runs on the
// calling goroutine (and so on its OS thread: a test that entered a network
// namespace on a locked thread runs iptables there); only the timer runs
// aside.
func bounded[T any](path string, timeout time.Duration, what string, f func() (T, error)) (T, error) {
	iptablesCalls.Lock()
	defer iptablesCalls.Unlock()
	done := make(chan struct{})
	killedc := make(chan []int, 1)
	go func() {
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-done:
			killedc <- nil
		case <-t.C:
			// Killing the command (and what it started, which may hold its
			// output pipes) is what makes f return.
			killedc <- killChildrenRunning(path)
		}
	}()
	v, err := f()
	close(done)
	if killed := <-killedc; killed != nil {
		var zero T
		return zero, fmt.Errorf("%s %s: %w after %s (killed pid(s) %v)", filepath.Base(path), what, ErrHung, timeout, killed)
	}
	return v, err
}

func (b *boundedTables) ChainExists(table, chain string) (bool, error) {
	return bounded(b.path, b.timeout, "-t "+table+" -S "+chain, func() (bool, error) { return b.t.ChainExists(table, chain) })
}

func (b *boundedTables) NewChain(table, chain string) error {
	_, err := bounded(b.path, b.timeout, "-t "+table+" -N "+chain, func() (struct{}, error) { return struct{}{}, b.t.NewChain(table, chain) })
	return err
}

func (b *boundedTables) List(table, chain string) ([]string, error) {
	return bounded(b.path, b.timeout, "-t "+table+" -S "+chain, func() ([]string, error) { return b.t.List(table, chain) })
}

func (b *boundedTables) Insert(table, chain string, pos int, rulespec ...string) error {
	_, err := bounded(b.path, b.timeout, "-t "+table+" -I "+chain, func() (struct{}, error) { return struct{}{}, b.t.Insert(table, chain, pos, rulespec...) })
	return err
}

func (b *boundedTables) Append(table, chain string, rulespec ...string) error {
	_, err := bounded(b.path, b.timeout, "-t "+table+" -A "+chain, func() (struct{}, error) { return struct{}{}, b.t.Append(table, chain, rulespec...) })
	return err
}

func (b *boundedTables) Delete(table, chain string, rulespec ...string) error {
	_, err := bounded(b.path, b.timeout, "-t "+table+" -D "+chain, func() (struct{}, error) { return struct{}{}, b.t.Delete(table, chain, rulespec...) })
	return err
}

func (b *boundedTables) ClearAndDeleteChain(table, chain string) error {
	_, err := bounded(b.path, b.timeout, "-t "+table+" -X "+chain, func() (struct{}, error) { return struct{}{}, b.t.ClearAndDeleteChain(table, chain) })
	return err
}

// MoveFirst runs `<binary>-restore --noflush` (iptables-restore for
// iptables, iptables-nft-restore for iptables-nft, ...: the same backend)
// with a -D of rulespec and a -I at 1 in one COMMIT: both backends apply a
// restore as a single transaction, so the rule is in place throughout and
// no rule another tool added meanwhile is deleted by its number. go-iptables
// has no restore; the run is bounded like every other call.
func (b *boundedTables) MoveFirst(table, chain string, rulespec ...string) error {
	for _, w := range append([]string{table, chain}, rulespec...) {
		if w == "" || strings.ContainsAny(w, " \t\n\"'#") {
			return fmt.Errorf("moving a rule first: %q cannot be written to iptables-restore", w)
		}
	}
	spec := strings.Join(rulespec, " ")
	restore := b.path + "-restore"
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, restore, "--noflush", "--wait", strconv.Itoa(b.wait))
	cmd.Stdin = strings.NewReader(fmt.Sprintf("*%s\n-D %s %s\n-I %s 1 %s\nCOMMIT\n", table, chain, spec, chain, spec))
	if out, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %s", ErrHung, b.timeout)
		}
		return fmt.Errorf("%s --noflush (-D %s %s, -I %s 1): %w: %s", filepath.Base(restore), chain, spec, chain, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// killChildrenRunning SIGKILLs every child of this process whose command
// line runs path (as the program, or as the script an interpreter runs),
// with all its descendants (a descendant holding the output pipes would
// keep go-iptables waiting), and returns their pids.
func killChildrenRunning(path string) []int {
	parents := map[int]int{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pp, ok := ppidOf(pid); ok {
			parents[pid] = pp
		}
	}
	self := os.Getpid()
	var targets []int
	for pid, pp := range parents {
		if pp == self && runs(pid, path) {
			targets = append(targets, pid)
		}
	}
	var killed []int
	var kill func(pid int)
	kill = func(pid int) {
		syscall.Kill(pid, syscall.SIGKILL)
		killed = append(killed, pid)
		for c, pp := range parents {
			if pp == pid {
				kill(c)
			}
		}
	}
	for _, pid := range targets {
		kill(pid)
	}
	return killed
}

// ppidOf reads the parent pid from /proc/<pid>/stat (the field after the
// command name, which may itself hold spaces and parentheses).
func ppidOf(pid int) (int, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	pp, err := strconv.Atoi(f[1])
	return pp, err == nil
}

// runs reports whether pid's command line starts with path, or runs it as
// an interpreter's script (argv[1]).
func runs(pid int, path string) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(string(b), "\x00")
	return len(args) > 0 && args[0] == path || len(args) > 1 && args[1] == path
}
