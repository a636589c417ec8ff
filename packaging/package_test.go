//go:build integration

package packaging

import (
	"archive/zip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The integration tests build the packages with `make distributor` (which
// runs `make package`) once, then inspect dist/ with dpkg-deb, rpm, lintian
// and the built binary. Needs lintian and rpm (deploy/setup.sh installs them).

var (
	buildOnce sync.Once
	buildErr  error
	buildOut  []byte
)

func built(t *testing.T) (deb, rpm string) {
	t.Helper()
	buildOnce.Do(func() {
		buildOut, buildErr = exec.Command("make", "-C", "..", "distributor").CombinedOutput()
	})
	if buildErr != nil {
		t.Fatalf("make distributor: %v\n%s", buildErr, buildOut)
	}
	debs, _ := filepath.Glob("../dist/patchagent_*_amd64.deb")
	rpms, _ := filepath.Glob("../dist/patchagent-*.x86_64.rpm")
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("want one deb and one rpm in dist/, got %q %q", debs, rpms)
	}
	return debs[0], rpms[0]
}

func need(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not installed (sh deploy/setup.sh installs it)", tool)
		}
	}
}

func output(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr)
	}
	return string(out)
}

func pkgVersion(t *testing.T) string {
	return strings.TrimSpace(output(t, "sh", "version.sh"))
}

func TestDebContents(t *testing.T) {
	need(t, "dpkg-deb")
	deb, _ := built(t)
	got := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(output(t, "dpkg-deb", "-c", deb)), "\n") {
		f := strings.Fields(l)
		if len(f) < 6 || strings.HasPrefix(f[0], "d") {
			continue
		}
		owner := f[1]
		if owner == "0/0" {
			owner = "root/root"
		}
		got[strings.TrimPrefix(f[5], ".")] = f[0] + " " + owner
	}
	want := map[string]string{
		"/usr/bin/patchagent":                               "-rwxr-xr-x root/root",
		"/usr/share/patchagent/config.yaml":                 "-rw-r--r-- root/root",
		"/lib/systemd/system/patchagent.service":            "-rw-r--r-- root/root",
		"/lib/systemd/system/patchagent-reconcile.service":  "-rw-r--r-- root/root",
		"/usr/share/man/man8/patchagent.8.gz":               "-rw-r--r-- root/root",
		"/usr/share/doc/patchagent/copyright":               "-rw-r--r-- root/root",
		"/usr/share/doc/patchagent/changelog.Debian.gz":     "-rw-r--r-- root/root",
		"/usr/share/lintian/overrides/patchagent":           "-rw-r--r-- root/root",
		"/usr/share/bash-completion/completions/patchagent": "-rw-r--r-- root/root",
		"/usr/share/zsh/vendor-completions/_patchagent":     "-rw-r--r-- root/root",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dpkg-deb -c:\n%v\nwant:\n%v", got, want)
	}
}

func TestDebControl(t *testing.T) {
	need(t, "dpkg-deb")
	deb, _ := built(t)
	want := map[string]string{
		"Package":      "patchagent",
		"Version":      pkgVersion(t) + "-1",
		"Architecture": "amd64",
		"Maintainer":   "patchagent maintainers <maintainers@users.noreply.r-seed-b5fcf875.example>",
		"Depends":      "iptables",
		"Section":      "admin",
		"Priority":     "optional",
	}
	for field, v := range want {
		if got := strings.TrimSpace(output(t, "dpkg-deb", "-f", deb, field)); got != v {
			t.Errorf("%s: %q, want %q", field, got, v)
		}
	}
	if d := output(t, "dpkg-deb", "-f", deb, "Description"); !strings.Contains(d, "AWS-RunPatchBaselineWithHooks") {
		t.Errorf("Description: %q", d)
	}
	ctl := t.TempDir()
	output(t, "dpkg-deb", "-e", deb, ctl)
	// No conffile: postinst creates the config from the template, so an
	// upgrade never asks about it.
	if b, err := os.ReadFile(filepath.Join(ctl, "conffiles")); err == nil && strings.TrimSpace(string(b)) != "" {
		t.Errorf("conffiles: %q, want none", b)
	}
	if l := strings.TrimSpace(output(t, "dpkg-deb", "-f", deb, "License")); l != "" && l != "Apache-2.0" {
		t.Errorf("License: %q", l)
	}
	cp := t.TempDir()
	output(t, "dpkg-deb", "-x", deb, cp)
	if b, err := os.ReadFile(filepath.Join(cp, "usr/share/doc/patchagent/copyright")); err != nil || !strings.Contains(string(b), "\nLicense: Apache-2.0\n") || strings.Contains(string(b), "all rights reserved") {
		t.Errorf("copyright (%v):\n%s", err, b)
	}
	for deb, src := range map[string]string{"postinst": "postinstall.sh", "prerm": "preremove.sh", "postrm": "postremove.sh"} {
		got, _ := os.ReadFile(filepath.Join(ctl, deb))
		want, _ := os.ReadFile(filepath.Join("scripts", src))
		if string(got) != string(want) {
			t.Errorf("%s is not scripts/%s", deb, src)
		}
	}
}

func TestRPM(t *testing.T) {
	need(t, "rpm")
	_, rpm := built(t)
	files := strings.Fields(output(t, "rpm", "-qpl", rpm))
	// No /etc/patchagent/config.yaml: postinst creates it, the operator's,
	// which rpm -e must not rename .rpmsave. The package's own directories
	// are owned, or rpm -e leaves them behind.
	want := []string{
		"/etc/patchagent", "/usr/bin/patchagent",
		"/usr/lib/systemd/system/patchagent-reconcile.service", "/usr/lib/systemd/system/patchagent.service",
		"/usr/share/bash-completion/completions/patchagent",
		"/usr/share/licenses/patchagent", "/usr/share/licenses/patchagent/LICENSE",
		"/usr/share/man/man8/patchagent.8.gz", "/usr/share/patchagent", "/usr/share/patchagent/config.yaml",
		"/usr/share/zsh/site-functions/_patchagent",
	}
	sort.Strings(files)
	if !reflect.DeepEqual(files, want) {
		t.Errorf("rpm -qpl: %q, want %q", files, want)
	}
	if c := strings.TrimSpace(output(t, "rpm", "-qpc", rpm)); c != "" {
		t.Errorf("rpm -qpc: %q, want no config file", c)
	}
	if l := strings.TrimSpace(output(t, "rpm", "-qp", "--qf", "%{LICENSE}", rpm)); l != "Apache-2.0" {
		t.Errorf("rpm License: %q", l)
	}
	modes := output(t, "rpm", "-qp", "--qf", `[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]`, rpm)
	for _, l := range []string{
		" drwxr-xr-x root:root /usr/share/patchagent",
		" drwxr-xr-x root:root /usr/share/licenses/patchagent",
		"l -rw-r--r-- root:root /usr/share/licenses/patchagent/LICENSE",
		" -rwxr-xr-x root:root /usr/bin/patchagent",
		" -rw-r--r-- root:root /usr/lib/systemd/system/patchagent.service",
	} {
		if !strings.Contains(modes, l+"\n") {
			t.Errorf("rpm file list lacks %q:\n%s", l, modes)
		}
	}
	scripts := output(t, "rpm", "-qp", "--scripts", rpm)
	for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "posttrans scriptlet", "systemctl enable patchagent.service", "systemctl try-restart patchagent.service", "systemctl stop patchagent.service", "restored $config from $config.rpmsave"} {
		if !strings.Contains(scripts, s) {
			t.Errorf("rpm --scripts lacks %q", s)
		}
	}
	if v := strings.TrimSpace(output(t, "rpm", "-qp", "--qf", "%{VERSION}-%{RELEASE} %{ARCH} %{REQUIRENAME}", rpm)); !strings.HasPrefix(v, pkgVersion(t)+"-1 x86_64") {
		t.Errorf("rpm version/arch: %q", v)
	}
	output(t, "rpm", "-K", "--nosignature", rpm)
}

// TestLintian: no E: or W: left; every override in lintian-overrides has
// its comment.
func TestLintian(t *testing.T) {
	need(t, "lintian")
	deb, _ := built(t)
	out, err := exec.Command("lintian", "--tag-display-limit", "0", deb).CombinedOutput()
	if err != nil {
		t.Errorf("lintian: %v", err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "E:") || strings.HasPrefix(l, "W:") {
			t.Errorf("lintian: %s", l)
		}
	}
	b, err := os.ReadFile("lintian-overrides")
	if err != nil {
		t.Fatal(err)
	}
	prevComment := false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "patchagent:") && !prevComment {
			t.Errorf("override without a comment above it: %s", l)
		}
		prevComment = strings.HasPrefix(l, "#") || (prevComment && strings.HasPrefix(l, "patchagent:"))
	}
}

// TestShippedConfig: the packaged config fails check-config on app.name
// alone (so the package does not enable the daemon); with app.name set it
// passes; with every commented example uncommented too, the effective
// config is exactly the defaults (the comments tell the truth).
func TestShippedConfig(t *testing.T) {
	built(t)
	bin, err := filepath.Abs(filepath.Join("../dist", runtime.GOARCH, "patchagent"))
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// check-config also checks the node: a pm2 where app.pm2 says (the
	// build host need not have one), added to every variant alike.
	pm2 := filepath.Join(dir, "pm2")
	if err := os.WriteFile(pm2, []byte("#!/bin/sh\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	withPM2 := func(body string) string {
		if strings.Contains(body, "\n  pm2: \"\"\n") { // the example, uncommented
			return strings.Replace(body, "\n  pm2: \"\"\n", "\n  pm2: "+pm2+"\n", 1)
		}
		return strings.Replace(body, "\napp:\n", "\napp:\n  pm2: "+pm2+"\n", 1)
	}
	check := func(name, body string) (string, int) {
		p := filepath.Join(dir, name)
		if name != "shipped.yaml" {
			if body = withPM2(body); !strings.Contains(body, "  pm2: "+pm2+"\n") {
				t.Fatalf("%s: no app: section to name pm2 in", name)
			}
		}
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "check-config", "--config", p).CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	// On success the first line names the file: compare what follows.
	effective := func(out string) string {
		_, rest, _ := strings.Cut(out, "\n")
		return rest
	}
	if out, code := check("shipped.yaml", string(orig)); code != 2 || !strings.Contains(out, "1 problem(s)") || !strings.Contains(out, "app.name: required") {
		t.Errorf("shipped config: exit %d, want 2 with app.name the only problem:\n%s", code, out)
	}
	named := strings.Replace(string(orig), "\n  name: \"\"\n", "\n  name: \"my-app\"\n", 1)
	if named == string(orig) {
		t.Fatal(`config.yaml has no "  name: \"\"" line`)
	}
	if out, code := check("named.yaml", named); code != 0 {
		t.Errorf("with app.name set: exit %d\n%s", code, out)
	}
	setting := regexp.MustCompile(`(?m)^#( *([a-z_0-9]+:( |$)|# ))`)
	full := setting.ReplaceAllString(named, "$1")
	if strings.Count(full, "\n#") > 30 {
		t.Fatalf("too few example lines uncommented:\n%s", full)
	}
	gotFull, code := check("full.yaml", full)
	if code != 0 {
		t.Fatalf("every example uncommented: exit %d\n%s\n%s", code, gotFull, full)
	}
	gotMin, code := check("minimal.yaml", "\napp:\n  name: \"my-app\"\n")
	if code != 0 {
		t.Fatal(gotMin)
	}
	if effective(gotFull) != effective(gotMin) {
		t.Errorf("the examples in config.yaml are not the defaults:\n--- examples\n%s\n--- defaults\n%s", gotFull, gotMin)
	}
}

func TestDistributor(t *testing.T) {
	built(t)
	dir := "../dist/distributor"
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		SchemaVersion string                                             `json:"schemaVersion"`
		Version       string                                             `json:"version"`
		Packages      map[string]map[string]map[string]map[string]string `json:"packages"`
		Files         map[string]map[string]map[string]string            `json:"files"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != "2.0" || !regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`).MatchString(m.Version) {
		t.Errorf("schemaVersion %q, version %q", m.SchemaVersion, m.Version)
	}
	// The platforms with systemd 239 or newer only (distributor's
	// TestManifestServesOnlySystemd239AndNewer has the matching).
	for platform, version := range map[string]string{"debian": "12.*", "ubuntu": "24.*", "amazon": "2023.*", "redhat": "9.*"} {
		for _, arch := range []string{"x86_64", "arm64"} {
			if m.Packages[platform][version][arch]["file"] == "" {
				t.Errorf("no %s package for %s %s", arch, platform, version)
			}
		}
	}
	for _, old := range []struct{ platform, version string }{{"amazon", "2"}, {"amazon", "_any"}, {"ubuntu", "18.*"}, {"centos", "7.*"}, {"redhat", "_any"}} {
		if _, ok := m.Packages[old.platform][old.version]; ok {
			t.Errorf("%s %s is served: its systemd is older than 239", old.platform, old.version)
		}
	}
	for platform, versions := range m.Packages {
		for _, arches := range versions {
			for arch, f := range arches {
				if _, ok := m.Files[f["file"]]; !ok {
					t.Errorf("%s/%s: %s is not in files", platform, arch, f["file"])
				}
			}
		}
	}
	zips, _ := filepath.Glob(filepath.Join(dir, "*.zip"))
	if len(zips) != len(m.Files) {
		t.Errorf("%d zips in %s, manifest lists %d", len(zips), dir, len(m.Files))
	}
	for name, sums := range m.Files {
		p := filepath.Join(dir, name)
		f, err := os.Open(p)
		if err != nil {
			t.Error(err)
			continue
		}
		h := sha256.New()
		io.Copy(h, f)
		f.Close()
		if got := hex.EncodeToString(h.Sum(nil)); got != sums["checksums"]["sha256"] {
			t.Errorf("%s: sha256 %s, manifest says %s", name, got, sums["checksums"]["sha256"])
		}
		zr, err := zip.OpenReader(p)
		if err != nil {
			t.Error(err)
			continue
		}
		var names []string
		for _, zf := range zr.File {
			names = append(names, zf.Name)
			if strings.HasSuffix(zf.Name, ".sh") {
				body, _ := zf.Open()
				tmp := filepath.Join(t.TempDir(), zf.Name)
				out, _ := os.Create(tmp)
				io.Copy(out, body)
				out.Close()
				body.Close()
				if o, err := exec.Command("sh", "-n", tmp).CombinedOutput(); err != nil {
					t.Errorf("%s/%s: sh -n: %v\n%s", name, zf.Name, err, o)
				}
			}
		}
		zr.Close()
		pkg := map[string]string{
			"patchagent-deb-amd64.zip":   "patchagent_*_amd64.deb",
			"patchagent-deb-arm64.zip":   "patchagent_*_arm64.deb",
			"patchagent-rpm-x86_64.zip":  "patchagent-*.x86_64.rpm",
			"patchagent-rpm-aarch64.zip": "patchagent-*.aarch64.rpm",
		}[name]
		if len(names) != 4 || names[0] != "install.sh" || names[1] != "uninstall.sh" || names[2] != "dpkgwait.sh" {
			t.Errorf("%s holds %q", name, names)
		} else if ok, _ := filepath.Match(pkg, names[3]); !ok {
			t.Errorf("%s: package %q, want %s", name, names[3], pkg)
		}
	}
}

// TestArm64Packages: the arm64 deb and the aarch64 rpm exist beside the
// amd64 ones, say their architecture, and hold an aarch64 binary.
func TestArm64Packages(t *testing.T) {
	need(t, "dpkg-deb", "rpm")
	built(t)
	debs, _ := filepath.Glob("../dist/patchagent_*_arm64.deb")
	rpms, _ := filepath.Glob("../dist/patchagent-*.aarch64.rpm")
	if len(debs) != 1 || len(rpms) != 1 {
		t.Fatalf("want one arm64 deb and one aarch64 rpm in dist/, got %q %q", debs, rpms)
	}
	if a := strings.TrimSpace(output(t, "dpkg-deb", "-f", debs[0], "Architecture")); a != "arm64" {
		t.Errorf("deb Architecture %q", a)
	}
	if a := strings.TrimSpace(output(t, "rpm", "-qp", "--qf", "%{ARCH}", rpms[0])); a != "aarch64" {
		t.Errorf("rpm ARCH %q", a)
	}
	dir := t.TempDir()
	output(t, "dpkg-deb", "-x", debs[0], dir)
	f, err := elf.Open(filepath.Join(dir, "usr/bin/patchagent"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != elf.EM_AARCH64 {
		t.Errorf("the arm64 deb's binary is for %s", f.Machine)
	}
}

// TestVersionIsThePackages: the packaged binary prints the package
// version, and the changelog's newest entry is the version's release (a
// build after the tagged release is <release>+<commits>.g<hash>, one
// before it is tagged <release>~git<commits>.g<hash>).
func TestVersionIsThePackages(t *testing.T) {
	built(t)
	v := pkgVersion(t)
	out := output(t, filepath.Join("../dist", runtime.GOARCH, "patchagent"), "version")
	if !strings.HasPrefix(out, "patchagent "+v+" (") {
		t.Errorf("patchagent version: %q, want the package version %s", out, v)
	}
	b, err := os.ReadFile("changelog.yml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^- semver: ([0-9][^\s]*)$`).FindStringSubmatch(string(b))
	if m == nil {
		t.Fatal("changelog.yml has no entry")
	}
	release, _, _ := strings.Cut(m[1], "-")
	if base := strings.FieldsFunc(v, func(r rune) bool { return r == '+' || r == '~' })[0]; strings.TrimSuffix(base, ".dirty") != release {
		t.Errorf("package version %s, changelog's newest entry %s", v, m[1])
	}
}

// TestPackagesReproducible: building the same commit again gives the same
// packages, byte for byte (every mtime is SOURCE_DATE_EPOCH).
func TestPackagesReproducible(t *testing.T) {
	built(t)
	sums := func() map[string]string {
		m := map[string]string{}
		files, _ := filepath.Glob("../dist/patchagent*.[dr][ep][bm]")
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.Sum256(b)
			m[filepath.Base(f)] = hex.EncodeToString(h[:])
		}
		return m
	}
	first := sums()
	if len(first) != 4 {
		t.Fatalf("packages in dist/: %v", first)
	}
	if out, err := exec.Command("make", "-C", "..", "package").CombinedOutput(); err != nil {
		t.Fatalf("make package again: %v\n%s", err, out)
	}
	if again := sums(); !reflect.DeepEqual(first, again) {
		t.Errorf("a second build differs:\n%v\n%v", first, again)
	}
}

// TestSignedPackages: without a key, make package says the packages are
// unsigned; with a throwaway key (gpg) the same nfpm config signs them: the
// rpm's signature checks with rpm -K against a key database of the test's
// own, the deb's debsigs origin signature with debsig-verify against a
// policy and keyring of the test's own (nothing of the host's is used or
// changed), and the unsigned deb fails that check.
func TestSignedPackages(t *testing.T) {
	need(t, "gpg", "debsig-verify", "rpm")
	deb, unsignedRPM := built(t)
	if !strings.Contains(string(buildOut), "the packages are UNSIGNED") {
		t.Errorf("make package without a key does not say the packages are unsigned:\n%s", buildOut)
	}
	dir := t.TempDir()
	gpg := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("gpg", append([]string{"--batch", "--homedir", filepath.Join(dir, "gnupg")}, args...)...)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, stderr)
		}
		return string(out)
	}
	if err := os.Mkdir(filepath.Join(dir, "gnupg"), 0o700); err != nil {
		t.Fatal(err)
	}
	gpg("--passphrase", "", "--quick-gen-key", "patchagent test signer <signer@example.invalid>", "rsa2048", "sign", "never")
	var keyID string
	for _, l := range strings.Split(gpg("--with-colons", "--list-keys"), "\n") {
		if f := strings.Split(l, ":"); f[0] == "pub" && len(f) > 4 {
			keyID = f[4]
		}
	}
	if len(keyID) != 16 {
		t.Fatalf("no key id from gpg (%q)", keyID)
	}
	secret, public := filepath.Join(dir, "signer.asc"), filepath.Join(dir, "signer.pub.asc")
	if err := os.WriteFile(secret, []byte(gpg("--armor", "--export-secret-keys", keyID)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(public, []byte(gpg("--armor", "--export", keyID)), 0o644); err != nil {
		t.Fatal(err)
	}

	out := filepath.Join(dir, "signed")
	if err := os.Mkdir(out, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"deb", "rpm"} {
		root, _ := filepath.Abs("..")
		nfpm := strings.TrimSpace(output(t, "make", "-s", "-C", "..", "nfpm-path"))
		cmd := exec.Command(nfpm, "package", "-f", "packaging/nfpm.yaml", "-p", format, "-t", out)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "GOARCH=amd64", "PKG_VERSION="+pkgVersion(t), "PATCHAGENT_SIGNING_KEY="+secret)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nfpm %s with a key: %v\n%s", format, err, b)
		}
	}
	signedDebs, _ := filepath.Glob(filepath.Join(out, "*.deb"))
	signedRPMs, _ := filepath.Glob(filepath.Join(out, "*.rpm"))
	if len(signedDebs) != 1 || len(signedRPMs) != 1 {
		t.Fatalf("signed packages: %q %q", signedDebs, signedRPMs)
	}

	db := filepath.Join(dir, "rpmdb")
	output(t, "rpm", "--dbpath", db, "--import", public)
	if k := output(t, "rpm", "--dbpath", db, "-K", signedRPMs[0]); !strings.Contains(k, "signatures OK") {
		t.Errorf("rpm -K of the signed rpm: %s", k)
	}
	if k, _ := exec.Command("rpm", "--dbpath", db, "-K", unsignedRPM).CombinedOutput(); strings.Contains(string(k), "signatures") {
		t.Errorf("rpm -K of the unsigned rpm names a signature: %s", k)
	}

	id := strings.ToUpper(keyID)
	policies, keyrings := filepath.Join(dir, "policies", id), filepath.Join(dir, "keyrings", id)
	for _, d := range []string{policies, keyrings} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(keyrings, "debsig.gpg"), []byte(gpg("--export", keyID)), 0o644); err != nil {
		t.Fatal(err)
	}
	policy := `<?xml version="1.0"?>
<!DOCTYPE Policy SYSTEM "https://www.debian.org/debsig/1.0/policy.dtd">
<Policy xmlns="https://www.debian.org/debsig/1.0/">
  <Origin Name="patchagent" id="` + id + `" Description="patchagent test signer"/>
  <Selection><Required Type="origin" File="debsig.gpg" id="` + id + `"/></Selection>
  <Verification MinOptional="0"><Required Type="origin" File="debsig.gpg" id="` + id + `"/></Verification>
</Policy>
`
	if err := os.WriteFile(filepath.Join(policies, "patchagent.pol"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	verify := func(pkg string) ([]byte, error) {
		return exec.Command("debsig-verify", "--policies-dir", filepath.Join(dir, "policies"), "--keyrings-dir", filepath.Join(dir, "keyrings"), pkg).CombinedOutput()
	}
	if b, err := verify(signedDebs[0]); err != nil {
		t.Errorf("debsig-verify of the signed deb: %v\n%s", err, b)
	}
	if b, err := verify(deb); err == nil {
		t.Errorf("debsig-verify accepts the unsigned deb:\n%s", b)
	}
}

// TestRPMPayloadNamesAreRelative: every cpio member of the rpm's payload is
// named ./path, as rpmbuild writes it, so that rpm2cpio | cpio -id unpacks
// into the current directory, not into / (nfpm before v2.48.0 wrote
// absolute names). The names are read from rpm2cpio's output here; nothing
// is unpacked.
func TestRPMPayloadNamesAreRelative(t *testing.T) {
	need(t, "rpm2cpio")
	_, rpm := built(t)
	arm, _ := filepath.Glob("../dist/patchagent-*.aarch64.rpm")
	for _, pkg := range append([]string{rpm}, arm...) {
		payload, err := exec.Command("rpm2cpio", pkg).Output()
		if err != nil {
			t.Fatalf("rpm2cpio %s: %v", pkg, err)
		}
		names, err := cpioNames(payload)
		if err != nil {
			t.Fatalf("%s: %v", pkg, err)
		}
		if len(names) < 5 {
			t.Fatalf("%s: payload names %q", pkg, names)
		}
		for _, n := range names {
			if !strings.HasPrefix(n, "./") {
				t.Errorf("%s: payload member %q is not ./-relative", filepath.Base(pkg), n)
			}
		}
	}
}

// cpioNames lists the member names of a newc ("070701") cpio archive, up
// to its TRAILER!!!.
func cpioNames(b []byte) ([]string, error) {
	var names []string
	hex := func(f []byte) (int, error) {
		n, err := strconv.ParseUint(string(f), 16, 32)
		return int(n), err
	}
	align := func(i int) int { return (i + 3) &^ 3 }
	for i := 0; ; {
		if i+110 > len(b) || string(b[i:i+6]) != "070701" {
			return nil, fmt.Errorf("no newc header at offset %d", i)
		}
		size, err1 := hex(b[i+54 : i+62])
		nameSize, err2 := hex(b[i+94 : i+102])
		if err1 != nil || err2 != nil || nameSize < 1 || i+110+nameSize > len(b) {
			return nil, fmt.Errorf("bad newc header at offset %d", i)
		}
		name := string(b[i+110 : i+110+nameSize-1])
		if name == "TRAILER!!!" {
			return names, nil
		}
		names = append(names, name)
		i = align(align(i+110+nameSize) + size)
	}
}
