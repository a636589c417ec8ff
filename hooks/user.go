package hooks

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"time"
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
// caller decides whether to warn. An account /etc/passwd does not have is
// asked of the C library's name services (lookupNSS): LDAP, SSSD.
func LookupUser(name string) (AppUser, error) {
	u, err := user.Lookup(name)
	if err != nil {
		var unknown user.UnknownUserError
		if !errors.As(err, &unknown) {
			return AppUser{}, fmt.Errorf("looking up user %q: %w", name, err)
		}
		if _, nerr := strconv.ParseUint(name, 10, 32); nerr == nil {
			u, err = user.LookupId(name)
		}
	}
	if err != nil {
		au, nerr := lookupNSS(name)
		switch {
		case nerr == nil:
			return au, nil
		case errors.Is(nerr, errNSSNotFound):
			return AppUser{}, fmt.Errorf("looking up user %q: %w", name, err)
		}
		return AppUser{}, fmt.Errorf("looking up user %q: %w (and asking the name services: %w)", name, err, nerr)
	}
	return fromOSUser(u)
}

// The static binary's os/user reads /etc/passwd and /etc/group only. An
// account of LDAP, SSSD or any other NSS source is found by asking the C
// library through getent and id, run as root with SafePath, each bounded
// by nssTimeout; nssRunner is their runner (a fake in tests).
var (
	nssRunner  Runner = &ExecRunner{}
	nssTimeout        = 5 * time.Second
)

// errNSSNotFound: the name services do not know the account either (or
// there is no getent to ask).
var errNSSNotFound = errors.New("unknown to the name services")

// lookupNSS finds the account key (a name or a uid) with `getent passwd`
// and its groups with `id -G` (getgrouplist: those of every NSS source).
func lookupNSS(key string) (AppUser, error) {
	out, err := nssRun("getent", "passwd", key)
	var ee *ExitError
	switch {
	case errors.As(err, &ee) && ee.ExitCode == 2, errors.Is(err, exec.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return AppUser{}, errNSSNotFound // 2: key not found
	case err != nil:
		return AppUser{}, err
	}
	f := strings.Split(strings.TrimSpace(strings.SplitN(out, "\n", 2)[0]), ":")
	if len(f) != 7 {
		return AppUser{}, fmt.Errorf("getent passwd %s: %q is not a passwd entry", key, out)
	}
	uid, uerr := strconv.ParseUint(f[2], 10, 32)
	gid, gerr := strconv.ParseUint(f[3], 10, 32)
	if uerr != nil || gerr != nil || f[0] == "" {
		return AppUser{}, fmt.Errorf("getent passwd %s: %q is not a passwd entry", key, out)
	}
	au := AppUser{Name: f[0], UID: uint32(uid), GID: uint32(gid), Groups: []uint32{uint32(gid)}, Home: f[5]}
	ids, err := nssRun("id", "-G", "--", au.Name)
	if err != nil {
		return AppUser{}, fmt.Errorf("the groups of %s: %w", au.Name, err)
	}
	for _, s := range strings.Fields(ids) {
		g, err := strconv.ParseUint(s, 10, 32)
		if err != nil {
			return AppUser{}, fmt.Errorf("the groups of %s: id -G said %q", au.Name, ids)
		}
		if uint32(g) != au.GID {
			au.Groups = append(au.Groups, uint32(g))
		}
	}
	return au, nil
}

func nssRun(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), nssTimeout)
	defer cancel()
	res, err := nssRunner.Run(ctx, Cmd{Name: name, Args: args, Env: []string{"PATH=" + SafePath}, Dir: "/"})
	return string(res.Stdout), err
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
	uid := strconv.FormatUint(uint64(st.Uid), 10)
	u, err := user.LookupId(uid)
	if err != nil {
		var unknown user.UnknownUserIdError
		if errors.As(err, &unknown) {
			if au, nerr := lookupNSS(uid); nerr == nil {
				return au, nil
			}
		}
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
