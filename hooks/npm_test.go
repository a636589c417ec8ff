package hooks_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.uber.org/zap/zaptest"

	"github.com/patchagent/patchagent/hooks"
	"github.com/patchagent/patchagent/hooks/hookstest"
)

const (
	npmBin  = "/opt/node/bin/npm"
	npmPath = "/opt/node/bin:/usr/bin:/bin"
)

const pkgJSON = `{
  "name": "app",
  "version": "1.0.0",
  "scripts": {
    "start": "node server.js"
  },
  "dependencies": {
    "express": "^4.18.2",
    "zod": "~3.22.0"
  },
  "devDependencies": {
    "mocha": "^10.2.0"
  }
}
`

const pkgLock = `{
  "name": "app",
  "version": "1.0.0",
  "lockfileVersion": 3,
  "requires": true,
  "packages": {
    "": {
      "name": "app",
      "version": "1.0.0",
      "dependencies": {
        "express": "^4.18.2",
        "zod": "~3.22.0"
      },
      "devDependencies": {
        "mocha": "^10.2.0"
      }
    },
    "node_modules/express": {"version": "4.18.2"},
    "node_modules/zod": {"version": "3.22.4"},
    "node_modules/mocha": {"version": "10.2.0", "dev": true}
  }
}
`

// testUser is the current user (so that the test's own files are "owned
// by the app user"); root is allowed only because tests run as root.
func testUser(t *testing.T) hooks.AppUser {
	return hooks.AppUser{
		Name: "app", UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		Groups: []uint32{uint32(os.Getgid()), 4242}, Home: t.TempDir(),
	}
}

func appDir(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func newNPM(t *testing.T, run hooks.Runner, dir string, mod func(*hooks.NPMConfig)) (*hooks.NPM, hooks.NPMConfig) {
	t.Helper()
	c := hooks.NPMConfig{Bin: npmBin, User: testUser(t), AllowRoot: os.Getuid() == 0, Dir: dir, Path: npmPath}
	if mod != nil {
		mod(&c)
	}
	return hooks.NewNPM(zaptest.NewLogger(t), run, c), c
}

func wantCmd(c hooks.NPMConfig, dir string, args ...string) hooks.Cmd {
	return hooks.Cmd{
		Name: npmBin,
		Args: args,
		Dir:  dir,
		Env:  []string{"HOME=" + c.User.Home, "PATH=" + npmPath, "npm_config_update_notifier=false"},
		Cred: &hooks.Credential{UID: c.User.UID, GID: c.User.GID, Groups: c.User.Groups},
	}
}

var defaultFetch = []string{"--fetch-timeout=30000", "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=10000"}

func TestNPMUpdateCommand(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(*hooks.NPMConfig)
		fetch []string
	}{
		{name: "defaults", fetch: defaultFetch},
		{
			name: "tuned",
			mod: func(c *hooks.NPMConfig) {
				c.FetchTimeout, c.FetchRetries = 5*time.Second, 3
				c.FetchRetryMinTimeout, c.FetchRetryMaxTimeout = 500*time.Millisecond, 4*time.Second
			},
			fetch: []string{"--fetch-timeout=5000", "--fetch-retries=3", "--fetch-retry-mintimeout=500", "--fetch-retry-maxtimeout=4000"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t, map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock})
			ctx, cancel := context.WithTimeout(t.Context(), time.Hour)
			defer cancel()
			want, _ := ctx.Deadline()
			var got time.Time
			f := &hookstest.FakeRunner{Handler: func(ctx context.Context, c hooks.Cmd) (hooks.Result, error) {
				got, _ = ctx.Deadline()
				return hooks.Result{}, nil
			}}
			n, c := newNPM(t, f, dir, tt.mod)
			if err := n.Update(ctx); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"update", "--no-audit", "--no-fund", "--loglevel=http"}, tt.fetch...)
			if d := cmp.Diff([]hooks.Cmd{wantCmd(c, dir, args...)}, f.Cmds()); d != "" {
				t.Errorf("commands (-want +got):\n%s", d)
			}
			if !got.Equal(want) {
				t.Errorf("npm ran with deadline %v, want the caller's %v (no shorter per-call deadline)", got, want)
			}
		})
	}
}

func TestNPMUpdateError(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": pkgJSON})
	f := (&hookstest.FakeRunner{}).On(npmBin, "update", hookstest.Exit(npmBin, 1, "npm ERR! code ETIMEDOUT\nnpm ERR! network request timed out\n"))
	n, _ := newNPM(t, f, dir, nil)
	err := n.Update(t.Context())
	var xe *hooks.ExitError
	if !errors.As(err, &xe) || !strings.Contains(err.Error(), "ETIMEDOUT") || !strings.Contains(err.Error(), dir) {
		t.Errorf("err = %v, want an ExitError naming the dir with npm's stderr", err)
	}
}

func TestNPMRefusesRoot(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock})
	f := &hookstest.FakeRunner{}
	n, _ := newNPM(t, f, dir, func(c *hooks.NPMConfig) { c.User.UID, c.User.Name, c.AllowRoot = 0, "root", false })
	ctx := t.Context()
	if err := n.Check(ctx); !errors.Is(err, hooks.ErrRootRefused) {
		t.Errorf("Check: err = %v, want ErrRootRefused", err)
	}
	if err := n.Update(ctx); !errors.Is(err, hooks.ErrRootRefused) {
		t.Errorf("Update: err = %v, want ErrRootRefused", err)
	}
	if _, err := n.Outdated(ctx); !errors.Is(err, hooks.ErrRootRefused) {
		t.Errorf("Outdated: err = %v, want ErrRootRefused", err)
	}
	if _, err := n.UpgradeMajor(ctx); !errors.Is(err, hooks.ErrRootRefused) {
		t.Errorf("UpgradeMajor: err = %v, want ErrRootRefused", err)
	}
	if cmds := f.Cmds(); cmds != nil {
		t.Errorf("ran %v as root", f.Argvs())
	}
}

func TestNPMDefaultBin(t *testing.T) {
	dir := t.TempDir()
	nodeDir := filepath.Join(dir, "node", "bin")
	if err := os.MkdirAll(nodeDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"node", "npm"} {
		if err := os.WriteFile(filepath.Join(nodeDir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The npm Update runs, with no Bin configured.
	ran := func(path string) string {
		f := (&hookstest.FakeRunner{}).Then(hookstest.OK(""))
		n := hooks.NewNPM(zaptest.NewLogger(t), f, hooks.NPMConfig{User: testUser(t), AllowRoot: true, Dir: dir, Path: path})
		if err := n.Update(t.Context()); err != nil {
			t.Fatal(err)
		}
		return f.Cmds()[0].Name
	}
	if got := ran(filepath.Join(dir, "empty") + ":" + nodeDir + ":/usr/bin"); got != filepath.Join(nodeDir, "npm") {
		t.Errorf("ran %s, want npm next to node", got)
	}
	if got := ran(filepath.Join(dir, "empty")); got != hooks.DefaultNPMBin {
		t.Errorf("ran %s, want %s", got, hooks.DefaultNPMBin)
	}
}

func TestNPMOutdated(t *testing.T) {
	const report = `{
  "express": {"current": "4.18.2", "wanted": "4.19.2", "latest": "5.0.1", "dependent": "app", "location": "/srv/app/node_modules/express"},
  "zod": [{"current": "3.22.4", "wanted": "3.22.4", "latest": "3.23.8", "dependent": "app"}, {"current": "3.20.0", "wanted": "3.20.6", "latest": "3.23.8", "dependent": "web"}],
  "mocha": {"wanted": "10.4.0", "latest": "10.4.0", "dependent": "app"}
}`
	tests := []struct {
		name    string
		reply   hookstest.Reply
		want    map[string]hooks.Outdated
		wantErr string
	}{
		{
			name:  "something outdated: exit 1 is not an error",
			reply: hookstest.Reply{Result: hooks.Result{ExitCode: 1, Stdout: []byte(report)}, Err: &hooks.ExitError{Name: npmBin, ExitCode: 1}},
			want: map[string]hooks.Outdated{
				"express": {Current: "4.18.2", Wanted: "4.19.2", Latest: "5.0.1"},
				"zod":     {Current: "3.22.4", Wanted: "3.22.4", Latest: "3.23.8"},
				"mocha":   {Wanted: "10.4.0", Latest: "10.4.0"},
			},
		},
		{name: "nothing outdated", reply: hookstest.OK("{}\n"), want: map[string]hooks.Outdated{}},
		{name: "no output", reply: hookstest.OK(""), want: map[string]hooks.Outdated{}},
		{
			name: "npm's own error object",
			reply: hookstest.Reply{
				Result: hooks.Result{ExitCode: 1, Stdout: []byte(`{"error": {"code": "ECONNREFUSED", "summary": "request to https://tok:secret@registry.example/ failed", "detail": ""}}`)},
				Err:    &hooks.ExitError{Name: npmBin, ExitCode: 1, Stderr: "npm error code ECONNREFUSED"},
			},
			wantErr: "ECONNREFUSED",
		},
		{name: "exit 1 without JSON", reply: hookstest.Exit(npmBin, 1, "npm error code ENOTFOUND"), wantErr: "ENOTFOUND"},
		{
			name:    "exit 1 with an empty report",
			reply:   hookstest.Reply{Result: hooks.Result{ExitCode: 1, Stdout: []byte("{}")}, Err: &hooks.ExitError{Name: npmBin, ExitCode: 1, Stderr: "npm error weird"}},
			wantErr: "npm error weird",
		},
		{name: "other exit code", reply: hookstest.Reply{Result: hooks.Result{ExitCode: 2, Stdout: []byte(report)}, Err: &hooks.ExitError{Name: npmBin, ExitCode: 2}}, wantErr: "exited with code 2"},
		{name: "garbage", reply: hookstest.OK("not json"), wantErr: "parsing npm outdated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t, map[string]string{"package.json": pkgJSON})
			f := (&hookstest.FakeRunner{}).On(npmBin, "outdated", tt.reply)
			n, c := newNPM(t, f, dir, nil)
			got, err := n.Outdated(t.Context())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error quotes npm's summary with a credential: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("report (-want +got):\n%s", d)
			}
			args := append([]string{"outdated", "--json"}, defaultFetch...)
			if d := cmp.Diff([]hooks.Cmd{wantCmd(c, dir, args...)}, f.Cmds()); d != "" {
				t.Errorf("commands (-want +got):\n%s", d)
			}
		})
	}
}

// majorPkg is formatted the way a person might have it (key order not
// sorted, scripts first, one non-registry spec, odd spacing kept).
const majorPkg = `{
  "name": "app",
  "private": true,
  "scripts": {"start": "node server.js", "express": "^1.0.0"},
  "dependencies": {
    "zod": "~3.22.0",
    "express": "^4.18.2",
    "local-lib": "file:../local-lib",
    "@scope/pkg":   "1.2.3",
    "lodash": "^4.17.21"
  },
  "optionalDependencies": {
    "fsevents": ">=1.0.0"
  },
  "devDependencies": {
    "mocha": "<=9"
  },
  "engines": {"node": ">=18"}
}
`

const majorReport = `{
  "zod": {"current": "3.22.4", "wanted": "3.22.4", "latest": "3.23.8"},
  "express": {"current": "4.18.2", "wanted": "4.21.2", "latest": "5.1.0"},
  "local-lib": {"current": "1.0.0", "wanted": "linked", "latest": "linked"},
  "@scope/pkg": {"current": "1.2.3", "wanted": "1.2.3", "latest": "2.0.0"},
  "fsevents": {"current": "2.3.2", "wanted": "2.3.3", "latest": "2.3.3"},
  "mocha": {"current": "9.2.2", "wanted": "9.2.2", "latest": "11.0.1"}
}`

func TestNPMUpgradeMajor(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": majorPkg, "package-lock.json": pkgLock})
	pj := filepath.Join(dir, "package.json")
	if err := os.Chmod(pj, 0o640); err != nil {
		t.Fatal(err)
	}
	owner := os.Getuid()
	if os.Getuid() == 0 {
		owner = 65534
		if err := os.Chown(pj, owner, owner); err != nil {
			t.Fatal(err)
		}
	}
	var atInstall []byte
	f := (&hookstest.FakeRunner{}).
		On(npmBin, "outdated", hookstest.Reply{Result: hooks.Result{ExitCode: 1, Stdout: []byte(majorReport)}, Err: &hooks.ExitError{Name: npmBin, ExitCode: 1}}).
		On(npmBin, "install", hookstest.Reply{Do: func(hooks.Cmd) { atInstall, _ = os.ReadFile(pj) }})
	n, c := newNPM(t, f, dir, nil)
	lines, err := n.UpgradeMajor(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	wantLines := []string{"express: ^4.18.2 -> ^5.1.0", "@scope/pkg: 1.2.3 -> ^2.0.0", "mocha: <=9 -> ^11.0.1"}
	if d := cmp.Diff(wantLines, lines); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
	want := strings.NewReplacer(
		`"express": "^4.18.2"`, `"express": "^5.1.0"`,
		`"@scope/pkg":   "1.2.3"`, `"@scope/pkg":   "^2.0.0"`,
		`"mocha": "<=9"`, `"mocha": "^11.0.1"`,
	).Replace(majorPkg)
	got, err := os.ReadFile(pj)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(want, string(got)); d != "" {
		t.Errorf("package.json (-want +got):\n%s", d)
	}
	if string(atInstall) != want {
		t.Errorf("npm install ran before package.json was rewritten")
	}
	fi, err := os.Stat(pj)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o640 || int(st.Uid) != owner || int(st.Gid) != owner {
		t.Errorf("package.json is %v %d:%d, want 0640 %d:%d", fi.Mode().Perm(), st.Uid, st.Gid, owner, owner)
	}
	if _, err := os.Lstat(filepath.Join(dir, ".package.json.patchagent-tmp")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file left behind: %v", err)
	}
	wantCmds := []hooks.Cmd{
		wantCmd(c, dir, append([]string{"outdated", "--json"}, defaultFetch...)...),
		wantCmd(c, dir, append([]string{"install", "--no-audit", "--no-fund", "--loglevel=http"}, defaultFetch...)...),
	}
	if d := cmp.Diff(wantCmds, f.Cmds()); d != "" {
		t.Errorf("commands (-want +got):\n%s", d)
	}
}

func TestNPMUpgradeMajorNothingToDo(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": pkgJSON})
	f := (&hookstest.FakeRunner{}).On(npmBin, "outdated", hookstest.Reply{
		Result: hooks.Result{ExitCode: 1, Stdout: []byte(`{"express": {"current": "4.18.2", "wanted": "4.21.2", "latest": "4.21.2"}}`)},
		Err:    &hooks.ExitError{Name: npmBin, ExitCode: 1},
	})
	n, _ := newNPM(t, f, dir, nil)
	lines, err := n.UpgradeMajor(t.Context())
	if err != nil || lines != nil {
		t.Fatalf("UpgradeMajor = %q, %v; want nothing", lines, err)
	}
	if d := cmp.Diff([]string{npmBin + " outdated --json " + strings.Join(defaultFetch, " ")}, f.Argvs()); d != "" {
		t.Errorf("commands (-want +got):\n%s", d)
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "package.json")); string(got) != pkgJSON {
		t.Errorf("package.json changed:\n%s", got)
	}
}

func TestNPMUpgradeMajorInstallFails(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": pkgJSON})
	f := (&hookstest.FakeRunner{}).
		On(npmBin, "outdated", hookstest.Reply{
			Result: hooks.Result{ExitCode: 1, Stdout: []byte(`{"express": {"current": "4.18.2", "wanted": "4.21.2", "latest": "5.0.0"}}`)},
			Err:    &hooks.ExitError{Name: npmBin, ExitCode: 1},
		}).
		On(npmBin, "install", hookstest.Exit(npmBin, 1, "npm error ERESOLVE could not resolve"))
	n, _ := newNPM(t, f, dir, nil)
	lines, err := n.UpgradeMajor(t.Context())
	if err == nil || !strings.Contains(err.Error(), "ERESOLVE") {
		t.Errorf("err = %v, want npm install's failure", err)
	}
	if d := cmp.Diff([]string{"express: ^4.18.2 -> ^5.0.0"}, lines); d != "" {
		t.Errorf("lines (-want +got):\n%s", d)
	}
}

func TestNPMCheck(t *testing.T) {
	okFiles := map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock}
	without := func(name string) map[string]string {
		m := map[string]string{}
		for k, v := range okFiles {
			if k != name {
				m[k] = v
			}
		}
		return m
	}
	// npm as a file: an executable one, one without an execute bit, none.
	bins := t.TempDir()
	npmOK, npmNoExec, npmNone := filepath.Join(bins, "npm"), filepath.Join(bins, "npm-noexec"), filepath.Join(bins, "npm-none")
	os.WriteFile(npmOK, []byte("#!/bin/sh\nexit 1\n"), 0o755) // never run: its exit 1 would not matter
	os.WriteFile(npmNoExec, []byte("#!/bin/sh\n"), 0o644)
	bin := func(b, path string) func(*hooks.NPMConfig) {
		return func(c *hooks.NPMConfig) { c.Bin, c.Path = b, path }
	}
	tests := []struct {
		name  string
		files map[string]string
		mod   func(*hooks.NPMConfig)
		chown bool // the app dir owned by another user
		is    error
		want  string
	}{
		{name: "ok", files: okFiles},
		{
			name:  "ok with a shrinkwrap instead",
			files: map[string]string{"package.json": pkgJSON, "npm-shrinkwrap.json": pkgLock, "package-lock.json": "{}"},
		},
		{name: "no package.json", files: without("package.json"), is: hooks.ErrNoPackageJSON},
		{
			name:  "malformed package.json",
			files: map[string]string{"package.json": `{"dependencies": {"a": 1}}`, "package-lock.json": pkgLock},
			want:  "parsing " + "%DIR%/package.json",
		},
		{name: "no lockfile", files: without("package-lock.json"), is: hooks.ErrNoLockfile},
		{
			name:  "lockfile version 1",
			files: map[string]string{"package.json": pkgJSON, "package-lock.json": `{"lockfileVersion": 1, "dependencies": {}}`},
			want:  "lockfileVersion 1 is not supported",
		},
		{
			name:  "range changed in package.json",
			files: map[string]string{"package.json": strings.Replace(pkgJSON, `"zod": "~3.22.0"`, `"zod": "^3.23.0"`, 1), "package-lock.json": pkgLock},
			is:    hooks.ErrLockfileOutOfSync,
			want:  `dependencies.zod: package.json wants "^3.23.0", package-lock.json has "~3.22.0"`,
		},
		{
			name:  "dependency added to package.json",
			files: map[string]string{"package.json": strings.Replace(pkgJSON, `"mocha": "^10.2.0"`, `"mocha": "^10.2.0", "chai": "^4"`, 1), "package-lock.json": pkgLock},
			is:    hooks.ErrLockfileOutOfSync,
			want:  `devDependencies.chai: package.json wants "^4", package-lock.json has none`,
		},
		{
			name:  "dependency removed from package.json",
			files: map[string]string{"package.json": strings.Replace(pkgJSON, `"express": "^4.18.2",`, ``, 1), "package-lock.json": pkgLock},
			is:    hooks.ErrLockfileOutOfSync,
			want:  `dependencies.express: package-lock.json has "^4.18.2", package.json has none`,
		},
		{name: "npm missing", files: okFiles, mod: bin(npmNone, npmPath), is: hooks.ErrNPMNotFound, want: npmNone},
		{name: "npm not executable", files: okFiles, mod: bin(npmNoExec, npmPath), is: hooks.ErrNPMNotFound, want: "not executable"},
		{name: "npm by name on npm's PATH", files: okFiles, mod: bin("npm", "/nonexistent:"+bins)},
		{name: "npm by name, not on npm's PATH", files: okFiles, mod: bin("npm", "/nonexistent:/usr/sbin"), is: hooks.ErrNPMNotFound, want: "/nonexistent:/usr/sbin"},
		{name: "uid 0 refused", files: okFiles, mod: func(c *hooks.NPMConfig) { c.User.UID, c.AllowRoot = 0, false }, is: hooks.ErrRootRefused},
		{name: "no home", files: okFiles, mod: func(c *hooks.NPMConfig) { c.User.Home = "" }, want: "has no home directory"},
		{name: "dir owned by someone else", files: okFiles, chown: true, want: "is owned by uid 65534"},
		{
			name: "several problems at once", files: without("package.json"), mod: bin(npmNone, npmPath),
			is: hooks.ErrNPMNotFound, want: "no package.json",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t, tt.files)
			if tt.chown {
				if os.Getuid() != 0 {
					t.Skip("needs root to chown")
				}
				if err := os.Chown(dir, 65534, 65534); err != nil {
					t.Fatal(err)
				}
			}
			before := snapshotFiles(t, dir)
			f := &hookstest.FakeRunner{}
			mod := bin(npmOK, npmPath)
			if tt.mod != nil {
				mod = func(c *hooks.NPMConfig) { bin(npmOK, npmPath)(c); tt.mod(c) }
			}
			n, _ := newNPM(t, f, dir, mod)
			err := n.Check(t.Context())
			if tt.is == nil && tt.want == "" && err != nil {
				t.Fatal(err)
			}
			if len(f.Cmds()) != 0 {
				t.Errorf("Check ran %v; it runs nothing", f.Argvs())
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("err = %v, want %v", err, tt.is)
			}
			if want := strings.ReplaceAll(tt.want, "%DIR%", dir); want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
				t.Errorf("err = %v, want it to contain %q", err, want)
			}
			if d := cmp.Diff(before, snapshotFiles(t, dir)); d != "" {
				t.Errorf("Check wrote to the app dir (-before +after):\n%s", d)
			}
		})
	}
}

// TestNPMLockfile checks that post diffs the lockfile npm itself uses:
// npm-shrinkwrap.json over package-lock.json.
func TestNPMLockfile(t *testing.T) {
	shrink, lock := `{"lockfileVersion": 3, "name": "shrinkwrap"}`, `{"lockfileVersion": 3, "name": "lock"}`
	tests := []struct {
		name  string
		files map[string]string
		want  string
		is    error
	}{
		{"package-lock.json", map[string]string{"package-lock.json": lock}, lock, nil},
		{"npm-shrinkwrap.json only", map[string]string{"npm-shrinkwrap.json": shrink}, shrink, nil},
		{"both: the shrinkwrap", map[string]string{"npm-shrinkwrap.json": shrink, "package-lock.json": lock}, shrink, nil},
		{"none", map[string]string{"package.json": pkgJSON}, "", hooks.ErrNoLockfile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, _ := newNPM(t, &hookstest.FakeRunner{}, appDir(t, tt.files), nil)
			got, err := n.Lockfile()
			if !errors.Is(err, tt.is) || string(got) != tt.want {
				t.Errorf("Lockfile() = %q, %v; want %q, %v", got, err, tt.want, tt.is)
			}
		})
	}
}

// TestNPMCheckRealRunnerMissingBinary checks that ExecRunner's own error for
// a missing executable maps to ErrNPMNotFound.
func TestNPMCheckRealRunnerMissingBinary(t *testing.T) {
	dir := appDir(t, map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock})
	for _, bin := range []string{filepath.Join(t.TempDir(), "npm"), "npm-not-installed-anywhere"} {
		n := hooks.NewNPM(zaptest.NewLogger(t), &hooks.ExecRunner{}, hooks.NPMConfig{
			Bin: bin, User: testUser(t), AllowRoot: true, Dir: dir, Path: t.TempDir(),
		})
		if err := n.Check(t.Context()); !errors.Is(err, hooks.ErrNPMNotFound) {
			t.Errorf("%s: err = %v, want ErrNPMNotFound", bin, err)
		}
	}
}

// snapshotFiles maps each file of dir to its content.
func snapshotFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// TestNPMWarningsThatMeanNothingHappened checks that an npm run exiting 0
// fails when npm's own log says the work did not happen: stale cached
// metadata instead of the registry (update), files not written (update, and
// the install UpgradeMajor runs).
func TestNPMWarningsThatMeanNothingHappened(t *testing.T) {
	const (
		stale       = "npm http fetch GET http://127.0.0.1:4873/dep-a attempt 1 failed with ECONNREFUSED\nnpm http fetch GET 200 http://user:s3cret@127.0.0.1:4873/dep-a 20ms (cache stale)\n\nup to date in 286ms\n"
		revalidated = "npm http fetch GET 200 http://127.0.0.1:4873/dep-a 12ms (cache revalidated)\n\nchanged 1 package in 1s\n"
		enospc      = "npm warn tar TAR_ENTRY_ERROR ENOSPC: no space left on device, write\n\nchanged 1 package in 1s\n"
	)
	outdated := hookstest.Reply{
		Result: hooks.Result{ExitCode: 1, Stdout: []byte(`{"express": {"current": "4.18.2", "wanted": "4.21.2", "latest": "5.0.0"}}`)},
		Err:    &hooks.ExitError{Name: npmBin, ExitCode: 1},
	}
	tests := []struct {
		name, verb, stderr string
		is                 error
		want               string
	}{
		{"update from stale cache", "update", stale, hooks.ErrRegistryUnreachable, "(cache stale)"},
		{"update with a revalidated cache", "update", revalidated, nil, ""},
		{"update that could not write", "update", enospc, hooks.ErrIncompleteInstall, "TAR_ENTRY_ERROR ENOSPC"},
		{"major install that could not write", "install", enospc, hooks.ErrIncompleteInstall, "TAR_ENTRY_ERROR ENOSPC"},
		{"major install, clean", "install", revalidated, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t, map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock})
			f := (&hookstest.FakeRunner{}).
				On(npmBin, "outdated", outdated).
				On(npmBin, tt.verb, hookstest.Reply{Result: hooks.Result{Stderr: []byte(tt.stderr)}})
			n, _ := newNPM(t, f, dir, nil)
			var err error
			if tt.verb == "update" {
				err = n.Update(t.Context())
			} else {
				_, err = n.UpgradeMajor(t.Context())
			}
			if !errors.Is(err, tt.is) || (tt.is != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Fatalf("err = %v, want %v naming %q", err, tt.is, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("the error shows the registry password: %v", err)
			}
			if last := f.Argvs()[len(f.Argvs())-1]; !strings.HasPrefix(last, npmBin+" "+tt.verb+" ") {
				t.Errorf("last command %q, want npm %s", last, tt.verb)
			}
		})
	}
}

// TestNPMCheckRefusesAUserOwnedLinkToTheAppDir: /srv/app/current as a
// symlink the app user owns would let it point root at any directory; post
// refuses it, naming the link, before anything changes.
func TestNPMCheckRefusesAUserOwnedLinkToTheAppDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a symlink owned by another user)")
	}
	dir := appDir(t, map[string]string{"package.json": pkgJSON, "package-lock.json": pkgLock})
	link := filepath.Join(t.TempDir(), "current")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	npm := filepath.Join(t.TempDir(), "npm")
	os.WriteFile(npm, []byte("#!/bin/sh\n"), 0o755) // never run
	n, _ := newNPM(t, nil, link, func(c *hooks.NPMConfig) { c.Bin = npm })
	if err := n.Check(context.Background()); err != nil {
		t.Fatalf("a root-owned link: %v", err)
	}
	if err := os.Lchown(link, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	err := n.Check(context.Background())
	if want := link + " is a symlink owned by uid 65534"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Check = %v, want it to say %q", err, want)
	}
}
