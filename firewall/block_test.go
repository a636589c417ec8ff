package firewall

import (
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"go.uber.org/zap/zaptest"
)

// The rules as iptables 1.8.9 -S prints them (checked against the real
// binary, v4 and v6); written out rather than computed, so that these tests
// also pin the canonical form.
const (
	fwJump      = "-A INPUT -j PATCHAGENT-BLOCK"
	reject443   = "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"
	reject844   = "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 8443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"
	drop443     = "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"
	reject80    = "-A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 80 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"
	fwComment   = `-A PATCHAGENT-BLOCK -p tcp -m comment --comment "a \"b\" c\\d" -j DROP`
	fwSSHAccept = "-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"
	fwLoAccept  = "-A INPUT -i lo -j ACCEPT"

	fwLockHeld   = "Another app is currently holding the xtables lock. Stopped waiting after 5s."
	fwNotRoot    = "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
	fwLegacyRoot = "Fatal: can't open lock file /run/xtables.lock: Permission denied"
)

var fwBothFamilies = []Family{IPv4, IPv6}

// newTestFirewall returns a Firewall over fresh fakes for fams, retrying
// fast.
func newFakeFirewall(t *testing.T, r Rules, fams ...Family) (*Firewall, map[Family]*fakeTables) {
	t.Helper()
	fakes := map[Family]*fakeTables{}
	tables := map[Family]Tables{}
	for _, f := range fams {
		fakes[f] = newFake(t, f)
		tables[f] = fakes[f]
	}
	fw, err := New(zaptest.NewLogger(t), tables, r)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	fw.retry = retryPolicy{attempts: 3, base: time.Millisecond, max: 2 * time.Millisecond}
	return fw, fakes
}

var fwReject443 = Rules{Ports: []uint16{443}, Action: Reject}

func fwEqual(t *testing.T, what string, got, want []string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got  %q\n want %q", what, got, want)
	}
}

func TestRulesValidate(t *testing.T) {
	tests := []struct {
		name string
		r    Rules
		want []string // substrings of the error; none means valid
	}{
		{"one port reject", Rules{Ports: []uint16{443}, Action: Reject}, nil},
		{"two ports drop", Rules{Ports: []uint16{443, 8443}, Action: Drop}, nil},
		{"max port", Rules{Ports: []uint16{65535}, Action: Reject}, nil},
		{"no ports", Rules{Action: Reject}, []string{"ports: no port given"}},
		{"empty ports", Rules{Ports: []uint16{}, Action: Drop}, []string{"ports: no port given"}},
		{"port zero", Rules{Ports: []uint16{443, 0}, Action: Reject}, []string{"ports[1]: port 0"}},
		{"duplicate", Rules{Ports: []uint16{443, 80, 443}, Action: Reject}, []string{"ports[2]: port 443 listed twice"}},
		{"unknown action", Rules{Ports: []uint16{443}, Action: "accept"}, []string{`action: "accept"`}},
		{"empty action", Rules{Ports: []uint16{443}}, []string{`action: ""`}},
		{"case matters", Rules{Ports: []uint16{443}, Action: "REJECT"}, []string{`action: "REJECT"`}},
		{"every problem", Rules{Ports: []uint16{0, 0}, Action: "x"}, []string{"ports[0]: port 0", "ports[1]: port 0", `action: "x"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil, want an error with %q", tt.want)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestNewRefuses(t *testing.T) {
	fake := newFake(t, IPv4)
	tests := []struct {
		name   string
		tables map[Family]Tables
		r      Rules
		want   string
	}{
		{"invalid rules", map[Family]Tables{IPv4: fake}, Rules{Action: Reject}, "no port given"},
		{"no families", map[Family]Tables{}, fwReject443, "no IP family"},
		{"nil map", nil, fwReject443, "no IP family"},
		{"nil tables", map[Family]Tables{IPv4: nil}, fwReject443, "nil Tables for ipv4"},
		{"unknown family", map[Family]Tables{"ipx": fake}, fwReject443, `unknown IP family "ipx"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(zaptest.NewLogger(t), tt.tables, tt.r)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New() error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if len(fake.allCalls()) != 0 {
		t.Errorf("New ran iptables: %q", fake.allCalls())
	}
}

func TestFamiliesSortedAndRulesCopied(t *testing.T) {
	ports := []uint16{443}
	fw, err := New(nil, map[Family]Tables{IPv6: newFake(t, IPv6), IPv4: newFake(t, IPv4)}, Rules{Ports: ports, Action: Reject})
	if err != nil {
		t.Fatal(err)
	}
	if got := fw.Families(); !slices.Equal(got, []Family{IPv4, IPv6}) {
		t.Errorf("Families() = %q, want [ipv4 ipv6]", got)
	}
	fw.Families()[0] = "mutated"
	ports[0] = 80
	if got := fw.Families(); got[0] != IPv4 {
		t.Errorf("Families() exposes internal state: %q", got)
	}
	if got := fw.Plan(); !strings.Contains(got[1], "--dport 443 ") {
		t.Errorf("Plan() changed with the caller's slice: %q", got[1])
	}

	fw6, err := New(nil, map[Family]Tables{IPv6: newFake(t, IPv6)}, fwReject443)
	if err != nil {
		t.Fatal(err)
	}
	if got := fw6.Families(); !slices.Equal(got, []Family{IPv6}) {
		t.Errorf("Families() = %q, want [ipv6]", got)
	}
}

func TestPlan(t *testing.T) {
	fw, _ := newFakeFirewall(t, Rules{Ports: []uint16{443, 8443}, Action: Reject}, IPv6, IPv4)
	fwEqual(t, "Plan()", fw.Plan(), []string{
		"iptables -t filter -N PATCHAGENT-BLOCK",
		"iptables -t filter " + reject443,
		"iptables -t filter " + reject844,
		"iptables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK",
		"ip6tables -t filter -N PATCHAGENT-BLOCK",
		"ip6tables -t filter " + reject443,
		"ip6tables -t filter " + reject844,
		"ip6tables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK",
	})

	fw, _ = newFakeFirewall(t, Rules{Ports: []uint16{443}, Action: Drop}, IPv4)
	fwEqual(t, "Plan()", fw.Plan(), []string{
		"iptables -t filter -N PATCHAGENT-BLOCK",
		"iptables -t filter " + drop443,
		"iptables -t filter -I INPUT 1 -j PATCHAGENT-BLOCK",
	})
}

func TestBlockTwiceIsIdempotent(t *testing.T) {
	tests := []struct {
		name  string
		rules Rules
		fams  []Family
		want  []string
	}{
		{"reject both families", fwReject443, fwBothFamilies, []string{reject443}},
		{"drop v4 only", Rules{Ports: []uint16{443}, Action: Drop}, []Family{IPv4}, []string{drop443}},
		{"two ports v6 only", Rules{Ports: []uint16{8443, 443}, Action: Reject}, []Family{IPv6}, []string{reject844, reject443}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, tt.rules, tt.fams...)
			for _, ft := range fakes {
				ft.set("INPUT", fwLoAccept, fwSSHAccept)
			}
			ctx := t.Context()
			if err := fw.Block(ctx); err != nil {
				t.Fatalf("first Block: %v", err)
			}
			for fam, ft := range fakes {
				// On a clean host Block runs exactly what Plan says, in order.
				var plan []string
				for _, l := range fw.Plan() {
					if rest, ok := strings.CutPrefix(l, fam.Command()+" "); ok {
						plan = append(plan, rest)
					}
				}
				fwEqual(t, string(fam)+" operations vs Plan", ft.mutations(), plan)
				ft.resetLog()
			}
			if err := fw.Block(ctx); err != nil {
				t.Fatalf("second Block: %v", err)
			}
			for fam, ft := range fakes {
				if m := ft.mutations(); len(m) != 0 {
					t.Errorf("%s: second Block changed something: %q", fam, m)
				}
				fwEqual(t, string(fam)+" INPUT", ft.rules("INPUT"), []string{fwJump, fwLoAccept, fwSSHAccept})
				fwEqual(t, string(fam)+" chain", ft.rules(Chain), tt.want)
			}
			st, err := fw.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !st.Blocked() || st.Partial() {
				t.Errorf("Status after Block: Blocked=%v Partial=%v (%+v)", st.Blocked(), st.Partial(), st)
			}
		})
	}
}

func TestBlockRemovesDuplicateJumps(t *testing.T) {
	fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
	for _, ft := range fakes {
		ft.set(Chain, reject443)
		ft.set("INPUT", fwJump, fwSSHAccept, fwJump, fwJump)
	}
	if err := fw.Block(t.Context()); err != nil {
		t.Fatal(err)
	}
	for fam, ft := range fakes {
		// -D removes the first copies; the one left, below the SSH rule,
		// is moved back to the top.
		fwEqual(t, string(fam)+" operations", ft.mutations(), []string{
			"-t filter -D INPUT -j PATCHAGENT-BLOCK",
			"-t filter -D INPUT -j PATCHAGENT-BLOCK",
			"-t filter -D+I1 INPUT -j PATCHAGENT-BLOCK",
		})
		fwEqual(t, string(fam)+" INPUT", ft.rules("INPUT"), []string{fwJump, fwSSHAccept})
		fwEqual(t, string(fam)+" chain", ft.rules(Chain), []string{reject443})
	}
}

// TestBlockMovesTheJumpBackToTheTop: another tool inserted a rule above
// the jump (here one that accepts the blocked port: new connections pass
// it). Status no longer says blocked, and Block moves the jump back to
// the top in one step, the other tool's rule kept below it.
func TestBlockMovesTheJumpBackToTheTop(t *testing.T) {
	const accept443 = "-A INPUT -p tcp -m tcp --dport 443 -j ACCEPT"
	fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
	for _, ft := range fakes {
		ft.set(Chain, reject443)
		ft.set("INPUT", accept443, fwJump)
	}
	st, err := fw.Status(t.Context())
	if err != nil || st.Blocked() || !st.Partial() {
		t.Fatalf("status with a rule above the jump: blocked %v partial %v (%v)", st.Blocked(), st.Partial(), err)
	}
	if err := fw.Block(t.Context()); err != nil {
		t.Fatal(err)
	}
	for fam, ft := range fakes {
		fwEqual(t, string(fam)+" operations", ft.mutations(), []string{"-t filter -D+I1 INPUT -j PATCHAGENT-BLOCK"})
		fwEqual(t, string(fam)+" INPUT", ft.rules("INPUT"), []string{fwJump, accept443})
	}
	if st, err := fw.Status(t.Context()); err != nil || !st.Blocked() {
		t.Fatalf("after Block: blocked %v (%v)", st.Blocked(), err)
	}
}

func TestBlockConvergesChainAppendBeforeDelete(t *testing.T) {
	const (
		appendReject443 = "-t filter -A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"
		appendReject844 = "-t filter -A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 8443 --tcp-flags FIN,SYN,RST,ACK SYN -j REJECT --reject-with tcp-reset"
		insertJump      = "-t filter -I INPUT 1 -j PATCHAGENT-BLOCK"
	)
	del := func(line string) string {
		return "-t filter -D PATCHAGENT-BLOCK " + strings.TrimPrefix(line, "-A PATCHAGENT-BLOCK ")
	}
	tests := []struct {
		name       string
		rules      Rules
		chain      []string // nil: no chain
		inputChain []string
		wantOps    []string
		wantChain  []string
	}{
		{
			name:  "stale port, jumped to",
			rules: fwReject443, chain: []string{reject80}, inputChain: []string{fwJump},
			wantOps:   []string{appendReject443, del(reject80)},
			wantChain: []string{reject443},
		},
		{
			name:  "drop where reject is wanted",
			rules: fwReject443, chain: []string{drop443}, inputChain: []string{fwJump},
			wantOps:   []string{appendReject443, "-t filter -D PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP"},
			wantChain: []string{reject443},
		},
		{
			name:  "reject where drop is wanted",
			rules: Rules{Ports: []uint16{443}, Action: Drop}, chain: []string{reject443}, inputChain: []string{fwJump},
			wantOps:   []string{"-t filter -A PATCHAGENT-BLOCK ! -i lo -p tcp -m tcp --dport 443 --tcp-flags FIN,SYN,RST,ACK SYN -j DROP", del(reject443)},
			wantChain: []string{drop443},
		},
		{
			name:  "one port missing, one stale, one right, foreign comment rule",
			rules: Rules{Ports: []uint16{443, 8443}, Action: Reject}, chain: []string{reject80, reject443, fwComment}, inputChain: []string{fwJump},
			// The fake logs raw arguments: the comment reached iptables unquoted.
			wantOps:   []string{appendReject844, del(reject80), `-t filter -D PATCHAGENT-BLOCK -p tcp -m comment --comment a "b" c\d -j DROP`},
			wantChain: []string{reject443, reject844},
		},
		{
			name:  "desired rule twice",
			rules: fwReject443, chain: []string{reject443, reject443}, inputChain: []string{fwJump},
			wantOps:   []string{del(reject443)},
			wantChain: []string{reject443},
		},
		{
			name:  "flushed by another tool",
			rules: fwReject443, chain: []string{}, inputChain: []string{fwJump},
			wantOps:   []string{appendReject443},
			wantChain: []string{reject443},
		},
		{
			name:  "crash after the chain was built, before the jump",
			rules: Rules{Ports: []uint16{443, 8443}, Action: Reject}, chain: []string{reject443}, inputChain: []string{fwSSHAccept},
			wantOps:   []string{appendReject844, insertJump},
			wantChain: []string{reject443, reject844},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, tt.rules, IPv4)
			ft := fakes[IPv4]
			if tt.chain != nil {
				ft.set(Chain, tt.chain...)
			}
			ft.set("INPUT", tt.inputChain...)
			if err := fw.Block(t.Context()); err != nil {
				t.Fatal(err)
			}
			ops := ft.mutations()
			fwEqual(t, "operations", ops, tt.wantOps)
			lastAppend, firstDelete := -1, len(ops)
			for i, op := range ops {
				switch {
				case strings.HasPrefix(op, "-t filter -A "):
					lastAppend = i
				case strings.HasPrefix(op, "-t filter -D PATCHAGENT-BLOCK ") && i < firstDelete:
					firstDelete = i
				case strings.HasPrefix(op, "-t filter -F"):
					t.Errorf("Block flushed a chain: %q", op)
				}
			}
			if lastAppend > firstDelete {
				t.Errorf("a rule was deleted before the last append: %q", ops)
			}
			fwEqual(t, "chain", ft.rules(Chain), tt.wantChain)
			if got := ft.rules("INPUT"); !slices.Equal(got[:1], []string{fwJump}) || slices.Index(got[1:], fwJump) >= 0 {
				t.Errorf("INPUT = %q, want one jump, first", got)
			}
		})
	}
}

func TestBlockNewChainRace(t *testing.T) {
	fw, fakes := newFakeFirewall(t, fwReject443, IPv4)
	ft := fakes[IPv4]
	// Another process creates the chain between our check and our -N.
	ft.before = func(args string) {
		if args == "-t filter -N PATCHAGENT-BLOCK" {
			ft.before = nil
			ft.set(Chain)
		}
	}
	if err := fw.Block(t.Context()); err != nil {
		t.Fatalf("Block after losing the -N race: %v", err)
	}
	fwEqual(t, "chain", ft.rules(Chain), []string{reject443})
	fwEqual(t, "INPUT", ft.rules("INPUT"), []string{fwJump})
}

func TestBlockErrorsNameFamilyAndOperation(t *testing.T) {
	tests := []struct {
		name   string
		prefix string
		status int
		msg    string
		want   string
	}{
		{"new chain", "-t filter -N", 2, "iptables v1.8.9 (nf_tables): something odd", "creating chain filter/PATCHAGENT-BLOCK (ipv6): running ["},
		{"append", "-t filter -A PATCHAGENT-BLOCK", 2, "iptables v1.8.9 (nf_tables): unknown option", "appending rule for port 443 to filter/PATCHAGENT-BLOCK (ipv6)"},
		{"insert jump", "-t filter -I INPUT", 1, "iptables: Index of insertion too big.", "inserting jump to PATCHAGENT-BLOCK in filter/INPUT (ipv6)"},
		{"list", "-t filter -S INPUT", 2, "iptables: weird", "listing filter/INPUT (ipv6)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, fwReject443, IPv6)
			fakes[IPv6].fail(tt.prefix, tt.status, tt.msg, 1)
			err := fw.Block(t.Context())
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.msg) {
				t.Fatalf("Block() = %v, want an error containing %q and %q", err, tt.want, tt.msg)
			}
			var e *iptables.Error
			if !errors.As(err, &e) || e.ExitStatus() != tt.status {
				t.Errorf("Block() error does not wrap the *iptables.Error with status %d: %v", tt.status, err)
			}
		})
	}
}

func TestBlockStopsAtFirstFailingFamily(t *testing.T) {
	fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
	fakes[IPv4].fail("-t filter -I INPUT", 1, "iptables: Index of insertion too big.", 1)
	err := fw.Block(t.Context())
	if err == nil || !strings.Contains(err.Error(), "(ipv4)") {
		t.Fatalf("Block() = %v, want an ipv4 error", err)
	}
	if calls := fakes[IPv6].allCalls(); len(calls) != 0 {
		t.Errorf("ipv6 touched after ipv4 failed: %q", calls)
	}
}

func TestBlockVerifies(t *testing.T) {
	fw, fakes := newFakeFirewall(t, Rules{Ports: []uint16{443, 8443}, Action: Reject}, fwBothFamilies...)
	// ip6tables says yes to -A but the rule is not there (another tool
	// reloaded the ruleset at that moment).
	fakes[IPv6].ignoreAppend = true
	err := fw.Block(t.Context())
	if !errors.Is(err, ErrNotBlocked) {
		t.Fatalf("Block() = %v, want ErrNotBlocked", err)
	}
	for _, w := range []string{"verifying block (ipv6)", `missing rule "` + reject443 + `"`, `missing rule "` + reject844 + `"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("Block() = %q, want it to contain %q", err, w)
		}
	}
	if strings.Contains(err.Error(), "ipv4") {
		t.Errorf("Block() blames ipv4: %q", err)
	}
}

func TestUnblock(t *testing.T) {
	tests := []struct {
		name       string
		chain      []string // nil: no chain
		inputChain []string
		wantOps    []string
	}{
		{
			name:  "block with duplicate jumps and a non-standard one",
			chain: []string{reject443, reject80}, inputChain: []string{fwJump, fwSSHAccept, fwJump, "-A INPUT -i eth0 -j PATCHAGENT-BLOCK", fwJump},
			wantOps: []string{
				"-t filter -D INPUT -j PATCHAGENT-BLOCK",
				"-t filter -D INPUT -j PATCHAGENT-BLOCK",
				"-t filter -D INPUT -j PATCHAGENT-BLOCK",
				"-t filter -D INPUT -i eth0 -j PATCHAGENT-BLOCK",
				"-t filter -F PATCHAGENT-BLOCK",
				"-t filter -X PATCHAGENT-BLOCK",
			},
		},
		{
			name:  "chain without jump (crash while blocking)",
			chain: []string{reject443}, inputChain: []string{fwSSHAccept},
			wantOps: []string{"-t filter -F PATCHAGENT-BLOCK", "-t filter -X PATCHAGENT-BLOCK"},
		},
		{
			name:       "nothing there",
			inputChain: []string{fwSSHAccept},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
			for _, ft := range fakes {
				if tt.chain != nil {
					ft.set(Chain, tt.chain...)
				}
				ft.set("INPUT", tt.inputChain...)
			}
			ctx := t.Context()
			if err := fw.Unblock(ctx); err != nil {
				t.Fatalf("Unblock: %v", err)
			}
			for fam, ft := range fakes {
				fwEqual(t, string(fam)+" operations", ft.mutations(), tt.wantOps)
				fwEqual(t, string(fam)+" INPUT", ft.rules("INPUT"), []string{fwSSHAccept})
				if ft.hasChain(Chain) {
					t.Errorf("%s: chain still exists", fam)
				}
				ft.resetLog()
			}
			if err := fw.Unblock(ctx); err != nil {
				t.Fatalf("second Unblock: %v", err)
			}
			for fam, ft := range fakes {
				if m := ft.mutations(); len(m) != 0 {
					t.Errorf("%s: second Unblock changed something: %q", fam, m)
				}
			}
			st, err := fw.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.Blocked() || st.Partial() {
				t.Errorf("Status after Unblock: Blocked=%v Partial=%v", st.Blocked(), st.Partial())
			}
		})
	}
}

func TestUnblockRemovesEveryFamilysJumpBeforeCleaningUp(t *testing.T) {
	// Clients of both families get back in as soon as possible: IPv6's jump
	// goes before IPv4's chain is flushed, deleted and verified.
	fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
	if err := fw.Block(t.Context()); err != nil {
		t.Fatal(err)
	}
	checked := false
	fakes[IPv4].before = func(args string) {
		if strings.Contains(args, "-F "+Chain) && !checked {
			checked = true
			if r := fakes[IPv6].rules("INPUT"); slices.Contains(r, fwJump) {
				t.Errorf("ipv4 chain flushed while ipv6 INPUT still jumps to it: %q", r)
			}
		}
	}
	if err := fw.Unblock(t.Context()); err != nil {
		t.Fatal(err)
	}
	if !checked {
		t.Fatal("ipv4 chain never flushed")
	}
}

func TestBlockUnblockRoundTrip(t *testing.T) {
	fw, fakes := newFakeFirewall(t, Rules{Ports: []uint16{443, 8443}, Action: Drop}, fwBothFamilies...)
	for _, ft := range fakes {
		ft.set("INPUT", fwLoAccept, fwSSHAccept)
	}
	ctx := t.Context()
	for i := range 2 {
		if err := fw.Block(ctx); err != nil {
			t.Fatalf("Block %d: %v", i, err)
		}
		if err := fw.Unblock(ctx); err != nil {
			t.Fatalf("Unblock %d: %v", i, err)
		}
	}
	for fam, ft := range fakes {
		fwEqual(t, string(fam)+" INPUT", ft.rules("INPUT"), []string{fwLoAccept, fwSSHAccept})
		if ft.hasChain(Chain) {
			t.Errorf("%s: chain left behind", fam)
		}
	}
}

func TestUnblockKeepsGoingAndReportsLeftovers(t *testing.T) {
	fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
	if err := fw.Block(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Someone's own chain on ipv4 jumps to ours, so it cannot be deleted.
	fakes[IPv4].set("OTHER", "-A OTHER -j PATCHAGENT-BLOCK")
	err := fw.Unblock(t.Context())
	if err == nil || !strings.Contains(err.Error(), "deleting chain filter/PATCHAGENT-BLOCK (ipv4)") ||
		!strings.Contains(err.Error(), "Device or resource busy") {
		t.Fatalf("Unblock() = %v, want the ipv4 chain deletion to fail with EBUSY", err)
	}
	if n := strings.Count(strings.Join(fakes[IPv4].allCalls(), "\n"), "-F PATCHAGENT-BLOCK -X"); n != 3 {
		t.Errorf("chain deletion tried %d times, want 3 (EBUSY is exit 4, retried)", n)
	}
	// ipv4 is no longer blocking (no jump, chain flushed); ipv6 is clean.
	fwEqual(t, "ipv4 INPUT", fakes[IPv4].rules("INPUT"), []string{})
	fwEqual(t, "ipv4 chain", fakes[IPv4].rules(Chain), []string{})
	if fakes[IPv6].hasChain(Chain) || len(fakes[IPv6].rules("INPUT")) != 0 {
		t.Errorf("ipv6 not unblocked after ipv4 failed: chain=%v INPUT=%q", fakes[IPv6].hasChain(Chain), fakes[IPv6].rules("INPUT"))
	}
}

func TestStatus(t *testing.T) {
	type setup struct{ chain, inputChain []string }
	blocked := setup{[]string{reject443}, []string{fwJump, fwSSHAccept}}
	clean := setup{nil, []string{fwSSHAccept}}
	tests := []struct {
		name        string
		v4, v6      setup
		wantBlocked bool
		wantPartial bool
	}{
		{"clean", clean, clean, false, false},
		{"blocked", blocked, blocked, true, false},
		{"blocked, jump not first", blocked, setup{[]string{reject443}, []string{fwSSHAccept, fwJump}}, false, true},
		{"one family only", blocked, clean, false, true},
		{"chain without jump", setup{[]string{reject443}, nil}, clean, false, true},
		{"empty chain without jump", setup{[]string{}, nil}, clean, false, true},
		{"two jumps", setup{[]string{reject443}, []string{fwJump, fwJump}}, blocked, false, true},
		{"stale rule", setup{[]string{drop443}, []string{fwJump}}, blocked, false, true},
		{"extra rule", setup{[]string{reject443, reject80}, []string{fwJump}}, blocked, false, true},
		{"duplicate rule", setup{[]string{reject443, reject443}, []string{fwJump}}, blocked, false, true},
		{"only a non-standard jump", setup{[]string{reject443}, []string{"-A INPUT -p tcp -j PATCHAGENT-BLOCK"}}, clean, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
			for fam, s := range map[Family]setup{IPv4: tt.v4, IPv6: tt.v6} {
				if s.chain != nil {
					fakes[fam].set(Chain, s.chain...)
				}
				fakes[fam].set("INPUT", s.inputChain...)
			}
			st, err := fw.Status(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			if st.Blocked() != tt.wantBlocked || st.Partial() != tt.wantPartial {
				t.Errorf("Blocked=%v Partial=%v, want %v %v; status %+v", st.Blocked(), st.Partial(), tt.wantBlocked, tt.wantPartial, st)
			}
			for _, ft := range fakes {
				if m := ft.mutations(); len(m) != 0 {
					t.Errorf("Status changed something: %q", m)
				}
			}
		})
	}

	t.Run("fields", func(t *testing.T) {
		fw, fakes := newFakeFirewall(t, fwReject443, IPv4)
		fakes[IPv4].set(Chain, reject443, reject80)
		fakes[IPv4].set("INPUT", fwSSHAccept, fwJump, "-A INPUT -i eth0 -j PATCHAGENT-BLOCK", fwJump)
		st, err := fw.Status(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		got := st.Families[IPv4]
		if !got.Chain || got.Jumps != 2 || got.OtherJumps != 1 || got.RulesOK || got.JumpFirst {
			t.Errorf("FamilyStatus = %+v", got)
		}
		fwEqual(t, "Rules", got.Rules, []string{reject443, reject80})
		if len(st.Families) != 1 {
			t.Errorf("Families = %v, want ipv4 only", st.Families)
		}
	})

	t.Run("empty status", func(t *testing.T) {
		if (Status{}).Blocked() || (Status{}).Partial() {
			t.Error("an empty Status claims something")
		}
	})
}

func TestContextCancelled(t *testing.T) {
	t.Run("before any call", func(t *testing.T) {
		fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := fw.Block(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Block() = %v, want context.Canceled", err)
		}
		if err := fw.Unblock(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Unblock() = %v, want context.Canceled", err)
		}
		if _, err := fw.Status(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Status() = %v, want context.Canceled", err)
		}
		for fam, ft := range fakes {
			if c := ft.allCalls(); len(c) != 0 {
				t.Errorf("%s: iptables ran after cancel: %q", fam, c)
			}
		}
	})
	t.Run("mid-block: no jump to a half-built chain", func(t *testing.T) {
		fw, fakes := newFakeFirewall(t, Rules{Ports: []uint16{443, 8443}, Action: Reject}, IPv4)
		ft := fakes[IPv4]
		ctx, cancel := context.WithCancel(t.Context())
		ft.before = func(args string) {
			if strings.HasPrefix(args, "-t filter -A ") {
				cancel()
			}
		}
		err := fw.Block(ctx)
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Block() = %v, want context.Canceled", err)
		}
		if !strings.Contains(err.Error(), "appending rule for port 8443 to filter/PATCHAGENT-BLOCK (ipv4)") {
			t.Errorf("Block() = %q, want it to name the step it stopped at", err)
		}
		fwEqual(t, "INPUT", ft.rules("INPUT"), []string{})
		fwEqual(t, "chain", ft.rules(Chain), []string{reject443})
	})
	t.Run("mid-unblock", func(t *testing.T) {
		fw, fakes := newFakeFirewall(t, fwReject443, fwBothFamilies...)
		if err := fw.Block(t.Context()); err != nil {
			t.Fatal(err)
		}
		fakes[IPv6].resetLog()
		ctx, cancel := context.WithCancel(t.Context())
		fakes[IPv4].before = func(args string) {
			if strings.HasPrefix(args, "-t filter -D INPUT") {
				cancel()
			}
		}
		err := fw.Unblock(ctx)
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "(ipv4)") || !strings.Contains(err.Error(), "(ipv6)") {
			t.Fatalf("Unblock() = %v, want context.Canceled for both families", err)
		}
		if c := fakes[IPv6].allCalls(); len(c) != 0 {
			t.Errorf("ipv6: iptables ran after cancel: %q", c)
		}
	})
}

func TestRetry(t *testing.T) {
	tests := []struct {
		name      string
		prefix    string
		status    int
		msg       string
		times     int
		wantErr   string // empty: Block succeeds
		wantCalls int    // calls starting with prefix
	}{
		{"lock held once", "-t filter -I INPUT", 4, fwLockHeld, 1, "", 2},
		{"busy twice", "-t filter -A PATCHAGENT-BLOCK", 4, "iptables v1.8.9 (nf_tables): Device or resource busy", 2, "", 3},
		{"lock held throughout", "-t filter -I INPUT", 4, fwLockHeld, 100, "inserting jump to PATCHAGENT-BLOCK in filter/INPUT (ipv4)", 3},
		{"not root (nft)", "-t filter -S PATCHAGENT-BLOCK 1", 4, fwNotRoot, 100, "checking chain filter/PATCHAGENT-BLOCK (ipv4)", 1},
		{"not root (legacy)", "-t filter -S PATCHAGENT-BLOCK 1", 4, fwLegacyRoot, 100, "Permission denied", 1},
		{"exit 1 is final", "-t filter -I INPUT", 1, "iptables: Index of insertion too big.", 100, "Index of insertion", 1},
		{"exit 2 is final", "-t filter -A PATCHAGENT-BLOCK", 2, "iptables v1.8.9 (nf_tables): unknown option", 100, "unknown option", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fw, fakes := newFakeFirewall(t, fwReject443, IPv4)
			ft := fakes[IPv4]
			ft.fail(tt.prefix, tt.status, tt.msg, tt.times)
			err := fw.Block(t.Context())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Block() = %v, want success after retrying", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Block() = %v, want an error containing %q", err, tt.wantErr)
			}
			n := 0
			for _, c := range ft.allCalls() {
				if strings.HasPrefix(c, tt.prefix) {
					n++
				}
			}
			if n != tt.wantCalls {
				t.Errorf("%d calls of %q, want %d", n, tt.prefix, tt.wantCalls)
			}
			if tt.wantErr == "" {
				fwEqual(t, "INPUT", ft.rules("INPUT"), []string{fwJump})
				fwEqual(t, "chain", ft.rules(Chain), []string{reject443})
			}
		})
	}

	t.Run("backoff ends with ctx", func(t *testing.T) {
		fw, fakes := newFakeFirewall(t, fwReject443, IPv4)
		fw.retry = retryPolicy{attempts: 10, base: time.Hour, max: time.Hour}
		fakes[IPv4].fail("-t filter -S PATCHAGENT-BLOCK 1", 4, fwLockHeld, 100)
		ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := fw.Block(ctx)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Block() = %v, want context.DeadlineExceeded", err)
		}
		if !strings.Contains(err.Error(), "xtables lock") {
			t.Errorf("Block() = %q, want it to keep the last iptables error", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Block() took %v after the deadline", d)
		}
	})
}

// TestErrorClassification runs on genuine *iptables.Error values, with the
// messages iptables-nft 1.8.9 and iptables-legacy print.
func TestErrorClassification(t *testing.T) {
	s := newIptStub(t)
	tests := []struct {
		status    int
		msg       string
		notExist  bool
		retryable bool
	}{
		{1, "iptables: Bad rule (does a matching rule exist in that chain?).", true, false},
		{2, "iptables v1.8.9 (nf_tables): Chain 'PATCHAGENT-BLOCK' does not exist\nTry `iptables -h' or 'iptables --help' for more information.", true, false},
		{1, "iptables: No chain/target/match by that name.", true, false},
		{1, "iptables: Chain already exists.", false, false},
		{1, "iptables v1.8.9 (nf_tables): chain `PATCHAGENT-BLOCK' in table `filter' is incompatible, use 'nft' tool.", false, false},
		{2, "iptables v1.8.9 (nf_tables): invalid port/service `notaport' specified", false, false},
		{4, fwLockHeld, false, true},
		{4, "iptables v1.8.9 (nf_tables):  CHAIN_DEL failed (Device or resource busy): chain PATCHAGENT-BLOCK", false, true},
		{4, fwNotRoot, false, false},
		{4, fwLegacyRoot, false, false},
		{4, "iptables v1.8.9 (nf_tables): Operation not permitted", false, false},
	}
	for _, tt := range tests {
		err := iptStubError(t, s, tt.status, tt.msg)
		for _, e := range []error{err, errors.Join(errors.New("context"), err)} {
			if got := isNotExist(e); got != tt.notExist {
				t.Errorf("isNotExist(exit %d %q) = %v, want %v", tt.status, tt.msg, got, tt.notExist)
			}
			if got := retryable(e); got != tt.retryable {
				t.Errorf("retryable(exit %d %q) = %v, want %v", tt.status, tt.msg, got, tt.retryable)
			}
		}
	}
	for _, e := range []error{nil, errors.New("exit status 4"), exec.ErrNotFound, context.Canceled} {
		if isNotExist(e) || retryable(e) {
			t.Errorf("%v classified as an iptables error", e)
		}
	}
}

func TestSpecOf(t *testing.T) {
	tests := []struct {
		line string
		want []string
	}{
		{reject443, []string{"!", "-i", "lo", "-p", "tcp", "-m", "tcp", "--dport", "443", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-j", "REJECT", "--reject-with", "tcp-reset"}},
		{fwComment, []string{"-p", "tcp", "-m", "comment", "--comment", `a "b" c\d`, "-j", "DROP"}},
		{`-A PATCHAGENT-BLOCK -m comment --comment "" -j DROP`, []string{"-m", "comment", "--comment", "", "-j", "DROP"}},
	}
	for _, tt := range tests {
		got, err := specOf(tt.line, Chain)
		if err != nil {
			t.Errorf("specOf(%q): %v", tt.line, err)
			continue
		}
		fwEqual(t, "specOf("+tt.line+")", got, tt.want)
		// And iptables (the fake's canonical form) prints it back the same.
		if back := "-A " + Chain + " " + fakeCanonical(got); back != tt.line {
			t.Errorf("round trip: %q -> %q", tt.line, back)
		}
	}
	for _, bad := range []string{"-A INPUT -j DROP", `-A PATCHAGENT-BLOCK --comment "open`, `-A PATCHAGENT-BLOCK --comment "x\`} {
		if _, err := specOf(bad, Chain); err == nil {
			t.Errorf("specOf(%q) succeeded", bad)
		}
	}
}

func TestLockWaitSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{
		0: 5, -time.Second: 5, time.Nanosecond: 1, time.Second: 1,
		1500 * time.Millisecond: 2, 5 * time.Second: 5, time.Minute: 60,
	} {
		if got := lockWaitSeconds(d); got != want {
			t.Errorf("lockWaitSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestNewTables(t *testing.T) {
	if _, err := NewTables("ipx", time.Second); err == nil {
		t.Error(`NewTables("ipx") succeeded`)
	}
	for _, f := range fwBothFamilies {
		if _, err := exec.LookPath(f.Command()); err != nil {
			t.Logf("%s not installed; skipping the real constructor", f.Command())
			continue
		}
		// Runs only "<binary> --version".
		tb, err := NewTables(f, 2*time.Second)
		if err != nil {
			t.Errorf("NewTables(%s): %v", f, err)
			continue
		}
		b, ok := tb.(*boundedTables)
		if !ok {
			t.Errorf("NewTables(%s) = %T, want *boundedTables", f, tb)
			continue
		}
		if _, ok := b.t.(*iptables.IPTables); !ok || b.timeout != 2*time.Second+callGrace {
			t.Errorf("NewTables(%s) bounds a %T within %s, want *iptables.IPTables within %s", f, b.t, b.timeout, 2*time.Second+callGrace)
		}
	}
}
