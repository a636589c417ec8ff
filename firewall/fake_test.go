package firewall

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/coreos/go-iptables/iptables"
)

// fakeTables is a stateful Tables for one family that behaves like
// iptables-nft 1.8.9: chains of filter hold rules in the canonical form
// iptables -S prints (so List returns what iptables would), commands fail
// with the exit status and message the real binary gives, and every error is
// a genuine *iptables.Error (made by running go-iptables against a stub
// binary), so the code under test classifies errors exactly as in production.
type fakeTables struct {
	t    testing.TB
	name string // "iptables" or "ip6tables", for messages

	mu     sync.Mutex
	chains map[string][]string // "filter/INPUT" -> rules without "-A INPUT "
	ops    []string            // mutating commands, as iptables arguments
	calls  []string            // every call, as iptables arguments
	faults []fakeFault
	// before, if set, runs (unlocked) before each call with the call's
	// arguments; tests use it to race with the code under test.
	before func(args string)
	// ignoreAppend makes Append succeed without doing anything (a rule
	// that vanishes at once, as if another tool reloaded the firewall).
	ignoreAppend bool

	stubOnce sync.Once
	stub     *iptStub
}

// fault makes the next times calls whose arguments start with prefix fail
// with an iptables error (status and message) instead of running.
type fakeFault struct {
	prefix string
	status int
	msg    string
	times  int
}

var fakeBuiltinChains = []string{"INPUT", "FORWARD", "OUTPUT"}

var fakeBuiltinTargets = []string{"ACCEPT", "DROP", "REJECT", "RETURN", "LOG"}

func newFake(t testing.TB, f Family) *fakeTables {
	ft := &fakeTables{t: t, name: f.Command(), chains: map[string][]string{}}
	for _, c := range fakeBuiltinChains {
		ft.chains[filterTable+"/"+c] = nil
	}
	return ft
}

// fail queues a fault.
func (ft *fakeTables) fail(prefix string, status int, msg string, times int) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.faults = append(ft.faults, fakeFault{prefix, status, msg, times})
}

// set replaces a chain's rules (given as iptables -S lines or bare specs),
// creating the chain if needed, without recording an operation.
func (ft *fakeTables) set(chain string, rules ...string) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	key := filterTable + "/" + chain
	var rs []string
	for _, r := range rules {
		rs = append(rs, strings.TrimPrefix(r, "-A "+chain+" "))
	}
	ft.chains[key] = rs
}

// rules returns a chain's rules as iptables -S lines, nil if it is missing.
func (ft *fakeTables) rules(chain string) []string {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	rs, ok := ft.chains[filterTable+"/"+chain]
	if !ok {
		return nil
	}
	out := []string{}
	for _, r := range rs {
		out = append(out, "-A "+chain+" "+r)
	}
	return out
}

func (ft *fakeTables) hasChain(chain string) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	_, ok := ft.chains[filterTable+"/"+chain]
	return ok
}

func (ft *fakeTables) mutations() []string {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return slices.Clone(ft.ops)
}

func (ft *fakeTables) allCalls() []string {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	return slices.Clone(ft.calls)
}

func (ft *fakeTables) resetLog() {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.ops, ft.calls = nil, nil
}

// begin records a call and returns its arguments as one line, or an
// injected fault if one matches. It locks ft; the caller unlocks.
func (ft *fakeTables) begin(args ...string) (string, error) {
	line := strings.Join(args, " ")
	if ft.before != nil {
		ft.before(line)
	}
	ft.mu.Lock()
	ft.calls = append(ft.calls, line)
	for i := range ft.faults {
		f := &ft.faults[i]
		if f.times > 0 && strings.HasPrefix(line, f.prefix) {
			f.times--
			return line, ft.errorf(f.status, "%s", f.msg)
		}
	}
	return line, nil
}

func (ft *fakeTables) ChainExists(tbl, chain string) (bool, error) {
	if _, err := ft.begin("-t", tbl, "-S", chain, "1"); err != nil {
		ft.mu.Unlock()
		return false, err
	}
	defer ft.mu.Unlock()
	_, ok := ft.chains[tbl+"/"+chain]
	return ok, nil
}

func (ft *fakeTables) NewChain(tbl, chain string) error {
	line, err := ft.begin("-t", tbl, "-N", chain)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	if _, ok := ft.chains[tbl+"/"+chain]; ok {
		return ft.errorf(1, "%s: Chain already exists.", ft.name)
	}
	ft.chains[tbl+"/"+chain] = nil
	ft.ops = append(ft.ops, line)
	return nil
}

func (ft *fakeTables) List(tbl, chain string) ([]string, error) {
	if _, err := ft.begin("-t", tbl, "-S", chain); err != nil {
		ft.mu.Unlock()
		return nil, err
	}
	defer ft.mu.Unlock()
	rs, ok := ft.chains[tbl+"/"+chain]
	if !ok {
		// iptables-nft 1.8.9's answer, which IsNotExist does not recognize.
		return nil, ft.errorf(1, "%s v1.8.9 (nf_tables): chain `%s' in table `%s' is incompatible, use 'nft' tool.", ft.name, chain, tbl)
	}
	out := []string{"-N " + chain}
	if slices.Contains(fakeBuiltinChains, chain) {
		out = []string{"-P " + chain + " ACCEPT"}
	}
	for _, r := range rs {
		out = append(out, "-A "+chain+" "+r)
	}
	return out, nil
}

func (ft *fakeTables) Insert(tbl, chain string, pos int, rulespec ...string) error {
	line, err := ft.begin(append([]string{"-t", tbl, "-I", chain, strconv.Itoa(pos)}, rulespec...)...)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	rule, err := ft.checkSpec(tbl, chain, rulespec)
	if err != nil {
		return err
	}
	rs := ft.chains[tbl+"/"+chain]
	if pos < 1 || pos > len(rs)+1 {
		return ft.errorf(1, "%s: Index of insertion too big.", ft.name)
	}
	ft.chains[tbl+"/"+chain] = slices.Insert(slices.Clone(rs), pos-1, rule)
	ft.ops = append(ft.ops, line)
	return nil
}

// MoveFirst is iptables-restore --noflush's -D and -I 1 in one step.
func (ft *fakeTables) MoveFirst(tbl, chain string, rulespec ...string) error {
	line, err := ft.begin(append([]string{"-t", tbl, "-D+I1", chain}, rulespec...)...)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	rule, err := ft.checkSpec(tbl, chain, rulespec)
	if err != nil {
		return err
	}
	rs := ft.chains[tbl+"/"+chain]
	i := slices.Index(rs, rule)
	if i < 0 {
		return ft.errorf(1, "%s-restore: line 2 failed", ft.name)
	}
	ft.chains[tbl+"/"+chain] = slices.Insert(slices.Delete(slices.Clone(rs), i, i+1), 0, rule)
	ft.ops = append(ft.ops, line)
	return nil
}

func (ft *fakeTables) Append(tbl, chain string, rulespec ...string) error {
	line, err := ft.begin(append([]string{"-t", tbl, "-A", chain}, rulespec...)...)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	rule, err := ft.checkSpec(tbl, chain, rulespec)
	if err != nil {
		return err
	}
	if !ft.ignoreAppend {
		ft.chains[tbl+"/"+chain] = append(ft.chains[tbl+"/"+chain], rule)
	}
	ft.ops = append(ft.ops, line)
	return nil
}

func (ft *fakeTables) Delete(tbl, chain string, rulespec ...string) error {
	line, err := ft.begin(append([]string{"-t", tbl, "-D", chain}, rulespec...)...)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	rule, err := ft.checkSpec(tbl, chain, rulespec)
	if err != nil {
		return err
	}
	rs := ft.chains[tbl+"/"+chain]
	i := slices.Index(rs, rule)
	if i < 0 {
		return ft.errorf(1, "%s: Bad rule (does a matching rule exist in that chain?).", ft.name)
	}
	ft.chains[tbl+"/"+chain] = slices.Delete(slices.Clone(rs), i, i+1)
	ft.ops = append(ft.ops, line)
	return nil
}

// ClearAndDeleteChain behaves like go-iptables': a missing chain is no
// error; otherwise -F then -X, and -X of a chain still jumped to fails with
// exit 4 EBUSY after the flush has happened.
func (ft *fakeTables) ClearAndDeleteChain(tbl, chain string) error {
	_, err := ft.begin("-t", tbl, "-F", chain, "-X", chain)
	if err != nil {
		ft.mu.Unlock()
		return err
	}
	defer ft.mu.Unlock()
	key := tbl + "/" + chain
	if _, ok := ft.chains[key]; !ok {
		return nil
	}
	ft.chains[key] = nil
	ft.ops = append(ft.ops, "-t "+tbl+" -F "+chain)
	for k, rs := range ft.chains {
		if !strings.HasPrefix(k, tbl+"/") {
			continue
		}
		for _, r := range rs {
			if jumpsTo("-A X "+r, chain) {
				return ft.errorf(4, "%s v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain %s", ft.name, chain)
			}
		}
	}
	delete(ft.chains, key)
	ft.ops = append(ft.ops, "-t "+tbl+" -X "+chain)
	return nil
}

// checkSpec validates a rulespec the way iptables parses it and returns its
// canonical -S text (without "-A <chain> "). ft is locked.
func (ft *fakeTables) checkSpec(tbl, chain string, spec []string) (string, error) {
	for _, a := range spec {
		switch a {
		case "-A", "-I", "-D", "-N", "-X", "-F", "-S", "-C", "-R":
			// go-iptables #129: a listed rule reused without its prefix.
			return "", ft.errorf(2, "%s v1.8.9 (nf_tables): Cannot use %s with -D\nTry `%s -h' or '%s --help' for more information.", ft.name, a, ft.name, ft.name)
		}
	}
	if _, ok := ft.chains[tbl+"/"+chain]; !ok {
		return "", ft.errorf(1, "%s: No chain/target/match by that name.", ft.name)
	}
	for i, a := range spec {
		if (a == "-j" || a == "-g") && i+1 < len(spec) {
			target := spec[i+1]
			if _, ok := ft.chains[tbl+"/"+target]; !ok && !slices.Contains(fakeBuiltinTargets, target) {
				return "", ft.errorf(2, "%s v1.8.9 (nf_tables): Chain '%s' does not exist\nTry `%s -h' or '%s --help' for more information.", ft.name, target, ft.name, ft.name)
			}
		}
	}
	return fakeCanonical(spec), nil
}

// canonical renders a rulespec as iptables -S prints it: --syn becomes
// --tcp-flags FIN,SYN,RST,ACK SYN, tcp options imply -m tcp, and arguments
// with spaces or quotes are quoted.
func fakeCanonical(spec []string) string {
	var out []string
	for i := 0; i < len(spec); i++ {
		if spec[i] == "--syn" {
			out = append(out, "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
			continue
		}
		out = append(out, spec[i])
	}
	needsTCP := slices.ContainsFunc(out, func(a string) bool {
		return a == "--dport" || a == "--sport" || a == "--tcp-flags"
	})
	if needsTCP {
		for i := 0; i+1 < len(out); i++ {
			if out[i] == "-p" && out[i+1] == "tcp" {
				if !(i+3 < len(out) && out[i+2] == "-m" && out[i+3] == "tcp") {
					out = slices.Insert(out, i+2, "-m", "tcp")
				}
				break
			}
		}
	}
	for i, a := range out {
		if a == "" || strings.ContainsAny(a, " \t\"\\") {
			a = strings.ReplaceAll(a, `\`, `\\`)
			a = strings.ReplaceAll(a, `"`, `\"`)
			out[i] = `"` + a + `"`
		}
	}
	return strings.Join(out, " ")
}

// errorf returns a genuine *iptables.Error with the given exit status and
// stderr, made by running go-iptables against a stub binary.
func (ft *fakeTables) errorf(status int, format string, args ...any) error {
	ft.stubOnce.Do(func() { ft.stub = newIptStub(ft.t) })
	return iptStubError(ft.t, ft.stub, status, fmt.Sprintf(format, args...))
}

// stubMu serializes the stub's status and message files.
var iptStubMu sync.Mutex

const iptStubScript = `#!/bin/sh
if [ "$1" = "--version" ]; then echo "iptables v1.8.9 (nf_tables)"; exit 0; fi
d=$(dirname "$0")
cat "$d/msg" >&2
exit "$(cat "$d/status")"
`

// stub is a stand-in iptables binary whose next exit status and stderr are
// read from files beside it, with a go-iptables handle for it.
type iptStub struct {
	dir string
	ipt *iptables.IPTables
}

func newIptStub(t testing.TB) *iptStub {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "iptables")
	if err := os.WriteFile(bin, []byte(iptStubScript), 0o755); err != nil {
		t.Fatal(err)
	}
	ipt, err := iptables.New(iptables.Path(bin), iptables.Timeout(1))
	if err != nil {
		t.Fatalf("stub iptables: %v", err)
	}
	return &iptStub{dir: dir, ipt: ipt}
}

func iptStubError(t testing.TB, s *iptStub, status int, msg string) error {
	iptStubMu.Lock()
	defer iptStubMu.Unlock()
	dir := s.dir
	if err := os.WriteFile(filepath.Join(dir, "msg"), []byte(msg+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "status"), []byte(strconv.Itoa(status)), 0o644); err != nil {
		t.Fatal(err)
	}
	err := s.ipt.NewChain("filter", "STUB")
	var e *iptables.Error
	if !errors.As(err, &e) || e.ExitStatus() != status {
		t.Fatalf("stub iptables returned %v, want exit status %d", err, status)
	}
	return e
}
