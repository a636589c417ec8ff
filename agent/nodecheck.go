package agent

import (
	"fmt"

	"github.com/patchagent/patchagent/healthcheck"
	"github.com/patchagent/patchagent/hooks"
)

// NodeChecker asks the node what validation cannot tell: whether what a
// config names is there. Build asks the same questions (findAppUser, FindPM2),
// so check-config and the daemon agree. HostNode asks this node; tests
// give fakes.
type NodeChecker struct {
	// LookupUser finds an account by name.
	LookupUser func(name string) (hooks.AppUser, error)
	// OwnerOf is the account owning a directory the app user controls.
	OwnerOf func(dir string) (hooks.AppUser, error)
	// FindPM2 finds pm2 for a user, and the PATH to run it with.
	FindPM2 func(u hooks.AppUser, configured string) (bin, path string, err error)
	// LoadCA says why a CA bundle cannot be used (nil when it can).
	LoadCA func(path string) error
	// Executable says why a program cannot be run (nil when it can).
	Executable func(path string) error
}

// HostNode is the NodeChecker of this node.
func HostNode() NodeChecker {
	return NodeChecker{
		LookupUser: hooks.LookupUser,
		OwnerOf:    hooks.OwnerOf,
		FindPM2:    hooks.FindPM2,
		LoadCA: func(path string) error {
			_, err := healthcheck.LoadCAFile(path)
			return err
		},
		Executable: hooks.CheckExecutable,
	}
}

// NodeReport is what CheckNode found: what the agent will run with, one
// "what: value" line each, and every problem, by its key.
type NodeReport struct {
	Found    []string
	Problems []Problem
}

// CheckNode checks on the node what the valid cfg names: the app user
// (app.user, else the owner of app.dir, else root), app.dir, pm2 and the
// PM2_HOME it runs with, health.ca_file, the program of each
// steps.pre_commands and steps.exit_commands.
func (n NodeChecker) CheckNode(cfg Config) NodeReport {
	var r NodeReport
	var ps problems
	u, key, by, uerr := n.findAppUser(cfg.App)
	if uerr != nil {
		ps.bad(key, "%v", uerr)
	} else {
		r.Found = append(r.Found, fmt.Sprintf("app user: %s (uid %d, %s)", u.Name, u.UID, by))
		if bin, path, err := n.FindPM2(u, cfg.App.PM2); err != nil {
			ps.bad("app.pm2", "%v", err)
		} else {
			r.Found = append(r.Found, "pm2: "+bin, "pm2's PATH: "+path, "PM2_HOME: "+hooks.PM2Home(u, cfg.App.PM2Home))
		}
	}
	// With app.user, app.dir must be that user's: post's npm refuses a dir
	// of another owner. (Without it, findAppUser took app.dir's owner.)
	if cfg.App.User != "" && cfg.App.Dir != "" {
		if owner, err := n.OwnerOf(cfg.App.Dir); err != nil {
			ps.bad("app.dir", "%v", err)
		} else if uerr == nil && owner.UID != u.UID {
			ps.bad("app.dir", "%s is owned by %s (uid %d), not by app.user %s (uid %d): post's npm runs as app.user and refuses it", cfg.App.Dir, owner.Name, owner.UID, u.Name, u.UID)
		}
	}
	if cfg.Health.CAFile != "" {
		if err := n.LoadCA(cfg.Health.CAFile); err != nil {
			ps.bad("health.ca_file", "%v", err)
		}
	}
	for _, steps := range []struct {
		key  string
		cmds [][]string
	}{{"steps.pre_commands", cfg.Steps.PreCommands}, {"steps.exit_commands", cfg.Steps.ExitCommands}} {
		for i, argv := range steps.cmds {
			if err := n.Executable(argv[0]); err != nil { // validated: argv[0] is an absolute path
				ps.bad(fmt.Sprintf("%s[%d]", steps.key, i), "%v", err)
			}
		}
	}
	r.Problems = ps
	return r
}

// findAppUser resolves app.user, else the owner of app.dir, else root (the
// tutorial's own setup: root's pm2). key is the key a problem is reported
// under, by what chose the user.
func (n NodeChecker) findAppUser(c AppConfig) (u hooks.AppUser, key, by string, err error) {
	switch {
	case c.User != "":
		u, err = n.LookupUser(c.User)
		return u, "app.user", "app.user", err
	case c.Dir != "":
		if u, err = n.OwnerOf(c.Dir); err != nil {
			err = fmt.Errorf("app.user not set, so the owner of app.dir runs pm2: %w", err)
		}
		return u, "app.dir", "the owner of app.dir", err
	}
	if u, err = n.LookupUser("root"); err != nil {
		err = fmt.Errorf("not set and no root account: %w", err)
	}
	return u, "app.user", "app.user and app.dir not set", err
}
