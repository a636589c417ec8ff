//go:build integration

package hooks

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// The app user is hostile (dirfd.go): these tests run a live attacker as an
// unprivileged user (nobody) against the snapshot and restore root does in
// that user's app dir, the way the audit of issue 11 did: a tight loop of
// renameat2(RENAME_EXCHANGE) flips between a name root works on and a
// decoy. After each race: the root-owned victim tree outside the app dir is
// unchanged (mode, owner, content, listing), nothing the user can read
// holds the victim's secret, and no hardlink to a victim file is left where
// the user can reach it. A Restore or TakeSnapshot may fail under attack
// (fail closed), but one that succeeds must have done its work exactly.

const (
	attackerEnv = "PATCHAGENT_TEST_ATTACKER"
	attackUID   = 65534 // nobody
	attackRaces = 20
	// snapshotsPerRace: a race on TakeSnapshot tries this many (each takes
	// about a millisecond on the test's tree).
	snapshotsPerRace = 10
)

// TestAttackerProcess is not a test: it is the attacker, run by the tests
// below as a child process with the app user's credentials.
//
//	flip A B: exchange A and B (renameat2 RENAME_EXCHANGE) in a tight loop
//	scan DIR SECRET: print every file under DIR this user can read that
//	holds SECRET
func TestAttackerProcess(t *testing.T) {
	args := strings.Split(os.Getenv(attackerEnv), "\x1f")
	if len(args) < 2 {
		t.Skip("the attacker of the snapshot attack tests")
	}
	switch args[0] {
	case "flip":
		deadline := time.Now().Add(time.Minute)
		os.WriteFile(args[3], nil, 0o644) // ready
		for i := 0; time.Now().Before(deadline); i++ {
			unix.Renameat2(unix.AT_FDCWD, args[1], unix.AT_FDCWD, args[2], unix.RENAME_EXCHANGE)
		}
	case "scan":
		filepath.WalkDir(args[1], func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return nil
			}
			if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(args[2])) {
				fmt.Println(p)
			}
			return nil
		})
	}
	os.Exit(0)
}

// attackEnv is a test binary the attacker can run, an app dir it owns and a
// root-owned victim tree, all where it can reach them.
type attackEnv struct {
	bin, base, app, victim, secret string
	run                            string // the attacker's own dir, for its decoys
}

func newAttackEnv(t *testing.T) *attackEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (the attacker runs as nobody)")
	}
	base, err := os.MkdirTemp("", "pa-attack-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "attacker")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	out, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	in.Close()
	out.Close()

	if err := os.Mkdir(filepath.Join(base, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(filepath.Join(base, "run"), attackUID, attackUID); err != nil {
		t.Fatal(err)
	}
	app := filepath.Join(base, "app")
	if err := os.Rename(buildApp(t, attackUID, attackUID), app); err != nil {
		t.Fatal(err)
	}
	// A package dir with the set-uid bit (the user may set it on its own
	// directory): a chmod redirected to a root file would make it set-uid.
	if err := os.Chmod(filepath.Join(app, "node_modules/a"), 0o4755); err != nil {
		t.Fatal(err)
	}

	b := make([]byte, 16)
	rand.Read(b)
	secret := "ROOT-ONLY-" + hex.EncodeToString(b)
	victim := filepath.Join(base, "victim")
	write(t, filepath.Join(victim, "secret"), secret+"\n", 0o600)
	write(t, filepath.Join(victim, "tool"), "#!/bin/sh\n", 0o755)
	write(t, filepath.Join(victim, "sub/key"), secret+"\n", 0o600)
	if err := os.Chmod(victim, 0o755); err != nil {
		t.Fatal(err)
	}
	return &attackEnv{bin: bin, base: base, app: app, victim: victim, secret: secret, run: filepath.Join(base, "run")}
}

// attack starts the attacker flipping a and b and returns a func that
// stops it (by its pid).
func (e *attackEnv) attack(t *testing.T, a, b string) (stop func()) {
	t.Helper()
	ready := filepath.Join(e.run, "ready-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	cmd := e.asUser("flip", a, b, ready)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the attacker did not start")
		}
	}
	return func() {
		cmd.Process.Kill()
		cmd.Wait()
		os.Remove(ready)
	}
}

func (e *attackEnv) asUser(args ...string) *exec.Cmd {
	cmd := exec.Command(e.bin, "-test.run=^TestAttackerProcess$")
	cmd.Env = []string{attackerEnv + "=" + strings.Join(args, "\x1f")}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: attackUID, Gid: attackUID}}
	return cmd
}

// check fails the test if the victim changed, if the user can read the
// secret anywhere in the app dir, or if a victim file is hardlinked there.
func (e *attackEnv) check(t *testing.T, race int, victim map[string]string) {
	t.Helper()
	if d := cmp.Diff(victim, treeHash(t, e.victim)); d != "" {
		t.Fatalf("race %d: the root-owned victim outside the app dir changed (-before +after):\n%s", race, d)
	}
	out, err := e.asUser("scan", e.app, e.secret).Output()
	if err != nil {
		t.Fatalf("race %d: scan: %v", race, err)
	}
	if s := strings.TrimSpace(string(out)); s != "" {
		t.Fatalf("race %d: the app user can read the root-only secret in:\n%s", race, s)
	}
	victimInodes := map[uint64]string{}
	filepath.WalkDir(e.victim, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			victimInodes[inode(t, p)] = p
		}
		return nil
	})
	filepath.WalkDir(e.app, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if v, ok := victimInodes[inode(t, p)]; ok {
				t.Errorf("race %d: %s is a hardlink to the victim's %s", race, p, v)
			}
		}
		return nil
	})
}

// TestSnapshotAttackRestoreStaging: S1. While root restores, the user
// flips the directory root builds the restored tree in for a decoy: a
// symlink to the victim dir, or a dir of the user's whose package dirs are
// symlinks to root-owned files (a redirected chmod of the set-uid package
// dir would make them set-uid root).
func TestSnapshotAttackRestoreStaging(t *testing.T) {
	for _, decoy := range []string{"symlink-to-victim", "dir-of-symlinks"} {
		t.Run(decoy, func(t *testing.T) {
			e := newAttackEnv(t)
			victim := treeHash(t, e.victim)
			orig := treeHash(t, e.app, "server.js")
			s, _, err := TakeSnapshot(e.app, filepath.Join(t.TempDir(), "s"))
			if err != nil {
				t.Fatal(err)
			}
			bait := filepath.Join(e.base, "bait")
			switch decoy {
			case "symlink-to-victim":
				if err := os.Symlink(e.victim, bait); err != nil {
					t.Fatal(err)
				}
			case "dir-of-symlinks":
				for _, rel := range []string{"a", "node_modules/a"} {
					p := filepath.Join(bait, rel)
					os.MkdirAll(filepath.Dir(p), 0o755)
					if err := os.Symlink(filepath.Join(e.victim, "tool"), p); err != nil && !os.IsExist(err) {
						t.Fatal(err)
					}
				}
				if err := chownTree(bait, attackUID); err != nil {
					t.Fatal(err)
				}
			}
			restored, failed, moved := 0, 0, 0
			for race := 1; race <= attackRaces; race++ {
				npmChanges(t, e.app)
				// Every name either version of Restore builds in.
				decoys := []string{".patchagent-restore", "node_modules.patchagent-restore"}
				// The decoys sit beside them: a directory moves to another
				// parent only with write permission on itself, which a dir
				// of root's 0700 does not give the user.
				d1, d2 := filepath.Join(e.app, ".decoy1"), filepath.Join(e.app, ".decoy2")
				for _, d := range []string{d1, d2} {
					os.RemoveAll(d)
					if err := os.Symlink(bait, d); err != nil {
						t.Fatal(err)
					}
					os.Lchown(d, attackUID, attackUID)
				}
				stop1 := e.attack(t, filepath.Join(e.app, decoys[0]), d1)
				stop2 := e.attack(t, filepath.Join(e.app, decoys[1]), d2)
				err := s.Restore()
				stop1()
				stop2()
				// Where the decoy link was, a directory: the attacker moved
				// the one Restore built in out of its way mid-restore.
				for _, d := range []string{d1, d2} {
					if fi, err := os.Lstat(d); err == nil && fi.IsDir() {
						moved++
					}
				}
				e.check(t, race, victim)
				if err != nil {
					t.Logf("race %d: failed closed: %v", race, err)
					failed++
					// The attacker gone, the same snapshot restores.
					if err := s.Restore(); err != nil {
						t.Fatalf("race %d: restore after the attack: %v", race, err)
					}
					continue
				}
				restored++
				if d := cmp.Diff(orig, treeHash(t, e.app, "server.js", decoys[0], decoys[1], ".decoy1", ".decoy2")); d != "" {
					t.Errorf("race %d: Restore succeeded but the app differs (-snapshot +restored):\n%s", race, d)
				}
			}
			t.Logf("%d races: %d restored, %d failed closed; the build dir was moved away %d times", attackRaces, restored, failed, moved)
			if restored == 0 {
				t.Errorf("no restore succeeded under attack: the test proves nothing about a successful one")
			}
		})
	}
}

// TestSnapshotAttackTopFileFlip: S2. While root snapshots, the user flips
// .npmrc (its own file) with a symlink to a root-only secret; the restore
// then writes the saved copy back into the app dir.
func TestSnapshotAttackTopFileFlip(t *testing.T) {
	e := newAttackEnv(t)
	// The user pads its .npmrc to the secret's size (stat shows it): a
	// copy of the secret under .npmrc's checked size then passes the
	// snapshot's own verification.
	fi, err := os.Stat(filepath.Join(e.victim, "secret"))
	if err != nil {
		t.Fatal(err)
	}
	npmrc, evil := filepath.Join(e.app, ".npmrc"), filepath.Join(e.run, "evil-npmrc")
	e.flipRaces(t, npmrc, evil, func() {
		os.Remove(npmrc)
		write(t, npmrc, strings.Repeat("#", int(fi.Size())), 0o600)
		os.Chown(npmrc, attackUID, attackUID)
	}, filepath.Join(e.victim, "secret"), func(s Snapshot) string {
		fi, err := os.Lstat(filepath.Join(s.Dir, snapFilesDir, ".npmrc"))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Mode().Type().String()
	})
}

// TestSnapshotAttackPackageDirFlip: S3. While root snapshots, the user
// flips a package dir with a symlink to a root-owned dir holding a secret
// under the package's file names; the snapshot is then restored.
func TestSnapshotAttackPackageDirFlip(t *testing.T) {
	e := newAttackEnv(t)
	write(t, filepath.Join(e.victim, "sub/index.js"), e.secret+"\n", 0o600)
	write(t, filepath.Join(e.victim, "sub/package.json"), e.secret+"\n", 0o600)
	b, evil := filepath.Join(e.app, "node_modules/b"), filepath.Join(e.app, "node_modules/evil-b")
	e.flipRaces(t, b, evil, func() {
		os.RemoveAll(b)
		write(t, filepath.Join(b, "package.json"), `{"name":"b","version":"2.0.0"}`, 0o644)
		write(t, filepath.Join(b, "index.js"), "module.exports = 'b2'\n", 0o644)
		if err := chownTree(b, attackUID); err != nil {
			t.Fatal(err)
		}
	}, filepath.Join(e.victim, "sub"), func(s Snapshot) string {
		fi, err := os.Lstat(filepath.Join(s.Dir, "node_modules/b"))
		if err != nil {
			return "none"
		}
		return fi.Mode().Type().String()
	})
}

// flipRaces runs attackRaces races of snapshotsPerRace snapshots each
// while the user flips target (reset to the user's real one by reset
// before each race) with decoy, a symlink to victim; then restores each
// snapshot and checks. kind names what a snapshot saved at target.
func (e *attackEnv) flipRaces(t *testing.T, target, decoy string, reset func(), victimPath string, kind func(Snapshot) string) {
	t.Helper()
	victim := treeHash(t, e.victim)
	kinds := map[string]int{}
	for race := 1; race <= attackRaces; race++ {
		reset()
		os.RemoveAll(decoy)
		if err := os.Symlink(victimPath, decoy); err != nil {
			t.Fatal(err)
		}
		os.Lchown(decoy, attackUID, attackUID)
		stop := e.attack(t, target, decoy)
		// The window between a check and an open is microseconds: a race
		// is several snapshots under one attacker.
		var snaps []Snapshot
		for i := range snapshotsPerRace {
			s, _, err := TakeSnapshot(e.app, filepath.Join(t.TempDir(), "s"+strconv.Itoa(i)))
			if err != nil {
				kinds["failed"]++
				continue
			}
			snaps = append(snaps, s)
		}
		stop()
		for _, s := range snaps {
			kinds[kind(s)]++
			err := s.Restore()
			e.check(t, race, victim)
			if err != nil {
				t.Fatalf("race %d: restore: %v", race, err)
			}
		}
	}
	t.Logf("what the snapshots saved under attack: %v", kinds)
	if kinds["L---------"] == 0 {
		t.Errorf("the attacker never won a flip: the test proves nothing")
	}
}

func chownTree(root string, uid int) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, uid)
	})
}

// TestSnapshotAttackSymlinkOwnerFlip: while root snapshots, the user flips
// a root-owned symlink it moved into node_modules (a .bin link left by an
// earlier `sudo npm install`, on the same filesystem) with a link of its
// own to a directory of its choosing. A snapshot must never pair root's
// ownership with the user's target: a restore would plant a root-owned
// link there, which the walk to the app's directories follows (dirfd.go).
func TestSnapshotAttackSymlinkOwnerFlip(t *testing.T) {
	e := newAttackEnv(t)
	names := []string{"node_modules/rootlink", "node_modules/userlink"}
	link, decoy := filepath.Join(e.app, names[0]), filepath.Join(e.app, names[1])
	const rootTarget, userTarget = "/usr/lib/root-target", "/run/lock"
	saw := map[string]int{}
	for race := 1; race <= attackRaces; race++ {
		os.Remove(link)
		os.Remove(decoy)
		if err := os.Symlink(rootTarget, link); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(userTarget, decoy); err != nil {
			t.Fatal(err)
		}
		if err := os.Lchown(decoy, attackUID, attackUID); err != nil {
			t.Fatal(err)
		}
		stop := e.attack(t, link, decoy)
		for i := range snapshotsPerRace {
			s, _, err := TakeSnapshot(e.app, filepath.Join(t.TempDir(), "s"+strconv.Itoa(i)))
			if err != nil {
				saw["failed"]++
				continue
			}
			for _, name := range names {
				p := filepath.Join(s.Dir, name)
				fi, err := os.Lstat(p)
				if err != nil {
					t.Fatalf("race %d: %s not in the snapshot: %v", race, name, err)
				}
				target, err := os.Readlink(p)
				if err != nil {
					t.Fatal(err)
				}
				uid := fi.Sys().(*syscall.Stat_t).Uid
				saw[fmt.Sprintf("%s: uid %d -> %s", name, uid, target)]++
				if (uid == 0) != (target == rootTarget) {
					t.Fatalf("race %d: the snapshot's %s is owned by uid %d and points to %s: one link's owner with the other's target", race, name, uid, target)
				}
			}
		}
		stop()
	}
	t.Logf("what the snapshots saved under attack: %v", saw)
	if saw[names[1]+": uid 0 -> "+rootTarget] == 0 {
		t.Errorf("the attacker never flipped the links during a snapshot: the test proves nothing")
	}
}
