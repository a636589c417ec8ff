package hooks

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

func TestRedact(t *testing.T) {
	tests := []struct{ name, in, want string }{
		// Kept as they are.
		{"npm 404", "npm ERR! 404 Not Found - GET https://registry.npmjs.org/x", ""},
		{"package spec", "added express@4.21.2 and @scope/pkg@1.2.3 (name@1.2.3)", ""},
		{"scoped package URL", "npm http fetch GET 200 https://registry.npmjs.org/@babel%2fcore 20ms (cache revalidated)", ""},
		{"address outside a URL", "contact a@b.c about https://registry.example/x", ""},
		{"email setting", "email=a@b.c", ""},
		{"password as a word", "npm ERR! Incorrect or missing password.", ""},
		{"key at the end of a line keeps the next line", "password:\nnext line", ""},
		{"tokens is another key", "tokens: 5", ""},
		{"empty", "", ""},

		// URL userinfo.
		{"user and password", "GET https://user:pass@registry.example/x", "GET https://***@registry.example/x"},
		{"token as user", "fetch https://tok3n@registry.example/", "fetch https://***@registry.example/"},
		{"unescaped @ in the password", "http://u:p@ss@127.0.0.1:4873/dep-a 20ms", "http://***@127.0.0.1:4873/dep-a 20ms"},
		{"git URL", "git+ssh://git@github.com/u/r.git", "git+ssh://***@github.com/u/r.git"},
		{"URL in JSON, email after it", `{"url":"https://u:p@reg.example","email":"a@b.c"}`, `{"url":"https://***@reg.example","email":"a@b.c"}`},
		{"two URLs", "https://a:b@x/ and https://c@y/", "https://***@x/ and https://***@y/"},

		// .npmrc and other key/value forms.
		{"npmrc auth token", "//registry.example/:_authToken=SECRET", "//registry.example/:_authToken=***"},
		{"npmrc _auth", "_auth=dXNlcjpwYXNz", "_auth=***"},
		{"npmrc _password, spaced and quoted", `//reg/:_password = "cGFzcw=="`, `//reg/:_password = "***"`},
		{"yaml password", "password: hunter2", "password: ***"},
		{"single-quoted", "token='a b c'", "token='***'"},
		{"env var", "NPM_TOKEN=abc123 npm publish", "NPM_TOKEN=*** npm publish"},
		{"query parameter", "GET https://reg.example/x?token=abc&y=1", "GET https://reg.example/x?token=***&y=1"},
		{"JSON", `{"_authToken":"SECRET","email":"a@b.c"}`, `{"_authToken":"***","email":"a@b.c"}`},
		{"JSON with blanks in the value", `{"password": "a \"b\" c"}`, `{"password": "***"}`},
		{"multi-line", "_authToken=SECRET\nnpm ERR! code E401", "_authToken=***\nnpm ERR! code E401"},

		// Authorization headers.
		{"bearer", "Authorization: Bearer xyz.abc", "Authorization: Bearer ***"},
		{"basic", "authorization: Basic dXNlcjpwYXNz", "authorization: Basic ***"},
		{"bare value", "Authorization: xyz", "Authorization: ***"},
		{"JSON header", `{"authorization":"Bearer xyz"}`, `{"authorization":"Bearer ***"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == "" {
				want = tt.in
			}
			if got := redact(tt.in); got != want {
				t.Errorf("redact(%q)\n = %q\nwant %q", tt.in, got, want)
			}
			if got := redact(want); got != want {
				t.Errorf("redact is not idempotent: redact(%q) = %q", want, got)
			}
		})
	}
}

// secrets are what the scripts below print; none may reach an error or a
// log.
var secrets = []string{"s3cret", "tok3n", "QkFTRTY0", "hunter2", "b3arer"}

// secretStderr is npm-like output with each of secrets in it, with colour
// codes between a key and its value as npm prints them.
const secretStderr = `npm http fetch GET 200 https://user:s3cret@registry.example/dep-a 20ms (cache stale)
npm warn tar TAR_ENTRY_ERROR ENOSPC: no space left on device, https://tok3n@registry.example/x.tgz
npm verbose config //registry.example/:_auth=QkFTRTY0
npm verbose config //registry.example/:_password=` + "\x1b[33m" + `"hunter2"` + "\x1b[39m" + `
npm ERR! request headers {"authorization":"Bearer b3arer"}
npm ERR! 404 Not Found - GET https://registry.example/dep-a`

func assertNoSecret(t *testing.T, what, s string) {
	t.Helper()
	for _, sec := range secrets {
		if strings.Contains(s, sec) {
			t.Errorf("%s shows %q: %s", what, sec, s)
		}
	}
}

// fakeProgram writes an executable script that prints stderr to its stderr
// and exits with code.
func fakeProgram(t *testing.T, stderr, code string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stderr"), []byte(stderr+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "npm")
	script := "#!/bin/sh\ncat '" + filepath.Join(dir, "stderr") + "' >&2\n" + code + "\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// TestExecRunnerRedactsStderr checks the runner's two ways of quoting
// stderr in an error: a non-zero exit and a kill at the deadline.
func TestExecRunnerRedactsStderr(t *testing.T) {
	env := []string{"PATH=/usr/bin:/bin"}
	_, err := (&ExecRunner{}).Run(t.Context(), Cmd{Name: fakeProgram(t, secretStderr, "exit 1"), Env: env})
	var xe *ExitError
	if !errors.As(err, &xe) || !strings.Contains(err.Error(), "_auth=***") || !strings.Contains(err.Error(), "404 Not Found") {
		t.Fatalf("err = %v, want an ExitError with npm's redacted stderr", err)
	}
	assertNoSecret(t, "the exit error", err.Error())

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = (&ExecRunner{WaitDelay: time.Second}).Run(ctx, Cmd{Name: fakeProgram(t, secretStderr, "exec sleep 10"), Env: env})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "_auth=***") {
		t.Fatalf("err = %v, want a deadline error with npm's redacted stderr", err)
	}
	assertNoSecret(t, "the deadline error", err.Error())
}

// TestNPMRedactsOutput runs NPM.Update with the real runner and an npm that
// prints credentials: neither the error (which the phase report quotes) nor
// the log shows them, whether npm failed or exited 0 with a warning that
// means nothing happened.
func TestNPMRedactsOutput(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: npm runs with the app user's credential")
	}
	var xe *ExitError
	tests := []struct {
		name, code, stderr string
		want               func(error) bool
	}{
		{"npm failed", "exit 1", secretStderr, func(err error) bool { return errors.As(err, &xe) }},
		{"stale cache", "exit 0", secretStderr, func(err error) bool { return errors.Is(err, ErrRegistryUnreachable) }},
		{"unwritten files", "exit 0", strings.Replace(secretStderr, "(cache stale)", "", 1), func(err error) bool { return errors.Is(err, ErrIncompleteInstall) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			n := NewNPM(zap.New(core), &ExecRunner{}, NPMConfig{
				Bin: fakeProgram(t, tt.stderr, tt.code), Dir: t.TempDir(), Path: "/usr/bin:/bin", AllowRoot: true,
				User: AppUser{Name: "root", Home: t.TempDir()},
			})
			err := n.Update(t.Context())
			if err == nil || !tt.want(err) {
				t.Fatalf("err = %v", err)
			}
			t.Log(err)
			assertNoSecret(t, "the error", err.Error())
			for _, e := range logs.All() {
				assertNoSecret(t, "the log", fmt.Sprint(e.Message, e.ContextMap()))
			}
		})
	}
}
