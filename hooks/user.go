package hooks

import (
	"errors"
	"fmt"
	"os/user"
	"strconv"
)

// AppUser is the account the app (and its pm2 daemon) runs as.
type AppUser struct {
	Name     string
	UID, GID uint32
	Groups   []uint32 // supplementary group ids, the primary group included
	Home     string
}

// home is the user's HOME for the commands run as the user ("/" when the
// account has none).
func (u AppUser) home() string {
	if u.Home == "" {
		return "/"
	}
	return u.Home
}

// LookupUser looks up a user by name (or, failing that, by a numeric uid)
// with its supplementary groups. Root is returned like any other user; the
// caller decides whether to warn.
func LookupUser(name string) (AppUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr != nil || !errors.As(err, &unknown) {
			return AppUser{}, fmt.Errorf("looking up user %q: %w", name, err)
		}
		if u, err = user.LookupId(name); err != nil {
			return AppUser{}, fmt.Errorf("looking up user %q: %w", name, err)
		}
	}
	return fromOSUser(u)
}

// OwnerOf returns the user owning the directory path (the app dir, whose
// owner is the default app user). The owner must have an account. path is
// stat'd with StatDir: a symlink on the way that root does not own is
// refused, or the app user could point it at root's directory and be taken
// for root.
func OwnerOf(path string) (AppUser, error) {
	st, err := StatDir(path)
	if err != nil {
		return AppUser{}, fmt.Errorf("finding the owner of %s: %w", path, err)
	}
	u, err := user.LookupId(strconv.FormatUint(uint64(st.Uid), 10))
	if err != nil {
		return AppUser{}, fmt.Errorf("finding the owner of %s (uid %d): %w", path, st.Uid, err)
	}
	au, err := fromOSUser(u)
	if err != nil {
		return AppUser{}, fmt.Errorf("finding the owner of %s: %w", path, err)
	}
	return au, nil
}

// Credential is the identity to run the user's programs with.
func (u AppUser) Credential() *Credential {
	return &Credential{UID: u.UID, GID: u.GID, Groups: append([]uint32(nil), u.Groups...)}
}

func fromOSUser(u *user.User) (AppUser, error) {
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return AppUser{}, fmt.Errorf("user %q: uid %q: %w", u.Username, u.Uid, err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return AppUser{}, fmt.Errorf("user %q: gid %q: %w", u.Username, u.Gid, err)
	}
	ids, err := u.GroupIds()
	if err != nil {
		return AppUser{}, fmt.Errorf("user %q: listing groups: %w", u.Username, err)
	}
	groups := []uint32{uint32(gid)}
	for _, s := range ids {
		g, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return AppUser{}, fmt.Errorf("user %q: group id %q: %w", u.Username, s, err)
		}
		if g != gid {
			groups = append(groups, uint32(g))
		}
	}
	return AppUser{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Groups: groups, Home: u.HomeDir}, nil
}
