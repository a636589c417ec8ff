package sandbox

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Package is an npm package version to publish: its package.json holds
// Name, Version, Deps (as "dependencies") and, if Files has "index.js",
// "main": "index.js". Files maps a relative path to its content.
type Package struct {
	Name, Version string
	Deps          map[string]string
	Files         map[string]string // path -> content, e.g. "index.js"
}

// ErrVersionExists is wrapped by Publish when the registry already holds
// that version.
var ErrVersionExists = errors.New("version already published")

var (
	pkgNameRe = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,213}$`)
	semverRe  = regexp.MustCompile(`^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$`)
)

// tarballTime is the mtime npm gives every entry of a packed tarball.
var tarballTime = time.Date(1985, 10, 26, 8, 15, 0, 0, time.UTC)

// Publish publishes p to the registry as `npm publish` does: one PUT of
// the publish document (the version's manifest with dist.tarball, shasum
// and integrity, dist-tags, and the gzip'd tarball, entries under
// "package/", as a base64 attachment), from inside the server netns. The
// "latest" tag moves only forward: publishing 1.0.1 after 2.0.0 leaves
// latest at 2.0.0. Publishing a version the registry holds fails with
// ErrVersionExists. Scoped names are not supported.
func (r *Registry) Publish(ctx context.Context, p Package) error {
	if r.pid == 0 {
		return fmt.Errorf("publishing %s@%s: %s is a hanging registry", p.Name, p.Version, r.URL)
	}
	ctx, cancel := context.WithTimeout(ctx, registryReqTimeout)
	defer cancel()
	doc, err := r.publishDoc(ctx, p)
	if err != nil {
		return fmt.Errorf("publishing %s@%s: %w", p.Name, p.Version, err)
	}
	code, body, err := r.do(ctx, http.MethodPut, "/"+p.Name, doc)
	switch {
	case err != nil:
		return fmt.Errorf("publishing %s@%s to %s: %w", p.Name, p.Version, r.URL, err)
	case code == http.StatusConflict:
		return fmt.Errorf("publishing %s@%s to %s: %w (status %d: %s)", p.Name, p.Version, r.URL, ErrVersionExists, code, tail(body))
	case code/100 != 2:
		return fmt.Errorf("publishing %s@%s to %s: status %d: %s", p.Name, p.Version, r.URL, code, tail(body))
	}
	return nil
}

// publishDoc validates p and builds its publish document. It asks the
// registry for the current "latest" so that the tag only moves forward.
func (r *Registry) publishDoc(ctx context.Context, p Package) ([]byte, error) {
	if !pkgNameRe.MatchString(p.Name) {
		return nil, fmt.Errorf("name %q: want an unscoped npm name matching %s", p.Name, pkgNameRe)
	}
	if _, ok := parseSemver(p.Version); !ok {
		return nil, fmt.Errorf("version %q is not semver", p.Version)
	}
	manifest := map[string]any{
		"name":        p.Name,
		"version":     p.Version,
		"description": "patchagent sandbox test package",
		"license":     "UNLICENSED",
	}
	if _, ok := p.Files["index.js"]; ok {
		manifest["main"] = "index.js"
	}
	if len(p.Deps) > 0 {
		manifest["dependencies"] = p.Deps
	}
	pkgJSON, err := json.MarshalIndent(manifest, "", "  ")
	if err != nil {
		return nil, err
	}
	tgz, err := tarball(pkgJSON, p.Files)
	if err != nil {
		return nil, err
	}
	sha1sum := sha1.Sum(tgz)
	sha512sum := sha512.Sum512(tgz)
	file := p.Name + "-" + p.Version + ".tgz"
	manifest["_id"] = p.Name + "@" + p.Version
	manifest["dist"] = map[string]any{
		"shasum":    hex.EncodeToString(sha1sum[:]),
		"integrity": "sha512-" + base64.StdEncoding.EncodeToString(sha512sum[:]),
		"tarball":   r.URL + "/" + p.Name + "/-/" + file,
	}

	latest := p.Version
	code, body, err := r.do(ctx, http.MethodGet, "/"+p.Name, nil)
	switch {
	case err != nil:
		return nil, fmt.Errorf("getting the current dist-tags: %w", err)
	case code == http.StatusOK:
		var cur struct {
			DistTags map[string]string `json:"dist-tags"`
		}
		if err := json.Unmarshal(body, &cur); err != nil {
			return nil, fmt.Errorf("decoding the current packument: %w", err)
		}
		if l := cur.DistTags["latest"]; l != "" && compareSemver(l, p.Version) > 0 {
			latest = l
		}
	case code != http.StatusNotFound:
		return nil, fmt.Errorf("getting the current dist-tags: status %d: %s", code, tail(body))
	}
	return json.Marshal(map[string]any{
		"_id":         p.Name,
		"name":        p.Name,
		"description": manifest["description"],
		"dist-tags":   map[string]string{"latest": latest},
		"versions":    map[string]any{p.Version: manifest},
		"readme":      "",
		"_attachments": map[string]any{file: map[string]any{
			"content_type": "application/octet-stream",
			"data":         base64.StdEncoding.EncodeToString(tgz),
			"length":       len(tgz),
		}},
	})
}

// tarball returns a gzip'd tar of package.json and files, every entry
// under "package/", in path order, as `npm pack` lays it out.
func tarball(pkgJSON []byte, files map[string]string) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	add := func(name string, b []byte) error {
		h := &tar.Header{Name: "package/" + name, Mode: 0o644, Size: int64(len(b)), ModTime: tarballTime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(h); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	if err := add("package.json", pkgJSON); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if c := path.Clean(name); c != name || name == "." || path.IsAbs(name) || strings.HasPrefix(name, "../") || name == ".." {
			return nil, fmt.Errorf("file %q: want a clean relative path", name)
		}
		if name == "package.json" {
			return nil, errors.New(`file "package.json": it is generated from Name, Version and Deps`)
		}
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if err := add(name, []byte(files[name])); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// semver is a parsed version: major, minor, patch and the prerelease
// identifiers.
type semver struct {
	nums [3]uint64
	pre  []string
}

func parseSemver(v string) (semver, bool) {
	m := semverRe.FindStringSubmatch(v)
	if m == nil {
		return semver{}, false
	}
	var s semver
	for i := range 3 {
		n, err := strconv.ParseUint(m[i+1], 10, 64)
		if err != nil {
			return semver{}, false
		}
		s.nums[i] = n
	}
	if m[4] != "" {
		s.pre = strings.Split(m[4], ".")
	}
	return s, true
}

// compareSemver orders two versions by semver precedence (an unparsable one
// sorts first).
func compareSemver(a, b string) int {
	x, okA := parseSemver(a)
	y, okB := parseSemver(b)
	switch {
	case !okA || !okB:
		return boolCmp(okA, okB)
	}
	for i := range 3 {
		if c := cmpUint(x.nums[i], y.nums[i]); c != 0 {
			return c
		}
	}
	switch {
	case len(x.pre) == 0 || len(y.pre) == 0:
		return -boolCmp(len(x.pre) > 0, len(y.pre) > 0) // a prerelease sorts first
	}
	for i := 0; i < len(x.pre) && i < len(y.pre); i++ {
		nx, errX := strconv.ParseUint(x.pre[i], 10, 64)
		ny, errY := strconv.ParseUint(y.pre[i], 10, 64)
		var c int
		switch {
		case errX == nil && errY == nil:
			c = cmpUint(nx, ny)
		case errX == nil || errY == nil:
			c = -boolCmp(errX == nil, errY == nil) // numeric sorts first
		default:
			c = strings.Compare(x.pre[i], y.pre[i])
		}
		if c != 0 {
			return c
		}
	}
	return cmpUint(uint64(len(x.pre)), uint64(len(y.pre)))
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func boolCmp(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// benchPublishers bounds PublishBench's concurrent publishes.
const benchPublishers = 8

// PublishBench publishes bench-pkg-0 … bench-pkg-<count-1>, each at every
// one of versions (in that order), each version with an index.js (exporting
// its name and version) and a data.bin of bytesEach random, incompressible
// bytes. Up to 8 packages are published at once. It returns the
// dependencies to install them, {"bench-pkg-0": "^<versions[0]>", …}. With
// 300 packages of ~330 KB, node_modules holds ~100 MB.
func (r *Registry) PublishBench(ctx context.Context, count int, bytesEach int, versions ...string) (map[string]string, error) {
	if count <= 0 || bytesEach < 0 || len(versions) == 0 {
		return nil, fmt.Errorf("publishing bench packages: want count > 0, bytesEach ≥ 0 and a version (got %d, %d, %v)", count, bytesEach, versions)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	deps := make(map[string]string, count)
	for i := range count {
		deps[benchName(i)] = "^" + versions[0]
	}
	jobs := make(chan int)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	for range min(benchPublishers, count) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			data := make([]byte, bytesEach)
			for i := range jobs {
				for _, v := range versions {
					_, _ = rand.Read(data) // never fails
					err := r.Publish(ctx, Package{Name: benchName(i), Version: v, Files: map[string]string{
						"index.js": fmt.Sprintf("'use strict';\nmodule.exports = { name: %q, version: %q };\n", benchName(i), v),
						"data.bin": string(data),
					}})
					if err != nil {
						mu.Lock()
						if first == nil {
							first = err
						}
						mu.Unlock()
						cancel()
						return
					}
				}
			}
		}()
	}
feed:
	for i := range count {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if first == nil && ctx.Err() != nil {
		first = ctx.Err()
	}
	if first != nil {
		return nil, fmt.Errorf("publishing bench packages: %w", first)
	}
	return deps, nil
}

func benchName(i int) string { return "bench-pkg-" + strconv.Itoa(i) }
