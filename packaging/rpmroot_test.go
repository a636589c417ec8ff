//go:build integration

package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// scriptletTools are what the maintainer scripts run, copied into a
// scratch root for rpm --root to run them in (chrooted).
var scriptletTools = []string{"sh", "sed", "cp", "mv", "rm", "mkdir", "rmdir", "grep", "head", "cat", "flock"}

// rpmRoot is a scratch root for rpm --root: /bin/sh and the tools of
// scriptletTools with the shared libraries ldd names for them, and an rpm
// database of its own. Nothing of the host is installed to or read from.
type rpmRoot struct {
	t    *testing.T
	dir  string
	last string // the output of the last rpm run
}

func newRPMRoot(t *testing.T) *rpmRoot {
	t.Helper()
	need(t, "rpm", "ldd")
	if os.Geteuid() != 0 {
		t.Skip("rpm --root runs the scriptlets chrooted: needs root")
	}
	r := &rpmRoot{t: t, dir: t.TempDir()}
	for _, d := range []string{"usr/bin", "tmp", "var/tmp", "var/lib/rpm", "run"} {
		if err := os.MkdirAll(filepath.Join(r.dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(r.dir, "bin")); err != nil {
		t.Fatal(err)
	}
	copyFile := func(src, dst string, mode os.FileMode) {
		b, err := os.ReadFile(src) // through symlinks: /bin/sh is dash
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, mode); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range scriptletTools {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
		copyFile(p, filepath.Join(r.dir, "usr/bin", tool), 0o755)
		out, _ := exec.Command("ldd", p).Output() // "not a dynamic executable" is fine
		for _, f := range strings.Fields(string(out)) {
			if strings.HasPrefix(f, "/") {
				copyFile(f, filepath.Join(r.dir, f), 0o755)
			}
		}
	}
	return r
}

// rpm runs rpm on the root and fails the test if it fails.
func (r *rpmRoot) rpm(args ...string) {
	r.t.Helper()
	out, err := exec.Command("rpm", append([]string{"--root", r.dir, "--dbpath", "/var/lib/rpm", "--nodeps", "--nosignature"}, args...)...).CombinedOutput()
	r.last = string(out)
	if err != nil {
		r.t.Fatalf("rpm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func (r *rpmRoot) path(p string) string { return filepath.Join(r.dir, p) }

// read returns the file's content and mode ("" and 0 when it is missing).
func (r *rpmRoot) read(p string) (string, os.FileMode) {
	b, err := os.ReadFile(r.path(p))
	if err != nil {
		return "", 0
	}
	fi, _ := os.Stat(r.path(p))
	return string(b), fi.Mode().Perm()
}

func (r *rpmRoot) exists(p string) bool {
	_, err := os.Lstat(r.path(p))
	return err == nil
}

// buildRPM builds an x86_64 rpm of version with nfpm from the nfpm config
// given (paths in it relative to the repository root), into a directory of
// its own, and returns its path.
func buildRPM(t *testing.T, config, version string) string {
	t.Helper()
	built(t) // the binary, man page and completions in dist/
	root, _ := filepath.Abs("..")
	nfpm := strings.TrimSpace(output(t, "make", "-s", "-C", "..", "nfpm-path"))
	dir := t.TempDir()
	cfg := filepath.Join(dir, "nfpm.yaml")
	if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(nfpm, "package", "-f", cfg, "-p", "rpm", "-t", dir)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "GOARCH=amd64", "PKG_VERSION="+version, "PATCHAGENT_SIGNING_KEY=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nfpm rpm %s: %v\n%s", version, err, out)
	}
	rpms, _ := filepath.Glob(filepath.Join(dir, "*.rpm"))
	if len(rpms) != 1 {
		t.Fatalf("nfpm rpm %s: %q", version, rpms)
	}
	return rpms[0]
}

const (
	rpmConfig   = "/etc/patchagent/config.yaml"
	rpmTemplate = "/usr/share/patchagent/config.yaml"
)

// edit stands for the operator's edit of the config: app.name set.
func edit(t *testing.T, r *rpmRoot) string {
	t.Helper()
	body, _ := r.read(rpmConfig)
	edited := strings.Replace(body, "\n  name: \"\"\n", "\n  name: \"my-app\"\n", 1)
	if edited == body {
		t.Fatalf("%s has no empty app.name to set:\n%s", rpmConfig, body)
	}
	if err := os.WriteFile(r.path(rpmConfig), []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	return edited
}

// TestRPMKeepsTheOperatorsConfig, in a scratch rpm root: the rpm owns no
// config, so the Distributor's update (rpm -e, then install), a plain
// upgrade and a removal all leave the operator's /etc/patchagent/config.yaml
// byte for byte, with no .rpmsave; postinstall created it, 0600; erase
// leaves none of the package's directories (/usr/share/patchagent,
// /usr/share/licenses/patchagent) behind.
func TestRPMKeepsTheOperatorsConfig(t *testing.T) {
	_, pkg := built(t)
	nfpmConfig, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	newer := buildRPM(t, string(nfpmConfig), "9.9.9")
	r := newRPMRoot(t)

	r.rpm("-i", pkg)
	template, _ := os.ReadFile("config.yaml")
	if got, mode := r.read(rpmConfig); got != string(template) || mode != 0o600 {
		t.Fatalf("after install: %s is %v %q, want the template, 0600\n%s", rpmConfig, mode, got, r.last)
	}
	edited := edit(t, r)
	check := func(when string) {
		t.Helper()
		if got, mode := r.read(rpmConfig); got != edited || mode != 0o600 {
			t.Errorf("%s: %s is %v %q, want the operator's edit, 0600\n%s", when, rpmConfig, mode, got, r.last)
		}
		if r.exists(rpmConfig + ".rpmsave") {
			t.Errorf("%s: %s.rpmsave exists", when, rpmConfig)
		}
	}

	r.rpm("-e", "patchagent")
	check("after rpm -e")
	for _, d := range []string{"/usr/share/patchagent", "/usr/share/licenses/patchagent", "/usr/bin/patchagent"} {
		if r.exists(d) {
			t.Errorf("after rpm -e: %s is left behind", d)
		}
	}
	r.rpm("-i", pkg)
	check("after rpm -e and a reinstall")
	r.rpm("-U", newer)
	check("after an upgrade")
	r.rpm("-e", "patchagent")
	check("after rpm -e of the upgrade")
	for _, d := range []string{"/usr/share/patchagent", "/usr/share/licenses/patchagent"} {
		if r.exists(d) {
			t.Errorf("after rpm -e of the upgrade: %s is left behind", d)
		}
	}
}

// TestRPMFromPatchagent010KeepsTheConfig: patchagent 0.1.0's rpm owned the
// config (%config(noreplace)), which rpm renames .rpmsave when it erases an
// edited one. Leaving 0.1.0, by the Distributor's rpm -e then install or by
// an upgrade, the operator's edit is the config again (postinstall,
// posttrans), and an unedited one is the template.
func TestRPMFromPatchagent010KeepsTheConfig(t *testing.T) {
	_, pkg := built(t)
	b, err := os.ReadFile("nfpm.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// 0.1.0's nfpm.yaml: the config in the rpm, no posttrans.
	old := strings.Replace(string(b), "\ncontents:\n", "\ncontents:\n"+
		"  - src: packaging/config.yaml\n    dst: /etc/patchagent/config.yaml\n    type: config|noreplace\n"+
		"    packager: rpm\n    file_info: {mode: 0600, owner: root, group: root}\n", 1)
	old = strings.Replace(old, "  scripts:\n    posttrans: packaging/scripts/posttrans.sh\n", "", 1)
	if !strings.Contains(old, "type: config|noreplace") || strings.Contains(old, "posttrans") {
		t.Fatal("nfpm.yaml: cannot make 0.1.0's config from it")
	}
	pkg010 := buildRPM(t, old, "0.0.9")
	if c := strings.TrimSpace(output(t, "rpm", "-qpc", pkg010)); c != rpmConfig {
		t.Fatalf("the 0.1.0-like rpm's config files: %q", c)
	}
	template, _ := os.ReadFile("config.yaml")

	t.Run("rpm -e then install", func(t *testing.T) {
		r := newRPMRoot(t)
		r.rpm("-i", pkg010)
		edited := edit(t, r)
		r.rpm("-e", "patchagent")
		if got, _ := r.read(rpmConfig + ".rpmsave"); got != edited || r.exists(rpmConfig) {
			t.Fatalf("0.1.0's rpm -e did not save the edit as .rpmsave (the bug this undoes):\n%s", r.last)
		}
		r.rpm("-i", pkg)
		if got, mode := r.read(rpmConfig); got != edited || mode != 0o600 || r.exists(rpmConfig+".rpmsave") {
			t.Errorf("after the install: %s is %v %q, want the edit back, 0600, no .rpmsave\n%s", rpmConfig, mode, got, r.last)
		}
	})
	t.Run("upgrade, edited", func(t *testing.T) {
		r := newRPMRoot(t)
		r.rpm("-i", pkg010)
		edited := edit(t, r)
		r.rpm("-U", pkg)
		if got, mode := r.read(rpmConfig); got != edited || mode != 0o600 || r.exists(rpmConfig+".rpmsave") {
			t.Errorf("after the upgrade: %s is %v %q, want the edit, 0600, no .rpmsave\n%s", rpmConfig, mode, got, r.last)
		}
	})
	t.Run("upgrade, not edited", func(t *testing.T) {
		r := newRPMRoot(t)
		r.rpm("-i", pkg010)
		r.rpm("-U", pkg)
		if got, mode := r.read(rpmConfig); got != string(template) || mode != 0o600 {
			t.Errorf("after the upgrade: %s is %v %q, want the template, 0600\n%s", rpmConfig, mode, got, r.last)
		}
	})
}
