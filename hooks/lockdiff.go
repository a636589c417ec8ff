package hooks

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Change is one installed package whose version changed, appeared or went
// away between two lockfiles.
//
// Name is the package's install path with the leading "node_modules/"
// removed: "express" or "@types/node" for a top-level install, and
// "a/node_modules/b" for a copy of b nested under a (because a needs a
// version of b other than the top-level one). Keying by path rather than by
// name alone is deliberate: one package can be installed at several
// versions in one tree, and each of them is its own change. The last
// segment of Name is always the package name (the alias, for an aliased
// dependency: the name require() uses).
type Change struct{ Name, Old, New string }

// Changes is what differs between two lockfiles. Each list is sorted by
// Name; Added has Old "", Removed has New "".
type Changes struct{ Updated, Added, Removed []Change }

// Count is the number of changes of any kind.
func (c Changes) Count() int { return len(c.Updated) + len(c.Added) + len(c.Removed) }

// Lines renders the changes for a report: "name old -> new" for each
// update, then "+ name new" for each addition and "- name old" for each
// removal.
func (c Changes) Lines() []string {
	out := make([]string, 0, c.Count())
	for _, ch := range c.Updated {
		out = append(out, ch.Name+" "+ch.Old+" -> "+ch.New)
	}
	for _, ch := range c.Added {
		out = append(out, "+ "+ch.Name+" "+ch.New)
	}
	for _, ch := range c.Removed {
		out = append(out, "- "+ch.Name+" "+ch.Old)
	}
	return out
}

// lockfile is the part of package-lock.json (or npm-shrinkwrap.json) that
// DiffLockfiles and NPM.Check read.
type lockfile struct {
	LockfileVersion int                  `json:"lockfileVersion"`
	Packages        map[string]lockEntry `json:"packages"`
}

// lockEntry is one entry of "packages"; the root one ("") declares the
// same dependency sections as package.json.
type lockEntry struct {
	Version  string `json:"version"`
	Resolved string `json:"resolved"`
	Link     bool   `json:"link"`
	manifest
}

// parseLockfile decodes a lockfile of version 2 or 3 (npm 7 and later).
// Version 1 (npm 6) has no "packages" section and is refused.
func parseLockfile(b []byte) (lockfile, error) {
	var lf lockfile
	if err := json.Unmarshal(b, &lf); err != nil {
		return lockfile{}, fmt.Errorf("parsing lockfile: %w", err)
	}
	switch {
	case lf.LockfileVersion == 0:
		return lockfile{}, errors.New("parsing lockfile: no lockfileVersion")
	case lf.LockfileVersion < 2:
		return lockfile{}, fmt.Errorf("parsing lockfile: lockfileVersion %d is not supported (2 or 3 is: npm 7 or later)", lf.LockfileVersion)
	case lf.Packages == nil:
		return lockfile{}, fmt.Errorf("parsing lockfile: lockfileVersion %d without a \"packages\" section", lf.LockfileVersion)
	}
	return lf, nil
}

// installed maps each installed package of lf to its version, keyed as
// Change.Name. The root ("") and workspace folders (paths without a
// node_modules segment) are the app's own code and are left out. A link
// entry (a file: or workspace dependency installed as a symlink) has no
// version: it is shown as "link:<resolved>".
func (lf lockfile) installed() map[string]string {
	out := make(map[string]string, len(lf.Packages))
	for path, e := range lf.Packages {
		var name string
		switch {
		case strings.HasPrefix(path, "node_modules/"):
			name = strings.TrimPrefix(path, "node_modules/")
		case strings.Contains(path, "/node_modules/"):
			name = path // inside a workspace folder: keep the whole path
		default:
			continue
		}
		v := e.Version
		if e.Link {
			v = "link:" + e.Resolved
		}
		out[name] = v
	}
	return out
}

// DiffLockfiles compares the installed packages of two lockfiles
// (lockfileVersion 2 or 3) by install path (see Change for how nested
// installs are named) and version. Other fields (resolved, integrity,
// flags) are not compared.
func DiffLockfiles(before, after []byte) (Changes, error) {
	b, err := parseLockfile(before)
	if err != nil {
		return Changes{}, fmt.Errorf("reading the old lockfile: %w", err)
	}
	a, err := parseLockfile(after)
	if err != nil {
		return Changes{}, fmt.Errorf("reading the new lockfile: %w", err)
	}
	old, cur := b.installed(), a.installed()
	var c Changes
	for name, ov := range old {
		nv, ok := cur[name]
		switch {
		case !ok:
			c.Removed = append(c.Removed, Change{Name: name, Old: ov})
		case nv != ov:
			c.Updated = append(c.Updated, Change{Name: name, Old: ov, New: nv})
		}
	}
	for name, nv := range cur {
		if _, ok := old[name]; !ok {
			c.Added = append(c.Added, Change{Name: name, New: nv})
		}
	}
	for _, l := range [][]Change{c.Updated, c.Added, c.Removed} {
		sort.Slice(l, func(i, j int) bool { return l[i].Name < l[j].Name })
	}
	return c, nil
}
