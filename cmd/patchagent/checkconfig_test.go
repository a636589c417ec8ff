package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/hooks"
)

// fakeNode has the user web, its app dir /srv/web and pm2, and only the
// files named.
func fakeNode(files ...string) agent.NodeChecker {
	web := hooks.AppUser{Name: "web", UID: 1001, Home: "/home/web"}
	there := func(p string) error {
		for _, f := range files {
			if f == p {
				return nil
			}
		}
		return fmt.Errorf("%s: no such file or directory", p)
	}
	return agent.NodeChecker{
		LookupUser: func(name string) (hooks.AppUser, error) {
			if name != "web" {
				return hooks.AppUser{}, fmt.Errorf("looking up user %q: unknown user", name)
			}
			return web, nil
		},
		OwnerOf: func(dir string) (hooks.AppUser, error) {
			if dir != "/srv/web" {
				return hooks.AppUser{}, errors.New(dir + ": no such file or directory")
			}
			return web, nil
		},
		FindPM2: func(hooks.AppUser, string) (string, string, error) {
			return "/home/web/.nvm/versions/node/v20.11.1/bin/pm2", "/home/web/.nvm/versions/node/v20.11.1/bin", nil
		},
		LoadCA:     there,
		Executable: there,
	}
}

// TestCheckConfigFromStdin: --config - reads the draft from stdin (what
// the flag parser gives check-config), without the file's owner check.
func TestCheckConfigFromStdin(t *testing.T) {
	o, err := parse(lookup("check-config"), []string{"--config", "-"})
	if err != nil || o.value("config") != stdinConfig {
		t.Fatalf("--config -: %v, %v", o.flags, err)
	}
	draft := "app:\n  name: web\n  user: web\n  dir: /srv/web\n"
	var out, errb bytes.Buffer
	if code := checkConfig(o.value("config"), strings.NewReader(draft), fakeNode(), &out, &errb); code != agent.ExitOK || errb.Len() != 0 {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
	want := []string{
		"# <stdin> is valid; effective configuration:\napp:\n    name: web\n    user: web\n    dir: /srv/web\n",
		"\n# on this node:\n#   app user: web (uid 1001, app.user)\n#   pm2: /home/web/.nvm/versions/node/v20.11.1/bin/pm2\n" +
			"#   pm2's PATH: /home/web/.nvm/versions/node/v20.11.1/bin\n#   PM2_HOME: /home/web/.pm2\n",
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("stdout lacks %q:\n%s", w, out.String())
		}
	}
}

// TestCheckConfigExitCodes: a config problem and a node problem are both
// exit 2, listed apart on stderr. A config that is not valid prints nothing
// on stdout; a valid one prints its effective values there even when the
// node lacks what it names (the maintainer scripts read daemon.state_dir
// from them on a node being taken apart).
func TestCheckConfigExitCodes(t *testing.T) {
	tests := []struct {
		name, draft string
		files       []string
		wantStderr  string
	}{
		{
			name:       "not valid: the node is not asked",
			draft:      "app:\n  name: web\n  user: nobody\ntraffic:\n  portz: [443]\n",
			wantStderr: "patchagent check-config: config <stdin>: 1 problem(s)\n  <stdin>:line 5: traffic.portz: unknown key",
		},
		{
			name:       "two documents",
			draft:      "app:\n  name: web\n---\ntraffic:\n  ports: [22]\n",
			wantStderr: "<stdin>:line 3: (yaml): a second YAML document starts here",
		},
		{
			name:  "valid, but not on this node",
			draft: "app:\n  name: web\n  user: nobody\n  dir: /srv/wbe\nhealth:\n  ca_file: /etc/ca.pem\nsteps:\n  exit_commands: [[/usr/bin/true], [/bin/join]]\n",
			files: []string{"/usr/bin/true"},
			wantStderr: "patchagent check-config: config <stdin> is valid, but on this node: 4 problem(s)\n" +
				"  app.user: looking up user \"nobody\": unknown user\n" +
				"  app.dir: /srv/wbe: no such file or directory\n" +
				"  health.ca_file: /etc/ca.pem: no such file or directory\n" +
				"  steps.exit_commands[1]: /bin/join: no such file or directory\n",
		},
		{
			name:  "what was found is shown with the problems",
			draft: "app:\n  name: web\n  user: web\nsteps:\n  pre_commands: [[/bin/leave]]\n",
			wantStderr: "on this node: 1 problem(s)\n  steps.pre_commands[0]: /bin/leave: no such file or directory\n" +
				"found on this node:\n  app user: web (uid 1001, app.user)\n  pm2: /home/web/.nvm/versions/node/v20.11.1/bin/pm2\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := checkConfig(stdinConfig, strings.NewReader(tt.draft), fakeNode(tt.files...), &out, &errb)
			if code != agent.ExitUsage {
				t.Fatalf("exit %d, want 2", code)
			}
			if valid := strings.Contains(tt.name, "valid, but") || strings.Contains(tt.name, "found"); valid {
				if !strings.HasPrefix(out.String(), "# <stdin> is valid; effective configuration:\napp:\n    name: web\n") ||
					!strings.Contains(out.String(), "\n    state_dir: /var/lib/patchagent\n") || strings.Contains(out.String(), "# on this node:") {
					t.Errorf("stdout: want the effective config, and what was found only on stderr:\n%s", out.String())
				}
			} else if out.Len() != 0 {
				t.Errorf("stdout %q: want nothing for a config that is not valid", out.String())
			}
			if !strings.Contains(errb.String(), tt.wantStderr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantStderr, errb.String())
			}
			if strings.Contains(tt.name, "not valid") && strings.Contains(errb.String(), "on this node") {
				t.Errorf("the node was checked for a config that is not valid:\n%s", errb.String())
			}
		})
	}
}

// TestCheckConfigPrintsStateDirOnABrokenNode: a custom daemon.state_dir is
// on stdout whatever the node lacks (here its app user, as when the node is
// being decommissioned), where preremove.sh and postinstall.sh read it.
func TestCheckConfigPrintsStateDirOnABrokenNode(t *testing.T) {
	draft := "app:\n  name: web\n  user: gone\ndaemon:\n  state_dir: /srv/patchagent-state\n  textfile_dir: /srv/textfiles\n"
	var out, errb bytes.Buffer
	if code := checkConfig(stdinConfig, strings.NewReader(draft), fakeNode(), &out, &errb); code != agent.ExitUsage {
		t.Fatalf("exit %d, want 2\n%s", code, errb.String())
	}
	for _, w := range []string{"\n    state_dir: /srv/patchagent-state\n", "\n    textfile_dir: /srv/textfiles\n"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("stdout lacks %q:\n%s", w, out.String())
		}
	}
	if !strings.Contains(errb.String(), "on this node: 1 problem(s)\n  app.user: looking up user \"gone\"") {
		t.Errorf("stderr:\n%s", errb.String())
	}
}
