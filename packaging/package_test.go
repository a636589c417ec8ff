//go:build integration

package packaging

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
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
		"/etc/patchagent/config.yaml":                       "-rw------- root/root",
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
	if b, _ := os.ReadFile(filepath.Join(ctl, "conffiles")); strings.TrimSpace(string(b)) != "/etc/patchagent/config.yaml" {
		t.Errorf("conffiles: %q", b)
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
	want := []string{
		"/etc/patchagent", "/etc/patchagent/config.yaml", "/usr/bin/patchagent",
		"/usr/lib/systemd/system/patchagent-reconcile.service", "/usr/lib/systemd/system/patchagent.service",
		"/usr/share/bash-completion/completions/patchagent", "/usr/share/man/man8/patchagent.8.gz",
		"/usr/share/zsh/site-functions/_patchagent",
	}
	sort.Strings(files)
	if !reflect.DeepEqual(files, want) {
		t.Errorf("rpm -qpl: %q, want %q", files, want)
	}
	if c := strings.TrimSpace(output(t, "rpm", "-qpc", rpm)); c != "/etc/patchagent/config.yaml" {
		t.Errorf("rpm -qpc: %q", c)
	}
	modes := output(t, "rpm", "-qp", "--qf", `[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]`, rpm)
	for _, l := range []string{
		"cn -rw------- root:root /etc/patchagent/config.yaml",
		" -rwxr-xr-x root:root /usr/bin/patchagent",
		" -rw-r--r-- root:root /usr/lib/systemd/system/patchagent.service",
	} {
		if !strings.Contains(modes, l+"\n") {
			t.Errorf("rpm file list lacks %q:\n%s", l, modes)
		}
	}
	scripts := output(t, "rpm", "-qp", "--scripts", rpm)
	for _, s := range []string{"postinstall scriptlet", "preuninstall scriptlet", "postuninstall scriptlet", "systemctl enable patchagent.service", "systemctl try-restart patchagent.service", "systemctl stop patchagent.service"} {
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
	bin, err := filepath.Abs("../dist/patchagent")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	check := func(name, body string) (string, int) {
		p := filepath.Join(dir, name)
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
	gotMin, code := check("minimal.yaml", "app:\n  name: \"my-app\"\n")
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
	for _, platform := range []string{"debian", "ubuntu", "amazon", "redhat"} {
		if m.Packages[platform]["_any"]["x86_64"]["file"] == "" {
			t.Errorf("no x86_64 package for %s", platform)
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
		pkg := "patchagent_*_amd64.deb"
		if strings.Contains(name, "rpm") {
			pkg = "patchagent-*.x86_64.rpm"
		}
		if len(names) != 3 || names[0] != "install.sh" || names[1] != "uninstall.sh" {
			t.Errorf("%s holds %q", name, names)
		} else if ok, _ := filepath.Match(pkg, names[2]); !ok {
			t.Errorf("%s: package %q, want %s", name, names[2], pkg)
		}
	}
}
