//go:build integration

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// binary is the patchagent built for this run.
var binary string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Println("e2e: skipped, needs root")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "patchagent-e2e-")
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "patchagent")
	// Built as the packages build it (Makefile): static, so os/user reads
	// /etc/passwd alone, and a lookup the C library would answer is not.
	build := exec.Command("go", "build", "-o", binary, "github.com/patchagent/patchagent/cmd/patchagent")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := build.CombinedOutput()
	if err != nil {
		fmt.Printf("building patchagent: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// setupNode brings up the sandbox with the app online; the test ends with it
// torn down.
func setupNode(t testing.TB, prefix string, env map[string]string) *sandbox.Node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	n, err := sandbox.Setup(ctx, sandbox.Options{Prefix: prefix, Env: env})
	if err != nil {
		t.Fatalf("sandbox setup: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Teardown(ctx); err != nil {
			t.Errorf("sandbox teardown: %v", err)
		}
	})
	return n
}

// writeConfig writes a root-owned 0600 config for the sandbox's app, named
// appName, with extra YAML appended after the daemon section (see
// sandbox.PatchagentConfig: the boot id comes from the sandbox's own file,
// so a simulated reboot is seen as one), and returns its path and the state
// dir.
func writeConfig(t testing.TB, n *sandbox.Node, appName, extra string) (cfgPath, stateDir string) {
	t.Helper()
	dir := t.TempDir()
	stateDir = filepath.Join(dir, "state")
	cfg := n.PatchagentConfig(stateDir, "", extra)
	if appName != n.Opts.AppName {
		renamed := strings.Replace(cfg, "  name: "+n.Opts.AppName+"\n", "  name: "+appName+"\n", 1)
		if renamed == cfg {
			t.Fatalf("no app name line to replace in the sandbox config:\n%s", cfg)
		}
		cfg = renamed
	}
	cfgPath = filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return cfgPath, stateDir
}

// result is one run of the patchagent binary.
type result struct {
	code           int
	stdout, stderr string
	report         map[string]any // when run with --output json
	took           time.Duration
	ended          time.Time
}

// patchagent runs the binary inside the server netns as SSM would: root, no
// HOME, SSM's minimal PATH, nothing else in the environment.
func patchagent(t testing.TB, n *sandbox.Node, args ...string) result {
	t.Helper()
	return patchagentWithin(t, n, 2*time.Minute, args...)
}

// patchagentWithin is patchagent, killed after max (then code is -1 and no
// JSON is read).
func patchagentWithin(t testing.TB, n *sandbox.Node, max time.Duration, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), max)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.ServerNS, binary}, args...)...)
	cmd.Env = []string{"PATH=" + sandbox.SSMPath}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String(), took: time.Since(start), ended: time.Now()}
	if ee, ok := err.(*exec.ExitError); ok {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running patchagent: %v", err)
	}
	for _, a := range args {
		if a == "json" && ctx.Err() == nil {
			if err := json.Unmarshal(out.Bytes(), &r.report); err != nil {
				t.Fatalf("--output json printed no single JSON object: %v\n%s", err, out.String())
			}
		}
	}
	t.Logf("patchagent %s: exit %d in %s\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.took, r.stdout, r.stderr)
	return r
}

// iptablesS returns `iptables -S` and `ip6tables -S` of table filter in the
// server netns (sandbox's ServerFirewall), each after a header line.
func iptablesS(t *testing.T, n *sandbox.Node) string {
	t.Helper()
	var all strings.Builder
	for _, fam := range []struct {
		bin string
		v6  bool
	}{{"iptables", false}, {"ip6tables", true}} {
		out, err := n.ServerFirewall(context.Background(), fam.v6)
		if err != nil {
			t.Fatal(err)
		}
		all.WriteString(fam.bin + ":\n" + out)
	}
	return all.String()
}
