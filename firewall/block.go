package firewall

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Action is what the block does to a new connection.
type Action string

const (
	// Reject answers the SYN with a TCP reset: clients and load balancers see
	// "connection refused" at once and fail over.
	Reject Action = "reject"
	// Drop discards the SYN: clients retry until their own connect timeout.
	Drop Action = "drop"
)

// Rules says which new connections Block refuses.
type Rules struct {
	// Ports are the local TCP ports to close to new connections.
	Ports []uint16
	// Action is Reject (REJECT --reject-with tcp-reset) or Drop.
	Action Action
}

// Validate returns every problem with r, each named by its field.
func (r Rules) Validate() error {
	var errs []error
	if len(r.Ports) == 0 {
		errs = append(errs, errors.New("ports: no port given"))
	}
	seen := make(map[uint16]bool, len(r.Ports))
	for i, p := range r.Ports {
		switch {
		case p == 0:
			errs = append(errs, fmt.Errorf("ports[%d]: port 0 is not a port", i))
		case seen[p]:
			errs = append(errs, fmt.Errorf("ports[%d]: port %d listed twice", i, p))
		}
		seen[p] = true
	}
	if r.Action != Reject && r.Action != Drop {
		errs = append(errs, fmt.Errorf("action: %q is not %q or %q", r.Action, Reject, Drop))
	}
	return errors.Join(errs...)
}

// ErrNotBlocked is wrapped by Block when, after converging, iptables -S still
// does not show exactly the desired block.
var ErrNotBlocked = errors.New("block not in place")

// ErrStillBlocked is wrapped by Unblock when, after removing, iptables -S
// still shows something of ours.
var ErrStillBlocked = errors.New("block still present")

// maxJumpDeletes bounds Unblock's "delete the jump until none is left" loop.
const maxJumpDeletes = 100

type retryPolicy struct {
	attempts int           // calls in all, the first included
	base     time.Duration // first backoff; doubles up to max
	max      time.Duration
}

// Firewall blocks and unblocks new inbound TCP connections to a set of ports
// in each managed IP family. Its methods are safe for concurrent use; they
// are serialized. It does not serialize with other processes: the caller
// holds the agent's own lock.
type Firewall struct {
	log      *zap.Logger
	tables   map[Family]Tables
	families []Family
	rules    Rules
	specs    [][]string // one rulespec per port, in Rules.Ports order
	lines    []string   // the same rules as iptables -S prints them
	retry    retryPolicy
	// watched are the places a block of ours may be that f does not
	// write (backend.go): the other iptables backend of each family, and
	// the families the config no longer manages. Status reports them as
	// Stray, Unblock removes what is there.
	watched []*otherBackend

	mu sync.Mutex
}

// New returns a Firewall that manages exactly the families in tables (the
// caller leaves out a family it cannot or will not manage, such as IPv6 on a
// host without ip6tables). It validates r and runs no iptables command.
func New(log *zap.Logger, tables map[Family]Tables, r Rules) (*Firewall, error) {
	if err := r.Validate(); err != nil {
		return nil, fmt.Errorf("firewall rules: %w", err)
	}
	if len(tables) == 0 {
		return nil, errors.New("firewall: no IP family to manage")
	}
	if log == nil {
		log = zap.NewNop()
	}
	f := &Firewall{
		log:    log.Named("firewall"),
		tables: make(map[Family]Tables, len(tables)),
		rules:  Rules{Ports: slices.Clone(r.Ports), Action: r.Action},
		retry:  retryPolicy{attempts: 5, base: 100 * time.Millisecond, max: time.Second},
	}
	for fam, t := range tables {
		if !fam.valid() {
			return nil, fmt.Errorf("firewall: unknown IP family %q", fam)
		}
		if t == nil {
			return nil, fmt.Errorf("firewall: nil Tables for %s", fam)
		}
		f.tables[fam] = t
		f.families = append(f.families, fam)
	}
	slices.Sort(f.families) // "ipv4" < "ipv6"
	for _, p := range f.rules.Ports {
		spec := blockSpec(p, f.rules.Action)
		f.specs = append(f.specs, spec)
		f.lines = append(f.lines, ruleLine(Chain, spec))
	}
	f.log.Info("firewall configured",
		zap.Strings("families", familyNames(f.families)),
		zap.Any("ports", f.rules.Ports),
		zap.String("action", string(f.rules.Action)))
	return f, nil
}

// Families returns the managed families, sorted, IPv4 first.
func (f *Firewall) Families() []Family { return slices.Clone(f.families) }

// Plan returns the iptables command lines Block ensures, family by family, in
// the order it would run them on a clean host (for --dry-run output). On a
// host already partly blocked, Block runs only the missing ones.
func (f *Firewall) Plan() []string {
	var out []string
	for _, fam := range f.families {
		cmd := fam.Command() + " -t " + filterTable + " "
		out = append(out, cmd+"-N "+Chain)
		for _, line := range f.lines {
			out = append(out, cmd+line)
		}
		out = append(out, cmd+"-I "+inputChain+" 1 "+strings.Join(jumpSpec(), " "))
	}
	return out
}

// Block converges every managed family to the block and verifies it: the
// chain exists holding exactly one rule per port, and INPUT holds exactly one
// jump to it. It is idempotent and crash-safe, so the caller may re-run it at
// any time (to re-assert the block while in maintenance, or after a crash):
// the chain content is completed before the jump is added, missing rules are
// appended before unwanted ones are deleted, and a chain that may be jumped
// to is never flushed.
//
// Families are handled in Families order and Block stops at the first error,
// which names the family and the operation; families already handled stay
// blocked. A verification failure wraps ErrNotBlocked.
func (f *Firewall) Block(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fam := range f.families {
		if err := f.blockFamily(ctx, fam, f.tables[fam]); err != nil {
			return err
		}
	}
	return nil
}

// blockFamily converges fam to the block in the order that keeps it safe
// (chain, then its content, then the jump) and verifies the result.
func (f *Firewall) blockFamily(ctx context.Context, fam Family, t Tables) error {
	log := f.log.With(zap.String("family", string(fam)))
	chainChanged, err := f.ensureChain(ctx, fam, t, log)
	if err != nil {
		return err
	}
	rulesChanged, err := f.ensureRules(ctx, fam, t, log)
	if err != nil {
		return err
	}
	jumpChanged, err := f.ensureJump(ctx, fam, t, log)
	if err != nil {
		return err
	}
	return f.verifyBlock(ctx, fam, t, log, chainChanged || rulesChanged || jumpChanged)
}

// ensureChain creates our chain in fam unless it exists, and reports
// whether it did (or another process did at the same moment).
func (f *Firewall) ensureChain(ctx context.Context, fam Family, t Tables, log *zap.Logger) (changed bool, err error) {
	exists, err := f.chainExists(ctx, fam, t)
	if err != nil || exists {
		return false, err
	}
	err = f.call(ctx, fam, "creating chain "+filterTable+"/"+Chain, func() error { return t.NewChain(filterTable, Chain) })
	if err != nil {
		// Exit 1 "Chain already exists." after losing a race is fine;
		// anything else is not.
		again, err2 := f.chainExists(ctx, fam, t)
		if err2 != nil || !again {
			return false, err
		}
		log.Info("chain created concurrently", zap.String("chain", Chain))
	} else {
		log.Info("chain created", zap.String("chain", Chain))
	}
	return true, nil
}

// ensureRules makes the chain hold exactly one rule per port. It appends
// what is missing first, then deletes what is not wanted, so that a port
// blocked before stays blocked throughout. It reports whether it changed
// anything.
func (f *Firewall) ensureRules(ctx context.Context, fam Family, t Tables, log *zap.Logger) (changed bool, err error) {
	current, err := f.listRules(ctx, fam, t, Chain)
	if err != nil {
		return false, err
	}
	for i, line := range f.lines {
		if slices.Contains(current, line) {
			continue
		}
		port := f.rules.Ports[i]
		op := fmt.Sprintf("appending rule for port %d to %s/%s", port, filterTable, Chain)
		if err := f.call(ctx, fam, op, func() error { return t.Append(filterTable, Chain, f.specs[i]...) }); err != nil {
			return changed, err
		}
		log.Info("rule appended", zap.Uint16("port", port), zap.String("action", string(f.rules.Action)))
		changed = true
	}
	kept := make(map[string]bool, len(f.lines))
	for _, line := range current {
		if slices.Contains(f.lines, line) && !kept[line] {
			kept[line] = true
			continue
		}
		deleted, err := f.deleteLine(ctx, fam, t, Chain, "stale rule", line)
		switch {
		case err != nil:
			return changed, err
		case deleted:
			log.Info("stale rule deleted", zap.String("rule", line))
			changed = true
		default:
			log.Info("stale rule already gone", zap.String("rule", line))
		}
	}
	return changed, nil
}

// ensureJump inserts the jump to our chain at the top of INPUT, last and
// only if absent, removes extra copies (from a crash or a race), keeping
// one, and moves it back to the top when another tool inserted a rule
// above it (one that accepts the blocked ports would let new connections
// through). It reports whether it changed anything.
func (f *Firewall) ensureJump(ctx context.Context, fam Family, t Tables, log *zap.Logger) (changed bool, err error) {
	in, err := f.listRules(ctx, fam, t, inputChain)
	if err != nil {
		return false, err
	}
	jumps, _, _ := countJumps(in)
	if jumps == 0 {
		op := fmt.Sprintf("inserting jump to %s in %s/%s", Chain, filterTable, inputChain)
		if err := f.call(ctx, fam, op, func() error { return t.Insert(filterTable, inputChain, 1, jumpSpec()...) }); err != nil {
			return false, err
		}
		log.Info("jump inserted", zap.String("chain", inputChain), zap.Int("position", 1))
		changed = true
	}
	for i := 1; i < jumps; i++ {
		op := fmt.Sprintf("deleting duplicate jump to %s from %s/%s", Chain, filterTable, inputChain)
		deleted, err := f.deleteRule(ctx, fam, t, inputChain, op, jumpSpec())
		if err != nil {
			return changed, err
		}
		if deleted {
			log.Info("duplicate jump removed", zap.String("chain", inputChain))
			changed = true
		}
	}
	if jumps > 0 {
		if in, err = f.listRules(ctx, fam, t, inputChain); err != nil {
			return changed, err
		}
		if n, _, first := countJumps(in); n > 0 && !first {
			op := fmt.Sprintf("moving the jump to %s to the top of %s/%s", Chain, filterTable, inputChain)
			if err := f.call(ctx, fam, op, func() error { return t.MoveFirst(filterTable, inputChain, jumpSpec()...) }); err != nil {
				return changed, err
			}
			log.Warn("jump moved back to the top of INPUT: rules above it could accept blocked connections", zap.String("chain", inputChain), zap.String("was_below", in[0]))
			changed = true
		}
	}
	return changed, nil
}

// verifyBlock reads fam back from iptables -S, so that Block fails when
// the block is not what it meant to make (ErrNotBlocked), whatever the
// calls before returned. changed says whether Block made any change, for
// the log line.
func (f *Firewall) verifyBlock(ctx context.Context, fam Family, t Tables, log *zap.Logger, changed bool) error {
	st, err := f.familyStatus(ctx, fam, t)
	if err != nil {
		return err
	}
	if p := f.blockProblems(st); len(p) > 0 {
		return fmt.Errorf("verifying block (%s): %w: %s", fam, ErrNotBlocked, strings.Join(p, "; "))
	}
	if changed {
		log.Info("block in place", zap.Int("rules", len(st.Rules)))
	} else {
		log.Debug("block already in place", zap.Int("rules", len(st.Rules)))
	}
	return nil
}

// ruleProblems says how rules differ from the desired ones, each exactly
// once (in any order), one item each.
func (f *Firewall) ruleProblems(rules []string) []string {
	var p []string
	seen := make(map[string]bool, len(rules))
	for _, r := range rules {
		if !slices.Contains(f.lines, r) || seen[r] {
			p = append(p, fmt.Sprintf("unexpected rule %q", r))
		}
		seen[r] = true
	}
	for _, want := range f.lines {
		if !seen[want] {
			p = append(p, fmt.Sprintf("missing rule %q", want))
		}
	}
	return p
}

// blockProblems says how st differs from a complete block, one item each.
func (f *Firewall) blockProblems(st FamilyStatus) []string {
	var p []string
	if !st.Chain {
		p = append(p, fmt.Sprintf("chain %s/%s missing", filterTable, Chain))
	} else {
		p = f.ruleProblems(st.Rules)
	}
	if st.Jumps != 1 {
		p = append(p, fmt.Sprintf("%d jumps to %s in %s/%s, want 1", st.Jumps, Chain, filterTable, inputChain))
	} else if !st.JumpFirst {
		p = append(p, fmt.Sprintf("the jump to %s is not the first rule of %s/%s", Chain, filterTable, inputChain))
	}
	return p
}

// Unblock removes the block from every managed family: every jump to the
// chain from INPUT (duplicates included), then the chain and its rules. What
// is already missing counts as success, so Unblock is idempotent. It then
// verifies that nothing of ours is left (ErrStillBlocked otherwise).
//
// Unlike Block it does not stop at a failing family: it unblocks all it can
// and returns the errors joined.
func (f *Firewall) Unblock(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// The jumps of every family go first, so that IPv6 clients are not
	// kept waiting while IPv4's chain is cleaned up and verified.
	errs := make([]error, len(f.families))
	removed := make([]int, len(f.families))
	// A cancelled ctx fails each family's first iptables call (f.call),
	// which runs nothing.
	for i, fam := range f.families {
		removed[i], errs[i] = f.removeJumps(ctx, fam, f.tables[fam])
	}
	for i, fam := range f.families {
		if errs[i] == nil {
			errs[i] = f.cleanUpFamily(ctx, fam, f.tables[fam], removed[i])
		}
	}
	return errors.Join(append(errs, f.unblockStray(ctx))...)
}

// removeJumps deletes the bare jump to our chain from INPUT until iptables
// says there is none left, and returns how many it deleted.
func (f *Firewall) removeJumps(ctx context.Context, fam Family, t Tables) (int, error) {
	removed := 0
	for {
		if removed >= maxJumpDeletes {
			return removed, fmt.Errorf("deleting jump to %s from %s/%s (%s): still present after %d deletions",
				Chain, filterTable, inputChain, fam, removed)
		}
		op := fmt.Sprintf("deleting jump to %s from %s/%s", Chain, filterTable, inputChain)
		deleted, err := f.deleteRule(ctx, fam, t, inputChain, op, jumpSpec())
		if err != nil {
			return removed, err
		}
		if !deleted {
			break
		}
		removed++
	}
	if removed > 0 {
		f.log.Info("jumps removed", zap.String("family", string(fam)), zap.String("chain", inputChain), zap.Int("count", removed))
	}
	return removed, nil
}

// cleanUpFamily removes what is left of the block in fam once the jumps are
// gone (removed of them), and verifies that nothing is.
func (f *Firewall) cleanUpFamily(ctx context.Context, fam Family, t Tables, removed int) error {
	log := f.log.With(zap.String("family", string(fam)))

	// Any other rule in INPUT that references the chain (someone added
	// matches to it), or the chain could not be deleted.
	in, err := f.listRules(ctx, fam, t, inputChain)
	if err != nil {
		return err
	}
	for _, line := range in {
		if !jumpsTo(line, Chain) {
			continue
		}
		deleted, err := f.deleteLine(ctx, fam, t, inputChain, "rule", line)
		if err != nil {
			return err
		}
		if deleted {
			log.Warn("non-standard jump removed", zap.String("rule", line))
		}
	}

	// The chain.
	exists, err := f.chainExists(ctx, fam, t)
	if err != nil {
		return err
	}
	if exists {
		op := fmt.Sprintf("deleting chain %s/%s", filterTable, Chain)
		if err := f.call(ctx, fam, op, func() error { return t.ClearAndDeleteChain(filterTable, Chain) }); err != nil {
			return err
		}
		log.Info("chain deleted", zap.String("chain", Chain))
	}

	// Verify.
	st, err := f.familyStatus(ctx, fam, t)
	if err != nil {
		return err
	}
	if st.Present() {
		var p []string
		if st.Chain {
			p = append(p, fmt.Sprintf("chain %s/%s still exists with %d rules", filterTable, Chain, len(st.Rules)))
		}
		if n := st.Jumps + st.OtherJumps; n > 0 {
			p = append(p, fmt.Sprintf("%d rules in %s/%s still jump to %s", n, filterTable, inputChain, Chain))
		}
		return fmt.Errorf("verifying unblock (%s): %w: %s", fam, ErrStillBlocked, strings.Join(p, "; "))
	}
	if removed > 0 || exists {
		log.Info("block removed")
	} else {
		log.Debug("nothing to unblock")
	}
	return nil
}

// FamilyStatus is what iptables -S shows of the block in one family.
type FamilyStatus struct {
	// Chain is whether filter/PATCHAGENT-BLOCK exists.
	Chain bool
	// Jumps counts the rules "-A INPUT -j PATCHAGENT-BLOCK".
	Jumps int
	// RulesOK is whether the chain holds exactly the desired rules, each once
	// (in any order).
	RulesOK bool
	// Rules are the chain's rules as iptables -S prints them.
	Rules []string
	// JumpFirst is whether the first rule of INPUT is the jump.
	JumpFirst bool
	// OtherJumps counts other rules in INPUT that jump to the chain (with
	// extra matches; Block never makes them, Unblock removes them).
	OtherJumps int
}

// Present reports whether anything of ours is in the family: the chain, or
// a rule in INPUT jumping to it.
func (s FamilyStatus) Present() bool { return s.Chain || s.Jumps > 0 || s.OtherJumps > 0 }

// blocked: the chain, one jump to it, first in INPUT (a rule above it
// could accept what it refuses), and exactly the desired rules.
func (s FamilyStatus) blocked() bool { return s.Chain && s.Jumps == 1 && s.JumpFirst && s.RulesOK }

// Status is the block's state in every managed family.
type Status struct {
	Families map[Family]FamilyStatus
	// Stray is what of ours is where f does not write, by family (only
	// families where something is): in the other iptables backend (a block
	// made before the backend was switched), or in a family the config no
	// longer manages (traffic.ipv6 turned off during a cycle). It still
	// refuses connections: Present counts it; Blocked does not.
	Stray map[Family]FamilyStatus
}

// Blocked reports whether every family has the chain, exactly one jump and
// exactly the desired rules. It is false when no family is managed.
func (s Status) Blocked() bool {
	if len(s.Families) == 0 {
		return false
	}
	for _, fs := range s.Families {
		if !fs.blocked() {
			return false
		}
	}
	return true
}

// Partial reports whether something of ours is present (a chain or a jump in
// any family) without being a complete block: what a crash or another tool
// leaves behind. Block or Unblock converges it.
func (s Status) Partial() bool {
	if s.Blocked() {
		return false
	}
	return s.Present()
}

// Present reports whether anything of ours is in any family (a complete
// block or a partial one).
func (s Status) Present() bool {
	for _, fs := range s.Families {
		if fs.Present() {
			return true
		}
	}
	return len(s.Stray) > 0
}

// Status reads the block's state in every managed family from iptables -S.
// It changes nothing. On error it returns the families read so far.
func (f *Firewall) Status(ctx context.Context) (Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Families: make(map[Family]FamilyStatus, len(f.families))}
	for _, fam := range f.families {
		fs, err := f.familyStatus(ctx, fam, f.tables[fam])
		if err != nil {
			return st, err
		}
		st.Families[fam] = fs
	}
	stray, err := f.strayStatus(ctx)
	st.Stray = stray
	return st, err
}

func (f *Firewall) familyStatus(ctx context.Context, fam Family, t Tables) (FamilyStatus, error) {
	var st FamilyStatus
	exists, err := f.chainExists(ctx, fam, t)
	if err != nil {
		return st, err
	}
	st.Chain = exists
	if exists {
		if st.Rules, err = f.listRules(ctx, fam, t, Chain); err != nil {
			return st, err
		}
		st.RulesOK = len(f.ruleProblems(st.Rules)) == 0
	}
	in, err := f.listRules(ctx, fam, t, inputChain)
	if err != nil {
		return st, err
	}
	st.Jumps, st.OtherJumps, st.JumpFirst = countJumps(in)
	return st, nil
}

// countJumps reads INPUT's rules: how many are the bare jump to our chain,
// how many other rules jump to it, and whether the first rule is the jump.
func countJumps(in []string) (jumps, others int, first bool) {
	jump := ruleLine(inputChain, jumpSpec())
	for i, line := range in {
		switch {
		case line == jump:
			jumps++
			first = first || i == 0
		case jumpsTo(line, Chain):
			others++
		}
	}
	return jumps, others, first
}

// deleteRule deletes spec from chain; a rule already gone is not an error
// (deleted is then false).
func (f *Firewall) deleteRule(ctx context.Context, fam Family, t Tables, chain, op string, spec []string) (deleted bool, err error) {
	err = f.call(ctx, fam, op, func() error { return t.Delete(filterTable, chain, spec...) })
	if isNotExist(err) {
		return false, nil
	}
	return err == nil, err
}

// deleteLine deletes the rule that iptables -S printed as line from chain,
// like deleteRule; what names the rule in the operation and its errors
// ("stale rule"). Block and Unblock both delete rules they read back.
func (f *Firewall) deleteLine(ctx context.Context, fam Family, t Tables, chain, what, line string) (deleted bool, err error) {
	spec, err := specOf(line, chain)
	if err != nil {
		return false, fmt.Errorf("deleting %s from %s/%s (%s): %w", what, filterTable, chain, fam, err)
	}
	op := fmt.Sprintf("deleting %s %q from %s/%s", what, line, filterTable, chain)
	return f.deleteRule(ctx, fam, t, chain, op, spec)
}

func (f *Firewall) chainExists(ctx context.Context, fam Family, t Tables) (bool, error) {
	var exists bool
	err := f.call(ctx, fam, "checking chain "+filterTable+"/"+Chain, func() error {
		var err error
		exists, err = t.ChainExists(filterTable, Chain)
		return err
	})
	return exists, err
}

// listRules returns the rules of chain as iptables -S prints them, without
// the -P/-N header.
func (f *Firewall) listRules(ctx context.Context, fam Family, t Tables, chain string) ([]string, error) {
	var listed []string
	err := f.call(ctx, fam, "listing "+filterTable+"/"+chain, func() error {
		var err error
		listed, err = t.List(filterTable, chain)
		return err
	})
	if err != nil {
		return nil, err
	}
	return ruleLines(listed, chain), nil
}

// call runs one iptables operation: it checks ctx first (go-iptables takes no
// context), retries exit status 4 with a short backoff, and wraps the error
// with the operation and the family.
func (f *Firewall) call(ctx context.Context, fam Family, op string, fn func() error) error {
	delay := f.retry.base
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s (%s): %w", op, fam, err)
		}
		err := fn()
		if err == nil {
			return nil
		}
		if !retryable(err) || attempt >= f.retry.attempts {
			return fmt.Errorf("%s (%s): %w", op, fam, err)
		}
		f.log.Warn("iptables busy, retrying",
			zap.String("family", string(fam)), zap.String("op", op),
			zap.Int("attempt", attempt), zap.Duration("backoff", delay), zap.Error(err))
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return fmt.Errorf("%s (%s): %w (after: %w)", op, fam, ctx.Err(), err)
		case <-timer.C:
		}
		delay = min(2*delay, f.retry.max)
	}
}

func familyNames(fams []Family) []string {
	out := make([]string, len(fams))
	for i, f := range fams {
		out[i] = string(f)
	}
	return out
}
