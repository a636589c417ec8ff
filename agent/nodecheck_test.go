package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks"
)

// fakeNode is a node with the accounts, directories and files given.
type fakeNode struct {
	users map[string]hooks.AppUser
	dirs  map[string]string // directory: its owner's name
	pm2   map[string]string // home: the pm2 FindPM2 finds for its user
	files map[string]bool   // CA bundles and programs that are there
}

func (f fakeNode) checker() NodeChecker {
	notThere := func(p string) error { return fmt.Errorf("%s: no such file or directory", p) }
	file := func(p string) error {
		if !f.files[p] {
			return notThere(p)
		}
		return nil
	}
	return NodeChecker{
		LookupUser: func(name string) (hooks.AppUser, error) {
			if u, ok := f.users[name]; ok {
				return u, nil
			}
			return hooks.AppUser{}, fmt.Errorf("looking up user %q: unknown user", name)
		},
		OwnerOf: func(dir string) (hooks.AppUser, error) {
			if owner, ok := f.dirs[dir]; ok {
				return f.users[owner], nil
			}
			return hooks.AppUser{}, fmt.Errorf("finding the owner of %s: %w", dir, notThere(dir))
		},
		FindPM2: func(u hooks.AppUser, configured string) (string, string, error) {
			if configured != "" {
				return configured, "/usr/bin", file(configured)
			}
			if bin, ok := f.pm2[u.Home]; ok {
				return bin, filepath.Dir(bin) + ":/usr/bin", nil
			}
			return "", "", errors.New("finding pm2: not in /usr/bin (set app.pm2)")
		},
		LoadCA:     file,
		Executable: file,
	}
}

func TestCheckNode(t *testing.T) {
	const nvmPM2 = "/home/web/.nvm/versions/node/v20.11.1/bin/pm2"
	node := func() fakeNode {
		return fakeNode{
			users: map[string]hooks.AppUser{
				"root": {Name: "root", UID: 0, Home: "/root"},
				"web":  {Name: "web", UID: 1001, Home: "/home/web"},
			},
			dirs:  map[string]string{"/srv/web": "web"},
			pm2:   map[string]string{"/home/web": nvmPM2, "/root": "/usr/bin/pm2"},
			files: map[string]bool{"/etc/ssl/app-ca.pem": true, "/usr/local/bin/leave": true, "/usr/local/bin/join": true, "/opt/pm2/bin/pm2": true},
		}
	}
	config := func() Config {
		c := DefaultConfig()
		c.App = AppConfig{Name: "web", User: "web", Dir: "/srv/web"}
		c.Health.CAFile = "/etc/ssl/app-ca.pem"
		c.Steps.PreCommands = [][]string{{"/usr/local/bin/leave", "--now"}}
		c.Steps.ExitCommands = [][]string{{"/usr/local/bin/join"}}
		return c
	}
	webFound := []string{"app user: web (uid 1001, app.user)", "pm2: " + nvmPM2,
		"pm2's PATH: /home/web/.nvm/versions/node/v20.11.1/bin:/usr/bin", "PM2_HOME: /home/web/.pm2"}
	tests := []struct {
		name      string
		change    func(c *Config, n *fakeNode)
		wantFound []string
		want      []Problem
	}{
		{name: "everything there", change: func(*Config, *fakeNode) {}, wantFound: webFound},
		{
			name:   "app.user unknown: pm2 not searched",
			change: func(c *Config, _ *fakeNode) { c.App.User = "wbe" },
			want:   []Problem{{Key: "app.user", Msg: `looking up user "wbe": unknown user`}},
		},
		{
			name:      "app.dir missing",
			change:    func(_ *Config, n *fakeNode) { delete(n.dirs, "/srv/web") },
			wantFound: webFound,
			want:      []Problem{{Key: "app.dir", Msg: "finding the owner of /srv/web: /srv/web: no such file or directory"}},
		},
		{
			name:      "app.dir another user's: post's npm would refuse it",
			change:    func(_ *Config, n *fakeNode) { n.dirs["/srv/web"] = "root" },
			wantFound: webFound,
			want: []Problem{{Key: "app.dir", Msg: "/srv/web is owned by root (uid 0), not by app.user web (uid 1001): " +
				"post's npm runs as app.user and refuses it"}},
		},
		{
			name:      "app.user empty: the owner of app.dir",
			change:    func(c *Config, _ *fakeNode) { c.App.User = "" },
			wantFound: append([]string{"app user: web (uid 1001, the owner of app.dir)"}, webFound[1:]...),
		},
		{
			name:   "app.user empty and app.dir missing: one problem, under app.dir",
			change: func(c *Config, n *fakeNode) { c.App.User = ""; delete(n.dirs, "/srv/web") },
			want: []Problem{{Key: "app.dir", Msg: "app.user not set, so the owner of app.dir runs pm2: " +
				"finding the owner of /srv/web: /srv/web: no such file or directory"}},
		},
		{
			name:      "neither app.user nor app.dir: root",
			change:    func(c *Config, _ *fakeNode) { c.App.User, c.App.Dir = "", "" },
			wantFound: []string{"app user: root (uid 0, app.user and app.dir not set)", "pm2: /usr/bin/pm2", "pm2's PATH: /usr/bin:/usr/bin", "PM2_HOME: /root/.pm2"},
		},
		{
			name:      "pm2 not found",
			change:    func(_ *Config, n *fakeNode) { delete(n.pm2, "/home/web") },
			wantFound: webFound[:1],
			want:      []Problem{{Key: "app.pm2", Msg: "finding pm2: not in /usr/bin (set app.pm2)"}},
		},
		{
			name:      "app.pm2 and app.pm2_home set",
			change:    func(c *Config, _ *fakeNode) { c.App.PM2, c.App.PM2Home = "/opt/pm2/bin/pm2", "/srv/pm2" },
			wantFound: []string{webFound[0], "pm2: /opt/pm2/bin/pm2", "pm2's PATH: /usr/bin", "PM2_HOME: /srv/pm2"},
		},
		{
			name:      "app.pm2 set and missing",
			change:    func(c *Config, _ *fakeNode) { c.App.PM2 = "/opt/pm3/bin/pm2" },
			wantFound: webFound[:1],
			want:      []Problem{{Key: "app.pm2", Msg: "/opt/pm3/bin/pm2: no such file or directory"}},
		},
		{
			name:      "health.ca_file missing",
			change:    func(_ *Config, n *fakeNode) { delete(n.files, "/etc/ssl/app-ca.pem") },
			wantFound: webFound,
			want:      []Problem{{Key: "health.ca_file", Msg: "/etc/ssl/app-ca.pem: no such file or directory"}},
		},
		{
			name: "commands missing, each under its key",
			change: func(c *Config, n *fakeNode) {
				c.Steps.PreCommands = append(c.Steps.PreCommands, []string{"/usr/local/bin/laeve"})
				delete(n.files, "/usr/local/bin/join")
			},
			wantFound: webFound,
			want: []Problem{
				{Key: "steps.pre_commands[1]", Msg: "/usr/local/bin/laeve: no such file or directory"},
				{Key: "steps.exit_commands[0]", Msg: "/usr/local/bin/join: no such file or directory"},
			},
		},
		{
			name: "every problem at once",
			change: func(c *Config, n *fakeNode) {
				c.App.User = "nobody"
				n.dirs, n.files = nil, nil
			},
			want: []Problem{
				{Key: "app.user", Msg: `looking up user "nobody": unknown user`},
				{Key: "app.dir", Msg: "finding the owner of /srv/web: /srv/web: no such file or directory"},
				{Key: "health.ca_file", Msg: "/etc/ssl/app-ca.pem: no such file or directory"},
				{Key: "steps.pre_commands[0]", Msg: "/usr/local/bin/leave: no such file or directory"},
				{Key: "steps.exit_commands[0]", Msg: "/usr/local/bin/join: no such file or directory"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, n := config(), node()
			tt.change(&c, &n)
			got := n.checker().CheckNode(c)
			if diff := cmp.Diff(tt.wantFound, got.Found); diff != "" {
				t.Errorf("found (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.want, got.Problems); diff != "" {
				t.Errorf("problems (-want +got):\n%s", diff)
			}
		})
	}
}

// TestCheckNodeOnThisHost: HostNode asks the real node: root and
// /usr/bin/env are there, a program and a CA file that are not are found
// missing, an app.dir that is a file is not a directory.
func TestCheckNodeOnThisHost(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := DefaultConfig()
	c.App = AppConfig{Name: "web", User: "root", Dir: dir}
	c.Steps.PreCommands = [][]string{{"/usr/bin/env", "true"}}
	got := HostNode().CheckNode(c)
	if len(got.Found) == 0 || got.Found[0] != "app user: root (uid 0, app.user)" {
		t.Errorf("found %q, want root first", got.Found)
	}
	for _, p := range got.Problems {
		if p.Key != "app.pm2" { // pm2 may or may not be installed here
			t.Errorf("problem on this host: %s", p)
		}
	}

	c.App.Dir = file
	c.Health.CAFile = filepath.Join(dir, "missing.pem")
	c.Steps.ExitCommands = [][]string{{filepath.Join(dir, "missing")}}
	want := map[string]string{
		"app.dir":                "finding the owner of " + file + ": open " + file + ": not a directory",
		"health.ca_file":         "reading CA bundle: open " + c.Health.CAFile + ": no such file or directory",
		"steps.exit_commands[0]": filepath.Join(dir, "missing") + ": no such file or directory",
	}
	for _, p := range HostNode().CheckNode(c).Problems {
		if p.Key == "app.pm2" {
			continue
		}
		if want[p.Key] != p.Msg {
			t.Errorf("%s: %q, want %q", p.Key, p.Msg, want[p.Key])
		}
		delete(want, p.Key)
	}
	if len(want) > 0 {
		t.Errorf("not found: %v", want)
	}
}

// TestBuildRefusesWhatCheckNodeRefuses: the daemon's Build and check-config
// ask the same question about the app user and say the same, Build's
// error a configuration error (exit 2).
func TestBuildRefusesWhatCheckNodeRefuses(t *testing.T) {
	c := DefaultConfig()
	c.App = AppConfig{Name: "web", Dir: filepath.Join(t.TempDir(), "missing")}
	ps := HostNode().CheckNode(c).Problems
	if len(ps) != 1 || ps[0].Key != "app.dir" {
		t.Fatalf("CheckNode: %v, want one app.dir problem", ps)
	}
	_, err := Build(c, zaptest.NewLogger(t), io.Discard, nil, nil)
	if err == nil || err.Error() != ps[0].String() || exitCode(err) != ExitUsage {
		t.Fatalf("Build: %v (exit %d); want %q, exit 2", err, exitCode(err), ps[0])
	}
}
