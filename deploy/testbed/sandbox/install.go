package sandbox

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// assets are the sample app and the pinned pm2 and verdaccio manifests,
// embedded so the sandbox works from any working directory.
//
//go:embed app/server.js app/package.json pm2/package.json pm2/package-lock.json
//go:embed verdaccio/package.json verdaccio/package-lock.json
var assets embed.FS

const (
	lockHashFile   = ".patchagent-lock.sha256"
	npmTimeout     = 5 * time.Minute
	installLockTTL = npmTimeout + time.Minute
)

// pm2BinIn returns the pm2 CLI path inside an EnsurePM2 install dir.
func pm2BinIn(dir string) string {
	return filepath.Join(dir, "node_modules", "pm2", "bin", "pm2")
}

// VerdaccioBinIn returns the verdaccio CLI path (a node script) inside an
// EnsureVerdaccio install dir.
func VerdaccioBinIn(dir string) string {
	return filepath.Join(dir, "node_modules", "verdaccio", "bin", "verdaccio")
}

// EnsurePM2 installs the pinned pm2 into dir (DefaultPM2Dir when empty) and
// returns the pm2 CLI path (see ensurePinned).
func EnsurePM2(ctx context.Context, dir string) (string, error) {
	if dir == "" {
		dir = DefaultPM2Dir
	}
	return ensurePinned(ctx, "pm2", dir, pm2BinIn(dir))
}

// EnsureVerdaccio installs the pinned verdaccio into dir
// (DefaultVerdaccioDir when empty) and returns its CLI path (see
// ensurePinned). It is only ever installed from the npm registry npm is
// configured with; the sandbox's registry itself has no uplinks.
func EnsureVerdaccio(ctx context.Context, dir string) (string, error) {
	if dir == "" {
		dir = DefaultVerdaccioDir
	}
	return ensurePinned(ctx, "verdaccio", dir, VerdaccioBinIn(dir))
}

// ensurePinned installs the embedded manifest <name>/package.json and its
// committed lock file into dir with `npm ci --omit=dev --no-audit --no-fund`
// and returns bin, which the install must contain. An install whose lock
// file hash matches is reused without running npm. The tree is left
// world-readable so the unprivileged app user can run it. A flock on
// dir/.lock serialises concurrent callers.
func ensurePinned(ctx context.Context, name, dir, bin string) (string, error) {
	if !filepath.IsAbs(dir) {
		return "", fmt.Errorf("installing %s: dir %q is not absolute", name, dir)
	}
	pkg, err := assets.ReadFile(name + "/package.json")
	if err != nil {
		return "", fmt.Errorf("reading embedded %s manifest: %w", name, err)
	}
	lock, err := assets.ReadFile(name + "/package-lock.json")
	if err != nil {
		return "", fmt.Errorf("reading embedded %s lock: %w", name, err)
	}
	sum := sha256.New()
	sum.Write(pkg)
	sum.Write([]byte{0})
	sum.Write(lock)
	want := hex.EncodeToString(sum.Sum(nil))

	if err := mkdirAll0755(dir); err != nil {
		return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
	}
	unlock, err := flockWait(ctx, filepath.Join(dir, ".lock"), installLockTTL)
	if err != nil {
		return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
	}
	defer unlock()

	if got, err := os.ReadFile(filepath.Join(dir, lockHashFile)); err == nil && string(got) == want {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	// Invalidate first: a crash during npm ci must not leave a matching hash.
	if err := os.Remove(filepath.Join(dir, lockHashFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
	}
	for fname, b := range map[string][]byte{"package.json": pkg, "package-lock.json": lock} {
		if err := os.WriteFile(filepath.Join(dir, fname), b, 0o644); err != nil {
			return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
		}
	}
	nctx, cancel := context.WithTimeout(ctx, npmTimeout)
	defer cancel()
	cmd := exec.CommandContext(nctx, "npm", "ci", "--omit=dev", "--no-audit", "--no-fund",
		"--fetch-timeout=60000", "--fetch-retries=2")
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("running npm ci in %s: %w: %s", dir, err, tail(out))
	}
	if err := makeWorldReadable(dir); err != nil {
		return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("installing %s in %s: npm ci left no %s: %w", name, dir, bin, err)
	}
	if err := os.WriteFile(filepath.Join(dir, lockHashFile), []byte(want), 0o644); err != nil {
		return "", fmt.Errorf("installing %s in %s: %w", name, dir, err)
	}
	return bin, nil
}

// mkdirAll0755 creates dir and its missing parents 0755 (umask aside), and
// checks that every ancestor is traversable by other users: the app user must
// reach the files below. It never changes the mode of an existing directory.
func mkdirAll0755(dir string) error {
	var created []string
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Stat(d); errors.Is(err, fs.ErrNotExist) {
			created = append(created, d)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, d := range created {
		if err := os.Chmod(d, 0o755); err != nil {
			return err
		}
	}
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("%s is not traversable by other users (mode %s)", d, st.Mode().Perm())
		}
	}
	return nil
}

// makeWorldReadable adds o+r (and o+x on dirs and executables) below dir.
func makeWorldReadable(dir string) error {
	return filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		m := info.Mode().Perm()
		want := m | 0o004
		if d.IsDir() || m&0o100 != 0 {
			want |= 0o001
		}
		if want != m {
			return os.Chmod(p, want)
		}
		return nil
	})
}

// flockWait takes an exclusive flock on path, polling until ctx ends or
// max passes.
func flockWait(ctx context.Context, path string, max time.Duration) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	deadline := time.Now().Add(max)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("locking %s: still held after %s", path, max)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("locking %s: %w", path, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
