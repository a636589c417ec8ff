package firewall

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// Family is an IP family whose firewall is managed by its own binary
// (iptables or ip6tables).
type Family string

const (
	IPv4 Family = "ipv4"
	IPv6 Family = "ipv6"
)

// Command is the iptables binary for the family ("iptables" or "ip6tables");
// it is what Plan prints.
func (f Family) Command() string {
	if f == IPv6 {
		return "ip6tables"
	}
	return "iptables"
}

func (f Family) valid() bool { return f == IPv4 || f == IPv6 }

// Chain is the chain, in table filter of every managed family, that holds the
// block rules. INPUT jumps to it while blocked.
const Chain = "PATCHAGENT-BLOCK"

const (
	filterTable = "filter"
	inputChain  = "INPUT"
)

// DefaultLockWait is the xtables lock wait NewTables uses when given a
// non-positive one.
const DefaultLockWait = 5 * time.Second

// Tables is the subset of *iptables.IPTables (github.com/coreos/go-iptables)
// that Firewall calls. Its methods run one iptables command each (two or three
// for ClearAndDeleteChain) and take no context: a call is bounded only by the
// xtables lock wait set in NewTables.
type Tables interface {
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	List(table, chain string) ([]string, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	ClearAndDeleteChain(table, chain string) error
	// MoveFirst deletes the first rule of chain that matches rulespec and
	// inserts it at position 1, in one transaction: the rule is never
	// missing meanwhile, and no other rule is touched.
	MoveFirst(table, chain string, rulespec ...string) error
}

// NewTables builds the real Tables for a family: the system's default
// iptables or ip6tables binary (nf_tables or legacy, whichever the host's
// alternatives select), waiting at most lockWait (rounded up to whole seconds,
// DefaultLockWait if lockWait <= 0) for the xtables lock. It never waits
// forever, unlike go-iptables' default, and every command it runs (the
// version probe here included) is killed if it has not finished callGrace
// after the lock wait (boundedTables). It fails if the binary is missing or
// its version cannot be read; the caller decides whether that family is then
// left unmanaged.
func NewTables(f Family, lockWait time.Duration) (Tables, error) {
	return newTables(f, lockWait, callGrace)
}

// newTables is NewTables with the grace beyond the lock wait given.
func newTables(f Family, lockWait, grace time.Duration) (Tables, error) {
	if !f.valid() {
		return nil, fmt.Errorf("setting up iptables: unknown family %q", f)
	}
	// The binary on PATH, then where distributions install it: hook callers
	// may run with a PATH without the sbin directories.
	var candidates []string
	if p, err := exec.LookPath(f.Command()); err == nil {
		candidates = append(candidates, p)
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, f.Command())
		if fi, serr := os.Stat(p); serr == nil && fi.Mode().IsRegular() && !slices.Contains(candidates, p) {
			candidates = append(candidates, p)
		}
	}
	if len(candidates) == 0 {
		return nil, fmt.Errorf("setting up %s (%s): %w", f.Command(), f, exec.ErrNotFound)
	}
	var first error
	for _, p := range candidates {
		t, err := tablesAt(f, p, lockWait, grace)
		if err == nil {
			return t, nil
		}
		if first == nil {
			first = err
		}
	}
	return nil, fmt.Errorf("setting up %s (%s): %w", f.Command(), f, first)
}

// tablesAt is the bounded Tables of the binary at path for family f.
func tablesAt(f Family, path string, lockWait, grace time.Duration) (Tables, error) {
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	wait := lockWaitSeconds(lockWait)
	timeout := time.Duration(wait)*time.Second + grace
	ipt, err := bounded(path, timeout, "--version", func() (*iptables.IPTables, error) {
		return iptables.New(iptables.IPFamily(proto), iptables.Timeout(wait), iptables.Path(path))
	})
	if err != nil {
		return nil, err
	}
	return &boundedTables{t: ipt, path: path, wait: wait, timeout: timeout}, nil
}

// lockWaitSeconds converts a lock wait to go-iptables' whole seconds, where 0
// would mean "wait forever".
func lockWaitSeconds(d time.Duration) int {
	if d <= 0 {
		d = DefaultLockWait
	}
	s := int((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return s
}

// isNotExist reports whether err is iptables saying that a rule or chain is
// not there.
func isNotExist(err error) bool {
	var e *iptables.Error
	return errors.As(err, &e) && e.IsNotExist()
}

// retryable reports whether err is iptables' exit status 4 (resource problem:
// xtables lock timeout, EBUSY, a transient netlink failure) other than a
// permission problem, which retrying cannot fix.
func retryable(err error) bool {
	var e *iptables.Error
	if !errors.As(err, &e) || e.ExitStatus() != 4 {
		return false
	}
	msg := strings.ToLower(e.Error())
	for _, s := range []string{"permission denied", "must be root", "operation not permitted"} {
		if strings.Contains(msg, s) {
			return false
		}
	}
	return true
}

// blockSpec is the rule for one port, in the canonical form iptables -S prints
// it back (--syn is printed as -m tcp ... --tcp-flags FIN,SYN,RST,ACK SYN), so
// that what Block appends, what Plan prints and what verification expects are
// the same text.
func blockSpec(port uint16, a Action) []string {
	spec := []string{
		"!", "-i", "lo", "-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(port)),
		"--tcp-flags", "FIN,SYN,RST,ACK", "SYN",
	}
	if a == Drop {
		return append(spec, "-j", "DROP")
	}
	return append(spec, "-j", "REJECT", "--reject-with", "tcp-reset")
}

// jumpSpec is the jump from INPUT, kept minimal (no interface, no comment)
// because iptables -C has version-specific bugs with both.
func jumpSpec() []string { return []string{"-j", Chain} }

// ruleLine is how iptables -S prints spec appended to chain.
func ruleLine(chain string, spec []string) string {
	return "-A " + chain + " " + strings.Join(spec, " ")
}

// ruleLines returns the rules (the "-A <chain> ..." lines) of chain from List
// output, dropping the -P/-N header and any "#" warning line.
func ruleLines(listed []string, chain string) []string {
	prefix := "-A " + chain + " "
	var out []string
	for _, l := range listed {
		l = strings.TrimSpace(l)
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return out
}

// specOf turns a listed rule back into a rulespec for Delete: it strips the
// "-A <chain>" prefix (go-iptables #129: Delete and Exists refuse it) and
// splits the rest into arguments, undoing iptables' quoting of strings
// ("a \"b\" c\\d").
func specOf(line, chain string) ([]string, error) {
	prefix := "-A " + chain + " "
	if !strings.HasPrefix(line, prefix) {
		return nil, fmt.Errorf("rule %q is not in chain %s", line, chain)
	}
	return splitArgs(strings.TrimPrefix(line, prefix))
}

// splitArgs splits iptables -S output into arguments: whitespace separates,
// double quotes group, and a backslash inside quotes escapes the next byte.
func splitArgs(s string) ([]string, error) {
	var (
		args   []string
		cur    strings.Builder
		inArg  bool
		quoted bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\':
			if i+1 == len(s) {
				return nil, fmt.Errorf("splitting rule %q: trailing backslash", s)
			}
			i++
			cur.WriteByte(s[i])
		case quoted && c == '"':
			quoted = false
		case quoted:
			cur.WriteByte(c)
		case c == '"':
			quoted, inArg = true, true
		case c == ' ' || c == '\t':
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if quoted {
		return nil, fmt.Errorf("splitting rule %q: unterminated quote", s)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// jumpsTo reports whether a listed rule sends packets to chain (-j or -g),
// whatever else it matches on.
func jumpsTo(line, chain string) bool {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if (f[i] == "-j" || f[i] == "-g" || f[i] == "--jump" || f[i] == "--goto") && f[i+1] == chain {
			return true
		}
	}
	return false
}
