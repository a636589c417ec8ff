package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// agentMatchVersion picks the manifest's version key for a platform
// version as the SSM agent does (configurepackage's
// matchPackageSelectorVersion): the version itself, else the longest "N.*"
// whose components lead it, else _any or *.
func agentMatchVersion(version string, keys map[string]map[string]map[string]string) (string, bool) {
	if _, ok := keys[version]; ok {
		return version, true
	}
	best, bestLen := "", 0
	for k := range keys {
		prefix, ok := strings.CutSuffix(k, ".*")
		if !ok {
			continue
		}
		want, got := strings.Split(prefix, "."), strings.Split(version, ".")
		i := 0
		for ; i < len(want) && i < len(got) && want[i] == got[i]; i++ {
		}
		if i == len(want) && i > bestLen {
			best, bestLen = k, i
		}
	}
	if best != "" {
		return best, true
	}
	for _, k := range []string{"_any", "*"} {
		if _, ok := keys[k]; ok {
			return k, true
		}
	}
	return "", false
}

// TestManifestServesOnlySystemd239AndNewer: the manifest gives a package
// to the platforms whose systemd is 239 or newer (the units'
// @system-service), each architecture the right format, and nothing to
// the older ones, as the SSM agent matches the node's os-release.
func TestManifestServesOnlySystemd239AndNewer(t *testing.T) {
	dist, out := t.TempDir(), filepath.Join(t.TempDir(), "distributor")
	for _, f := range []string{
		"patchagent_1.0.0-1_amd64.deb", "patchagent_1.0.0-1_arm64.deb",
		"patchagent-1.0.0-1.x86_64.rpm", "patchagent-1.0.0-1.aarch64.rpm",
	} {
		if err := os.WriteFile(filepath.Join(dist, f), []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := build(dist, out, "1.0.0~git3.gabc"); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(out, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.Version != "1.0.0-git3.gabc" {
		t.Errorf("version %q", m.Version)
	}
	// platform, VERSION_ID as the agent reports it, the release's systemd.
	for _, tc := range []struct {
		platform, version string
		systemd           int
		format            string
	}{
		{"amazon", "2", 219, ""},
		{"amazon", "2023", 252, "rpm"},
		{"centos", "7", 219, ""},
		{"centos", "8", 239, "rpm"},
		{"centos", "9", 252, "rpm"},
		{"redhat", "7.9", 219, ""},
		{"redhat", "8.10", 239, "rpm"},
		{"redhat", "9.6", 252, "rpm"},
		{"redhat", "10.0", 257, "rpm"},
		{"rocky", "8.10", 239, "rpm"},
		{"almalinux", "9.6", 252, "rpm"},
		{"oracle", "7.9", 219, ""},
		{"oracle", "8.10", 239, "rpm"},
		{"ubuntu", "16.04", 229, ""},
		{"ubuntu", "18.04", 237, ""},
		{"ubuntu", "20.04", 245, "deb"},
		{"ubuntu", "22.04", 249, "deb"},
		{"ubuntu", "24.04", 255, "deb"},
		{"ubuntu", "26.04", 259, "deb"},
		{"debian", "9", 232, ""},
		{"debian", "10", 241, "deb"},
		{"debian", "12", 252, "deb"},
		{"debian", "13", 257, "deb"},
	} {
		versions, ok := m.Packages[tc.platform]
		if !ok {
			versions, ok = m.Packages["_any"]
		}
		for arch, suffix := range map[string]string{"x86_64": map[string]string{"deb": "deb-amd64", "rpm": "rpm-x86_64"}[tc.format], "arm64": map[string]string{"deb": "deb-arm64", "rpm": "rpm-aarch64"}[tc.format]} {
			var file string
			if ok {
				if v, found := agentMatchVersion(tc.version, versions); found {
					file = versions[v][arch]["file"]
				}
			}
			if (tc.systemd >= 239) != (file != "") {
				t.Errorf("%s %s (systemd %d), %s: served %q", tc.platform, tc.version, tc.systemd, arch, file)
			}
			if file != "" && file != "patchagent-"+suffix+".zip" {
				t.Errorf("%s %s, %s: served %s, want the %s zip", tc.platform, tc.version, arch, file, suffix)
			}
		}
	}
	for platform, versions := range m.Packages {
		for v := range versions {
			if v == "_any" || v == "*" {
				t.Errorf("%s: %s serves every version, old systemd included", platform, v)
			}
		}
	}
}
