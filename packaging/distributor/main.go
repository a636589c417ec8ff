// Command distributor builds the SSM Distributor package of patchagent from
// the deb and rpm that `make package` left in dist/: one zip per package
// format and architecture, each holding install.sh, uninstall.sh (and dpkgwait.sh) and the
// package, and manifest.json (schemaVersion 2.0) mapping platforms to the
// zips with their sha256. Publish the directory with
//
//	aws s3 cp --recursive dist/distributor s3://BUCKET/patchagent/
//	aws ssm create-document --name patchagent --document-type Package \
//	  --content file://dist/distributor/manifest.json \
//	  --attachments Key=SourceUrl,Values=s3://BUCKET/patchagent \
//	  --version-name VERSION
//
// Usage: go run ./packaging/distributor -dist dist -out dist/distributor -version VERSION
package main

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"
)

//go:embed install.sh
var installSh []byte

//go:embed uninstall.sh
var uninstallSh []byte

//go:embed dpkgwait.sh
var dpkgwaitSh []byte

// A payload is one zip: the package matched by glob in the dist directory,
// served to each platform version listed for arch (Distributor's x86_64,
// 386 or arm64).
type payload struct {
	zip, glob, arch string
	platforms       map[string][]string
}

// The platforms served: those whose systemd is 239 or newer, the oldest
// the units work with (older ones do not know @system-service; see
// scripts/postinstall.sh). The keys are the platform names the SSM agent
// reports (os-release ID; rhel is redhat, ol oracle, amzn amazon), the
// versions its VERSION_ID, matched exactly or, for "N.*", by its leading
// components ("8.*" matches 8 and 8.10). Left out on purpose, all older
// than 239 and past their end of life: Amazon Linux 2 (219), CentOS 7 and
// RHEL/Oracle 7 (219), Ubuntu 18.04 (237), Debian 9 (232). A newer release
// needs its version added here.
var (
	debPlatforms = map[string][]string{
		"debian": {"10.*", "11.*", "12.*", "13.*"},
		"ubuntu": {"20.*", "21.*", "22.*", "23.*", "24.*", "25.*", "26.*"},
	}
	rpmPlatforms = map[string][]string{
		"amazon":    {"2023.*"},
		"redhat":    {"8.*", "9.*", "10.*"},
		"rocky":     {"8.*", "9.*", "10.*"},
		"almalinux": {"8.*", "9.*", "10.*"},
		"oracle":    {"8.*", "9.*", "10.*"},
		"centos":    {"8.*", "9.*", "10.*"},
	}
)

var payloads = []payload{
	{"patchagent-deb-amd64.zip", "patchagent_*_amd64.deb", "x86_64", debPlatforms},
	{"patchagent-deb-arm64.zip", "patchagent_*_arm64.deb", "arm64", debPlatforms},
	{"patchagent-rpm-x86_64.zip", "patchagent-*.x86_64.rpm", "x86_64", rpmPlatforms},
	{"patchagent-rpm-aarch64.zip", "patchagent-*.aarch64.rpm", "arm64", rpmPlatforms},
}

// Manifest is the Distributor manifest.json.
type Manifest struct {
	SchemaVersion string                                             `json:"schemaVersion"`
	Version       string                                             `json:"version"`
	Publisher     string                                             `json:"publisher"`
	Packages      map[string]map[string]map[string]map[string]string `json:"packages"`
	Files         map[string]map[string]map[string]string            `json:"files"`
}

// versionRE is what Distributor accepts as a package version.
var versionRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,128}$`)

// DistributorVersion maps a package version (which may hold "+", "~") onto
// Distributor's character set.
func DistributorVersion(v string) string {
	return regexp.MustCompile(`[^A-Za-z0-9_.-]`).ReplaceAllString(v, "-")
}

func main() {
	dist := flag.String("dist", "dist", "directory holding the .deb and .rpm")
	out := flag.String("out", "dist/distributor", "output directory")
	version := flag.String("version", "", "package version (packaging/version.sh)")
	flag.Parse()
	if err := build(*dist, *out, *version); err != nil {
		fmt.Fprintf(os.Stderr, "distributor: %v\n", err)
		os.Exit(1)
	}
}

func build(dist, out, version string) error {
	v := DistributorVersion(version)
	if !versionRE.MatchString(v) {
		return fmt.Errorf("version %q: want 1-128 characters of [A-Za-z0-9_.-]", version)
	}
	if err := os.RemoveAll(out); err != nil {
		return err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	m := Manifest{
		SchemaVersion: "2.0",
		Version:       v,
		Publisher:     "patchagent",
		Packages:      map[string]map[string]map[string]map[string]string{},
		Files:         map[string]map[string]map[string]string{},
	}
	for _, p := range payloads {
		matches, err := filepath.Glob(filepath.Join(dist, p.glob))
		if err != nil {
			return err
		}
		if len(matches) != 1 {
			return fmt.Errorf("want exactly one %s in %s (run make package), found %d", p.glob, dist, len(matches))
		}
		sum, err := writeZip(filepath.Join(out, p.zip), matches[0])
		if err != nil {
			return err
		}
		m.Files[p.zip] = map[string]map[string]string{"checksums": {"sha256": sum}}
		for platform, versions := range p.platforms {
			if m.Packages[platform] == nil {
				m.Packages[platform] = map[string]map[string]map[string]string{}
			}
			for _, v := range versions {
				if m.Packages[platform][v] == nil {
					m.Packages[platform][v] = map[string]map[string]string{}
				}
				m.Packages[platform][v][p.arch] = map[string]string{"file": p.zip}
			}
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	names := make([]string, 0, len(m.Files))
	for n := range m.Files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Printf("%s  %s\n", m.Files[n]["checksums"]["sha256"], filepath.Join(out, n))
	}
	fmt.Printf("%s (version %s)\n", filepath.Join(out, "manifest.json"), v)
	return nil
}

// writeZip writes install.sh, uninstall.sh, the dpkgwait.sh they source
// and the package at the zip's root and returns the zip's sha256.
func writeZip(path, pkg string) (string, error) {
	f, err := os.Create(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	zw := zip.NewWriter(io.MultiWriter(f, h))
	// A fixed time keeps the zip, and its checksum, reproducible.
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	add := func(name string, mode os.FileMode, r io.Reader) error {
		hdr := &zip.FileHeader{Name: name, Method: zip.Deflate, Modified: mtime}
		hdr.SetMode(mode)
		w, err := zw.CreateHeader(hdr)
		if err != nil {
			return err
		}
		_, err = io.Copy(w, r)
		return err
	}
	for _, s := range []struct {
		name string
		body []byte
		mode os.FileMode
	}{{"install.sh", installSh, 0o755}, {"uninstall.sh", uninstallSh, 0o755}, {"dpkgwait.sh", dpkgwaitSh, 0o644}} {
		if err := add(s.name, s.mode, bytes.NewReader(s.body)); err != nil {
			return "", err
		}
	}
	pf, err := os.Open(pkg)
	if err != nil {
		return "", err
	}
	defer pf.Close()
	if err := add(filepath.Base(pkg), 0o644, pf); err != nil {
		return "", err
	}
	if err := zw.Close(); err != nil {
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
