package hooks

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestLookupUser(t *testing.T) {
	tests := []struct {
		name     string
		in       string
		wantName string
		wantUID  uint32
		wantHome string
		wantErr  bool
	}{
		{name: "root by name", in: "root", wantName: "root", wantUID: 0, wantHome: "/root"},
		{name: "root by uid", in: "0", wantName: "root", wantUID: 0, wantHome: "/root"},
		{name: "unknown", in: "pa-no-such-user", wantErr: true},
		{name: "unknown uid", in: "4000000000", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := LookupUser(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("LookupUser(%q) = %+v, want an error", tt.in, u)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.Name != tt.wantName || u.UID != tt.wantUID || u.Home != tt.wantHome {
				t.Errorf("LookupUser(%q) = %+v", tt.in, u)
			}
			if len(u.Groups) == 0 || u.Groups[0] != u.GID {
				t.Errorf("Groups = %v, want the primary group %d first", u.Groups, u.GID)
			}
		})
	}
}

func TestLookupUserSupplementaryGroups(t *testing.T) {
	// Compare with os/user for a user that has supplementary groups, if the
	// machine has one.
	for _, name := range []string{"root", "nobody", "daemon", "_apt"} {
		ou, err := user.Lookup(name)
		if err != nil {
			continue
		}
		ids, err := ou.GroupIds()
		if err != nil {
			continue
		}
		u, err := LookupUser(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ids {
			g, _ := strconv.ParseUint(s, 10, 32)
			if !slices.Contains(u.Groups, uint32(g)) {
				t.Errorf("%s: Groups = %v lacks group %s", name, u.Groups, s)
			}
		}
	}
}

func TestOwnerOf(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "app")
	if err := os.Mkdir(f, 0o755); err != nil {
		t.Fatal(err)
	}
	wantUID := uint32(os.Geteuid())
	if os.Geteuid() == 0 {
		if err := os.Chown(f, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		wantUID = 65534
	}
	u, err := OwnerOf(f)
	if err != nil {
		t.Fatal(err)
	}
	want, err := user.LookupId(strconv.FormatUint(uint64(wantUID), 10))
	if err != nil {
		t.Fatal(err)
	}
	if u.UID != wantUID || u.Name != want.Username || u.Home != want.HomeDir {
		t.Errorf("OwnerOf = %+v, want uid %d (%s)", u, wantUID, want.Username)
	}

	if _, err := OwnerOf(filepath.Join(dir, "missing")); err == nil {
		t.Error("OwnerOf(missing) succeeded")
	}
	if os.Geteuid() == 0 {
		// A link the app user owns, to root's directory: not followed, or
		// the default app user would be root.
		link := filepath.Join(dir, "current")
		if err := os.Symlink(t.TempDir(), link); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(link, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if u, err := OwnerOf(link); err == nil || !strings.Contains(err.Error(), "symlink owned by uid 65534") {
			t.Errorf("OwnerOf(a user's link to root's dir) = %+v, %v; want the link refused", u, err)
		}
		if err := os.Chown(f, 3999999, 0); err != nil {
			t.Fatal(err)
		}
		if u, err := OwnerOf(f); err == nil {
			t.Errorf("OwnerOf(file of an accountless uid) = %+v, want an error", u)
		}
	}
}

func TestCredentialCopiesGroups(t *testing.T) {
	u := AppUser{Name: "app", UID: 1001, GID: 1002, Groups: []uint32{1002, 27}}
	c := u.Credential()
	if c.UID != 1001 || c.GID != 1002 || !slices.Equal(c.Groups, []uint32{1002, 27}) {
		t.Fatalf("Credential = %+v", c)
	}
	c.Groups[0] = 0
	if u.Groups[0] != 1002 {
		t.Error("Credential shares its Groups with the AppUser")
	}
}

// nssFake answers getent and id as the C library's name services would.
type nssFake struct {
	passwd map[string]string // key -> getent passwd's line
	groups string            // id -G's answer
	calls  []string
}

func (f *nssFake) Run(ctx context.Context, c Cmd) (Result, error) {
	f.calls = append(f.calls, c.Name+" "+strings.Join(c.Args, " "))
	if _, ok := ctx.Deadline(); !ok || !slices.Equal(c.Env, []string{"PATH=" + SafePath}) {
		return Result{}, fmt.Errorf("%s run without a deadline or with env %q", c.Name, c.Env)
	}
	switch c.Name {
	case "getent":
		line, ok := f.passwd[c.Args[1]]
		if !ok {
			return Result{ExitCode: 2}, &ExitError{Name: "getent", ExitCode: 2}
		}
		return Result{Stdout: []byte(line + "\n")}, nil
	case "id":
		return Result{Stdout: []byte(f.groups + "\n")}, nil
	}
	return Result{}, fmt.Errorf("unexpected %s", c.Name)
}

// TestLookupUserAsksTheNameServices: an account /etc/passwd does not have
// (LDAP, SSSD) is asked of getent, by name or uid, with its groups from id
// -G; one the name services do not know either keeps the plain "unknown
// user" error. (deploy/testbed/e2e TestAppUserOnlyTheNameServicesKnow runs
// the static binary against a real NSS module.)
func TestLookupUserAsksTheNameServices(t *testing.T) {
	f := &nssFake{passwd: map[string]string{
		"pa-ldap-user": "pa-ldap-user:*:61234:61234:LDAP user:/home/pa-ldap-user:/bin/bash",
		"61234":        "pa-ldap-user:*:61234:61234:LDAP user:/home/pa-ldap-user:/bin/bash",
		"pa-bad-entry": "pa-bad-entry:*:not-a-uid",
	}, groups: "61234 61235 27"}
	old := nssRunner
	nssRunner = f
	t.Cleanup(func() { nssRunner = old })
	want := AppUser{Name: "pa-ldap-user", UID: 61234, GID: 61234, Groups: []uint32{61234, 61235, 27}, Home: "/home/pa-ldap-user"}
	for _, key := range []string{"pa-ldap-user", "61234"} {
		u, err := LookupUser(key)
		if err != nil || !reflect.DeepEqual(u, want) {
			t.Fatalf("LookupUser(%q) = %+v, %v; want %+v", key, u, err, want)
		}
	}
	if _, err := LookupUser("pa-no-such-user"); err == nil || !strings.Contains(err.Error(), "unknown user pa-no-such-user") {
		t.Fatalf("an account nobody knows: %v", err)
	}
	if _, err := LookupUser("pa-bad-entry"); err == nil || !strings.Contains(err.Error(), "is not a passwd entry") {
		t.Fatalf("a broken getent answer: %v", err)
	}
	if !slices.Contains(f.calls, "id -G -- pa-ldap-user") {
		t.Fatalf("groups not asked of id: %q", f.calls)
	}
}
