package firewall

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Linux has two iptables backends, whose rules apply side by side: the
// legacy x_tables one and nf_tables. The distribution's alternatives pick
// which one `iptables` is, and an OS update can switch them (Debian's
// update-alternatives, a package that prefers the other). A block installed
// by pre through one backend then keeps working after the switch, invisible
// to the other's iptables -S: exit would unblock the new backend, find
// nothing, and leave the node out of service while status said it was in
// (issue 13, E10). So the Firewall also watches the other backend: Status
// reports our chain there (Stray) and Unblock removes it. Block writes only
// the selected backend.

// otherBackend is the other backend's Tables for one family, with the check
// that it can hold anything at all.
type otherBackend struct {
	fam    Family
	name   string // "legacy" or "nft", or "unmanaged ipv6" (the selected backend of a family f does not manage)
	t      Tables
	loaded func() bool // false: nothing of anyone's is there, and listing would only load kernel modules
}

// OtherBackends returns, for each family, the Tables of the backend that
// the family's default binary does not select (iptables-legacy when
// iptables is iptables-nft, and the reverse), where that binary is
// installed. A family whose other backend is missing is left out: there
// is nothing to watch.
func OtherBackends(fams []Family, lockWait time.Duration) (map[Family]Tables, error) {
	out := map[Family]Tables{}
	for _, f := range fams {
		b, err := otherBackendOf(f, lockWait)
		if err != nil {
			return nil, err
		}
		if b != nil {
			out[f] = b
		}
	}
	return out, nil
}

func otherBackendOf(f Family, lockWait time.Duration) (*otherBackend, error) {
	def, err := findBinary(f.Command())
	if err != nil {
		return nil, nil // no default binary: NewTables reports that
	}
	real, err := filepath.EvalSymlinks(def)
	if err != nil {
		return nil, fmt.Errorf("resolving %s: %w", def, err)
	}
	name := "legacy"
	if strings.Contains(filepath.Base(real), "legacy") {
		name = "nft"
	}
	p, err := findBinary(f.Command() + "-" + name)
	if err != nil {
		return nil, nil
	}
	if r, err := filepath.EvalSymlinks(p); err == nil && r == real {
		return nil, nil // the same binary: there is no other backend
	}
	t, err := tablesAt(f, p, lockWait, callGrace)
	if err != nil {
		return nil, fmt.Errorf("setting up the other backend's %s: %w", p, err)
	}
	b := &otherBackend{name: name, t: t, loaded: func() bool { return true }}
	if name == "legacy" {
		b.loaded = func() bool { return legacyFilterLoaded(f) }
	}
	return b, nil
}

// findBinary is name on PATH, else in the sbin directories (hook callers
// may run with a PATH without them).
func findBinary(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, dir := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}

// legacyFilterLoaded reports whether the legacy filter table exists in the
// network namespace of the calling thread: without it nothing of ours can
// be in the legacy backend, and iptables-legacy -S would load the x_tables
// modules and create the table just to list it.
func legacyFilterLoaded(f Family) bool {
	file := "ip_tables_names"
	if f == IPv6 {
		file = "ip6_tables_names"
	}
	b, err := os.ReadFile("/proc/thread-self/net/" + file)
	if err != nil {
		return false
	}
	return slices.Contains(strings.Fields(string(b)), filterTable)
}

// familyUp reports whether the calling thread's network namespace has the
// family at all: a kernel booted with ipv6.disable=1 has no IPv6, no
// ip6tables table to list, and nothing of ours in it.
func familyUp(f Family) bool {
	if f == IPv4 {
		return true
	}
	_, err := os.Stat("/proc/thread-self/net/if_inet6")
	return err == nil
}

// WatchOtherBackends gives f the other backend's Tables of some families
// (OtherBackends): Status then reports our chain there as Stray, Unblock
// removes it, and Block leaves it alone. It adds to what WatchUnmanaged
// gave.
func (f *Firewall) WatchOtherBackends(others map[Family]Tables) {
	fams := slices.Sorted(maps.Keys(others))
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, fam := range fams {
		b, ok := others[fam].(*otherBackend)
		if !ok {
			b = &otherBackend{name: "other", t: others[fam], loaded: func() bool { return true }}
		}
		b.fam = fam
		f.watched = append(f.watched, b)
	}
}

// WatchUnmanaged gives f the selected backend's Tables of a family it does
// not manage: a block pre made there under an earlier config (traffic.ipv6
// on then) is reported as Stray and removed by Unblock, not left refusing
// that family's clients with nothing to manage it.
func (f *Firewall) WatchUnmanaged(fam Family, t Tables) error {
	if !fam.valid() {
		return fmt.Errorf("firewall: unknown IP family %q", fam)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.tables[fam]; ok {
		return fmt.Errorf("firewall: %s is managed, not only watched", fam)
	}
	f.watched = append(f.watched, &otherBackend{fam: fam, name: "unmanaged " + string(fam), t: t, loaded: func() bool { return familyUp(fam) }})
	return nil
}

// The otherBackend is itself a Tables (what OtherBackends returns), so that
// callers pass it around like the selected backend's.
func (b *otherBackend) ChainExists(table, chain string) (bool, error) {
	if !b.loaded() {
		return false, nil
	}
	return b.t.ChainExists(table, chain)
}
func (b *otherBackend) NewChain(table, chain string) error {
	return errors.New("the other backend is not written to")
}
func (b *otherBackend) List(table, chain string) ([]string, error) {
	if !b.loaded() {
		return nil, nil
	}
	return b.t.List(table, chain)
}
func (b *otherBackend) Insert(table, chain string, pos int, rulespec ...string) error {
	return errors.New("the other backend is not written to")
}
func (b *otherBackend) Append(table, chain string, rulespec ...string) error {
	return errors.New("the other backend is not written to")
}
func (b *otherBackend) Delete(table, chain string, rulespec ...string) error {
	return b.t.Delete(table, chain, rulespec...)
}
func (b *otherBackend) ClearAndDeleteChain(table, chain string) error {
	return b.t.ClearAndDeleteChain(table, chain)
}
func (b *otherBackend) MoveFirst(table, chain string, rulespec ...string) error {
	return errors.New("the other backend is not written to")
}

// strayStatus reads our chain and jumps in each watched place; it returns
// only the families where something of ours is.
func (f *Firewall) strayStatus(ctx context.Context) (map[Family]FamilyStatus, error) {
	var out map[Family]FamilyStatus
	for _, b := range f.watched {
		st, err := f.familyStatus(ctx, b.fam, b)
		if err != nil {
			return out, fmt.Errorf("reading the %s backend: %w", b.name, err)
		}
		if !st.Present() {
			continue
		}
		if out == nil {
			out = map[Family]FamilyStatus{}
		}
		if prev, ok := out[b.fam]; ok {
			st = FamilyStatus{Chain: prev.Chain || st.Chain, Jumps: prev.Jumps + st.Jumps, OtherJumps: prev.OtherJumps + st.OtherJumps,
				Rules: append(prev.Rules, st.Rules...), JumpFirst: prev.JumpFirst || st.JumpFirst}
		}
		out[b.fam] = st
	}
	return out, nil
}

// unblockStray removes our jumps and chain from every watched place, and
// verifies.
func (f *Firewall) unblockStray(ctx context.Context) error {
	var errs []error
	for _, b := range f.watched {
		st, err := f.familyStatus(ctx, b.fam, b)
		if err != nil {
			errs = append(errs, fmt.Errorf("reading the %s backend: %w", b.name, err))
			continue
		}
		if !st.Present() {
			continue
		}
		f.log.Warn("removing a block of ours from where it is not managed (the iptables backend was switched, or the family is no longer configured, since it was made)",
			zap.String("family", string(b.fam)), zap.String("backend", b.name))
		removed, err := f.removeJumps(ctx, b.fam, b)
		if err == nil {
			err = f.cleanUpFamily(ctx, b.fam, b, removed)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("the %s backend: %w", b.name, err))
		}
	}
	return errors.Join(errs...)
}
