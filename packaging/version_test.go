package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionScriptSortsBuildsAroundTheRelease runs version.sh in a git
// repository of its own through a release's life: built before v0.1.0 is
// tagged, at the tag, after it, dirty, then on the way to 0.2.0 (changelog
// bumped, not tagged) and at v0.2.0. Every version must sort after the one
// before, in dpkg and in rpm: a build made before its release is tagged
// sorts below that release (~), so the release upgrades it instead of
// being refused as a downgrade.
func TestVersionScriptSortsBuildsAroundTheRelease(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git not installed")
	}
	repo := t.TempDir()
	script, err := os.ReadFile("version.sh")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(repo, "packaging"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "packaging", "version.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	git := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-c", "user.name=t", "-c", "user.email=t@example.invalid", "-c", "commit.gpgsign=false", "-c", "tag.gpgsign=false"}, args...)...)
		cmd.Dir = repo
		cmd.Env = append(os.Environ(), "GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1", "HOME="+repo)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	commit := func(release string) string {
		t.Helper()
		changelog := "# changelog\n- semver: " + release + "-1\n  date: 2026-11-26T00:00:00Z\n- semver: 0.0.1-1\n"
		if err := os.WriteFile(filepath.Join(repo, "packaging", "changelog.yml"), []byte(changelog), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(repo, "file"), []byte(git("rev-list", "--all", "--count")), 0o644); err != nil {
			t.Fatal(err)
		}
		git("add", "-A")
		git("commit", "-q", "-m", "c")
		return git("rev-parse", "--short", "HEAD")
	}
	version := func() string {
		t.Helper()
		out, err := exec.Command("sh", filepath.Join(repo, "packaging", "version.sh")).Output()
		if err != nil {
			t.Fatalf("version.sh: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	git("init", "-q")
	var got, want []string
	step := func(w string) {
		t.Helper()
		got, want = append(got, version()), append(want, w)
	}
	h := commit("0.1.0")
	step("0.1.0~git1.g" + h)
	git("tag", "v0.1.0")
	step("0.1.0")
	h = commit("0.1.0")
	step("0.1.0+1.g" + h)
	if err := os.WriteFile(filepath.Join(repo, "file"), []byte("edited"), 0o644); err != nil {
		t.Fatal(err)
	}
	step("0.1.0+1.g" + h + ".dirty")
	h = commit("0.2.0")
	step("0.2.0~git3.g" + h)
	git("tag", "v0.2.0")
	step("0.2.0")
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("step %d: version.sh says %q, want %q", i, got[i], want[i])
		}
	}

	dpkg, errDpkg := exec.LookPath("dpkg")
	rpm, errRPM := exec.LookPath("rpm")
	if errDpkg != nil && errRPM != nil {
		t.Skip("neither dpkg nor rpm installed: the order is not checked")
	}
	for i := 1; i < len(got); i++ {
		older, newer := got[i-1], got[i]
		if errDpkg == nil {
			// As the package versions are: the release -1 appended.
			if err := exec.Command(dpkg, "--compare-versions", older+"-1", "lt", newer+"-1").Run(); err != nil {
				t.Errorf("dpkg: %s-1 does not sort before %s-1", older, newer)
			}
		}
		if errRPM == nil {
			out, err := exec.Command(rpm, "--eval", `%{lua: print(rpm.vercmp("`+older+`", "`+newer+`"))}`).Output()
			if err != nil || strings.TrimSpace(string(out)) != "-1" {
				t.Errorf("rpm: %s does not sort before %s (vercmp %q, %v)", older, newer, out, err)
			}
		}
	}
}
