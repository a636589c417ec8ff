package sandbox

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// npmRunTimeout bounds one npm command run by NPM.
const npmRunTimeout = 5 * time.Minute

// npmBin is the npm CLI next to NodeBin ("" if node is not in PATH).
func (n *Node) npmBin() string {
	if n.NodeBin == "" {
		return ""
	}
	return filepath.Join(filepath.Dir(n.NodeBin), "npm")
}

// NPM runs npm with args (argv, no shell) in AppDir as the app user inside
// the server netns, with only HOME and PATH set, bounded by ctx and 5
// minutes, and returns its stdout. On ctx's end it kills npm's process
// group.
func (n *Node) NPM(ctx context.Context, args ...string) ([]byte, error) {
	what := "npm " + strings.Join(args, " ")
	if err := n.canRunAsUser(); err != nil {
		return nil, fmt.Errorf("running %s: %w", what, err)
	}
	return n.runAsUser(ctx, npmRunTimeout, what, n.npmBin(), n.AppDir, n.userEnv(), args)
}

// npmrc is the app's .npmrc: the sandbox registry, and nothing that would
// reach for the public registry (audit, fund, update notifier).
const npmrc = "registry=%s\naudit=false\nfund=false\nupdate-notifier=false\n"

// SetupNPMApp turns the sample app into an npm app, from scratch: it
// removes AppDir's node_modules and package-lock.json, writes its
// package.json (the sample app's, with deps as "dependencies") and an
// .npmrc pointing at registryURL, both owned by the app user; runs `npm
// install --no-audit --no-fund --prefer-online` (NPM) so that
// package-lock.json and node_modules exist and belong to the user; then relaunches the app under
// pm2 (SetAppEnv with the current env, or StartApp if the daemon is down),
// which requires every dependency at start, and waits until it is healthy.
// Note that a later Setup restores the embedded package.json (no deps).
func (n *Node) SetupNPMApp(ctx context.Context, registryURL string, deps map[string]string) error {
	u, err := url.Parse(registryURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("setting up the npm app: registry URL %q is not an absolute http(s) URL", registryURL)
	}
	if err := n.canRunAsUser(); err != nil {
		return fmt.Errorf("setting up the npm app: %w", err)
	}
	if deps == nil {
		deps = map[string]string{}
	}
	for _, name := range []string{"node_modules", "package-lock.json"} {
		if err := os.RemoveAll(filepath.Join(n.AppDir, name)); err != nil {
			return fmt.Errorf("setting up the npm app: %w", err)
		}
	}
	pkg, err := json.MarshalIndent(map[string]any{
		"name":         "patchagent-sample-app",
		"version":      "1.0.0",
		"private":      true,
		"description":  "Sample HTTP app for the patchagent sandbox, with npm dependencies.",
		"license":      "UNLICENSED",
		"main":         "server.js",
		"scripts":      map[string]string{"start": "node server.js"},
		"dependencies": deps,
	}, "", "  ")
	if err != nil {
		return fmt.Errorf("setting up the npm app: %w", err)
	}
	for name, b := range map[string][]byte{
		"package.json": append(pkg, '\n'),
		".npmrc":       fmt.Appendf(nil, npmrc, registryURL),
	} {
		if err := writeFileAtomic(filepath.Join(n.AppDir, name), b, 0o644, int(n.UID), int(n.GID)); err != nil {
			return fmt.Errorf("setting up the npm app: writing %s: %w", name, err)
		}
	}
	if _, err := n.NPM(ctx, "install", "--no-audit", "--no-fund", "--prefer-online",
		"--fetch-timeout=10000", "--fetch-retries=1"); err != nil {
		return fmt.Errorf("setting up the npm app: %w", err)
	}
	if n.DaemonPID() == 0 {
		if err := n.StartApp(ctx); err != nil {
			return fmt.Errorf("setting up the npm app: %w", err)
		}
		return nil
	}
	if err := n.SetAppEnv(ctx, n.Opts.Env); err != nil {
		return fmt.Errorf("setting up the npm app: %w", err)
	}
	if err := n.WaitHealthy(ctx, healthTimeout); err != nil {
		return fmt.Errorf("setting up the npm app: %w", err)
	}
	return nil
}

// InstalledVersion returns the version in AppDir/node_modules/<name>/package.json.
func (n *Node) InstalledVersion(name string) (string, error) {
	if name == "" || strings.Contains(name, "..") || strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("reading the installed version: bad package name %q", name)
	}
	p := filepath.Join(n.AppDir, "node_modules", name, "package.json")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("reading the installed version of %s: %w", name, err)
	}
	var m struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(b, &m); err != nil || m.Version == "" {
		return "", fmt.Errorf("reading the installed version of %s: no version in %s (%v)", name, p, err)
	}
	return m.Version, nil
}

// TreeHash returns a sha256 (hex) over every entry under dir, dir itself
// included, in path order: its relative path, type, mode bits (permissions,
// setuid/setgid/sticky), uid, gid, and for a regular file its size and
// content, for a symlink its target. Modification times and directory sizes
// are left out. Two equal hashes mean the tree is identical in content and
// ownership.
func TreeHash(dir string) (string, error) {
	h := sha256.New()
	err := walkLstat(dir, func(rel, p string, st *syscall.Stat_t) error {
		typ := fileType(st.Mode)
		fmt.Fprintf(h, "%q %c %04o %d %d", rel, typ, st.Mode&0o7777, st.Uid, st.Gid)
		switch typ {
		case 'f':
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			fmt.Fprintf(h, " %d ", st.Size)
			n, err := io.Copy(h, f)
			if err != nil {
				return err
			}
			if n != st.Size {
				return fmt.Errorf("%s changed size while hashing", p)
			}
		case 'l':
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(h, " %q", target)
		}
		h.Write([]byte{'\n'})
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("hashing tree %s: %w", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// TreeOwners counts the entries under dir, dir itself included, by owner uid.
func TreeOwners(dir string) (map[uint32]int, error) {
	out := map[uint32]int{}
	err := walkLstat(dir, func(_, _ string, st *syscall.Stat_t) error {
		out[st.Uid]++
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing owners under %s: %w", dir, err)
	}
	return out, nil
}

// walkLstat calls fn for dir and every entry below it, in lexical path
// order, without following symlinks; rel is the path relative to dir.
func walkLstat(dir string, fn func(rel, p string, st *syscall.Stat_t) error) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			return err
		}
		return fn(rel, p, &st)
	})
}

// fileType is a one-letter type of a stat mode: f(ile), d(ir), l(ink),
// p(ipe), s(ocket), c(har), b(lock), ? otherwise.
func fileType(mode uint32) byte {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return 'f'
	case syscall.S_IFDIR:
		return 'd'
	case syscall.S_IFLNK:
		return 'l'
	case syscall.S_IFIFO:
		return 'p'
	case syscall.S_IFSOCK:
		return 's'
	case syscall.S_IFCHR:
		return 'c'
	case syscall.S_IFBLK:
		return 'b'
	}
	return '?'
}
