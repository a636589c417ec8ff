package packaging

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// shellScripts are every POSIX sh script the packages and the Distributor
// zips ship.
var shellScripts = []string{
	"scripts/postinstall.sh", "scripts/preremove.sh", "scripts/postremove.sh", "scripts/posttrans.sh",
	"distributor/install.sh", "distributor/uninstall.sh", "distributor/dpkgwait.sh", "version.sh",
}

func TestScriptsParse(t *testing.T) {
	for _, s := range shellScripts {
		if out, err := exec.Command("sh", "-n", s).CombinedOutput(); err != nil {
			t.Errorf("sh -n %s: %v\n%s", s, err, out)
		}
		b, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "#!/bin/sh\n") {
			t.Errorf("%s: want #!/bin/sh", s)
		}
	}
	if sc, err := exec.LookPath("shellcheck"); err == nil {
		args := append([]string{"-s", "sh"}, shellScripts...)
		if out, err := exec.Command(sc, args...).CombinedOutput(); err != nil {
			t.Errorf("shellcheck: %v\n%s", err, out)
		}
	}
}

// stub records its name and arguments in $STUB_LOG, one call a line, and
// answers like the real tool where the scripts read its answer.
const stub = `#!/bin/sh
name=$(basename "$0")
echo "$name $*" >>"$STUB_LOG"
case "$name $*" in
"systemctl --version") printf 'systemd %s (%s-1)\n+PAM +SECCOMP\n' "${STUB_SYSTEMD_VERSION:-252}" "${STUB_SYSTEMD_VERSION:-252}"; exit 0 ;;
"systemctl is-enabled --quiet "*) case " ${STUB_ENABLED-patchagent.service} " in *" $3 "*) exit 0 ;; esac; exit 1 ;;
"systemctl is-active --quiet patchagent.service") exit 0 ;;
"systemctl is-"*) exit 1 ;;
"patchagent check-config"*) printf '%b' "${STUB_CHECK_OUT:-}"; exit "${STUB_CHECK_RC:-0}" ;;
"dpkg-query "*) [ -n "${STUB_INSTALLED:-}" ] && printf 'install ok installed'; exit 0 ;;
"rpm -q "*) [ -n "${STUB_INSTALLED:-}" ]; exit $? ;;
"dpkg -i "* | "dpkg -r "*)
	# $STUB_DPKG_LOCKED holds how many more calls find the lock held.
	if [ -n "${STUB_DPKG_LOCKED:-}" ] && [ "$(cat "$STUB_DPKG_LOCKED")" -gt 0 ]; then
		echo $(($(cat "$STUB_DPKG_LOCKED") - 1)) >"$STUB_DPKG_LOCKED"
		echo "dpkg: error: dpkg frontend lock was locked by another process with pid 4242" >&2
		exit 2
	fi
	exit "${STUB_PM_RC:-0}"
	;;
"dpkg "* | "rpm "* | "apt-get "* | "dnf "* | "yum "*) exit "${STUB_PM_RC:-0}" ;;
esac
exit 0
`

type stubEnv struct {
	dir, log, systemdDir, stateDir string
	// config and template stand for /etc/patchagent/config.yaml and
	// /usr/share/patchagent/config.yaml (PATCHAGENT_CONFIG and
	// PATCHAGENT_CONFIG_TEMPLATE), enabledUnits for
	// /var/lib/patchagent/enabled-units (PATCHAGENT_ENABLED_UNITS).
	config, template, enabledUnits string
}

func newStubEnv(t *testing.T, tools ...string) *stubEnv {
	t.Helper()
	e := &stubEnv{dir: t.TempDir()}
	bin := filepath.Join(e.dir, "bin")
	e.log = filepath.Join(e.dir, "calls.log")
	e.systemdDir = filepath.Join(e.dir, "run-systemd-system")
	e.stateDir = filepath.Join(e.dir, "state")
	e.config = filepath.Join(e.dir, "etc", "patchagent", "config.yaml")
	e.template = filepath.Join(e.dir, "usr-share", "config.yaml")
	e.enabledUnits = filepath.Join(e.dir, "var-lib-patchagent", "enabled-units")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(e.template), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.template, []byte("app:\n  name: \"\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tool := range tools {
		if err := os.WriteFile(filepath.Join(bin, tool), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// run runs script with args, systemd "running" or not, and returns the
// recorded calls, the exit code and stderr.
func (e *stubEnv) run(t *testing.T, dir, script string, systemd bool, env []string, args ...string) ([]string, int, string) {
	t.Helper()
	os.Remove(e.log)
	os.RemoveAll(e.systemdDir)
	if systemd {
		if err := os.MkdirAll(e.systemdDir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	abs := script
	if !filepath.IsAbs(abs) {
		abs = filepath.Join(dir, script)
	}
	cmd := exec.Command("sh", append([]string{abs}, args...)...)
	cmd.Dir = dir
	cmd.Env = append([]string{
		"PATH=" + filepath.Join(e.dir, "bin") + ":/usr/bin:/bin",
		"STUB_LOG=" + e.log,
		"PATCHAGENT_SYSTEMD_DIR=" + e.systemdDir,
		"PATCHAGENT_STATE_DIR=" + e.stateDir,
		"PATCHAGENT_CONFIG=" + e.config,
		"PATCHAGENT_CONFIG_TEMPLATE=" + e.template,
		"PATCHAGENT_ENABLED_UNITS=" + e.enabledUnits,
	}, env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	var calls []string
	if b, err := os.ReadFile(e.log); err == nil {
		calls = strings.Split(strings.TrimSpace(string(b)), "\n")
	}
	return calls, code, stderr.String()
}

func TestMaintainerScripts(t *testing.T) {
	const (
		reload   = "systemctl daemon-reload"
		version  = "systemctl --version"
		enable   = "systemctl enable patchagent.service"
		restart  = "systemctl try-restart patchagent.service"
		stop     = "systemctl stop patchagent.service patchagent-reconcile.service"
		disable  = "systemctl disable patchagent.service patchagent-reconcile.service"
		purge    = "rm -rf /var/lib/patchagent"
		purgeCf  = "rm -f /etc/patchagent/config.yaml"
		rmdir    = "rmdir /etc/patchagent"
		rmProm   = "rm -f /var/lib/prometheus/node-exporter/patchagent.prom"
		isDaemon = "systemctl is-enabled --quiet patchagent.service"
		isBoot   = "systemctl is-enabled --quiet patchagent-reconcile.service"
	)
	e := newStubEnv(t, "systemctl", "patchagent", "rm", "rmdir", "deb-systemd-helper", "deb-systemd-invoke")
	check := "patchagent check-config --config " + e.config
	tests := []struct {
		name, script string
		args         []string
		systemd      bool
		configValid  bool
		want         []string
	}{
		{"deb install, config valid", "postinstall.sh", []string{"configure", ""}, true, true, []string{reload, version, check, enable}},
		{"deb install, config not set", "postinstall.sh", []string{"configure", ""}, true, false, []string{reload, version, check}},
		{"deb install, one argument", "postinstall.sh", []string{"configure"}, true, true, []string{reload, version, check, enable}},
		{"deb upgrade", "postinstall.sh", []string{"configure", "0.1.0-1"}, true, true, []string{reload, restart}},
		{"deb abort-upgrade", "postinstall.sh", []string{"abort-upgrade", "0.2.0-1"}, true, true, nil},
		{"deb install, no systemd", "postinstall.sh", []string{"configure", ""}, false, true, nil},
		{"deb upgrade, no systemd", "postinstall.sh", []string{"configure", "0.1.0-1"}, false, true, nil},
		{"rpm install, config valid", "postinstall.sh", []string{"1"}, true, true, []string{reload, version, check, enable}},
		{"rpm install, config not set", "postinstall.sh", []string{"1"}, true, false, []string{reload, version, check}},
		{"rpm upgrade", "postinstall.sh", []string{"2"}, true, true, []string{reload, restart}},
		{"rpm install, no systemd", "postinstall.sh", []string{"1"}, false, true, nil},

		{"deb remove", "preremove.sh", []string{"remove"}, true, true, []string{check, rmProm, isDaemon, isBoot, stop, disable}},
		{"deb upgrade", "preremove.sh", []string{"upgrade", "0.2.0-1"}, true, true, nil},
		{"deb deconfigure", "preremove.sh", []string{"deconfigure", "in-favour", "x", "1"}, true, true, nil},
		{"deb remove, no systemd", "preremove.sh", []string{"remove"}, false, true, []string{check, rmProm}},
		{"rpm erase", "preremove.sh", []string{"0"}, true, true, []string{check, rmProm, isDaemon, isBoot, stop, disable}},
		{"rpm upgrade", "preremove.sh", []string{"1"}, true, true, nil},
		{"rpm erase, no systemd", "preremove.sh", []string{"0"}, false, true, []string{check, rmProm}},

		{"deb remove keeps state", "postremove.sh", []string{"remove"}, true, true, []string{reload}},
		{"deb purge", "postremove.sh", []string{"purge"}, true, true, []string{reload, purge, purgeCf, rmdir}},
		{"deb purge, no systemd", "postremove.sh", []string{"purge"}, false, true, []string{purge, purgeCf, rmdir}},
		{"deb upgrade", "postremove.sh", []string{"upgrade", "0.2.0-1"}, true, true, []string{reload}},
		{"deb remove, no systemd", "postremove.sh", []string{"remove"}, false, true, nil},
		{"rpm erase keeps state", "postremove.sh", []string{"0"}, true, true, []string{reload}},
		{"rpm upgrade", "postremove.sh", []string{"1"}, true, true, []string{reload}},
		{"rpm erase, no systemd", "postremove.sh", []string{"0"}, false, true, nil},
	}
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	// The operator's config, present in these cases (its creation is
	// TestPostinstallCreatesTheConfigOnce's).
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.config, []byte("app: {name: mine}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.script+"/"+tc.name, func(t *testing.T) {
			// A removal's record of the enabled units is
			// TestReinstallAfterRemoveEnablesWhatWasEnabled's.
			os.Remove(e.enabledUnits)
			rc := "0"
			if !tc.configValid {
				rc = "2"
			}
			calls, code, stderr := e.run(t, e.dir, filepath.Join(wd, "scripts", tc.script), tc.systemd, []string{"STUB_CHECK_RC=" + rc}, tc.args...)
			if code != 0 {
				t.Fatalf("exit %d, stderr:\n%s", code, stderr)
			}
			if !reflect.DeepEqual(calls, tc.want) {
				t.Errorf("calls:\n  %q\nwant:\n  %q", calls, tc.want)
			}
			if !tc.configValid && tc.script == "postinstall.sh" && !strings.Contains(stderr, "not enabled: "+e.config+" is not ready on this node (set app.name first") {
				t.Errorf("stderr does not tell what to do:\n%s", stderr)
			}
		})
	}
}

// TestPostinstallCreatesTheConfigOnce: a first install (deb configure,
// rpm 1), with systemd or not, creates the config from the template, 0600;
// an upgrade never replaces the operator's config, edited or not (no
// conffile prompt: the deb does not ship it).
func TestPostinstallCreatesTheConfigOnce(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(wd, "scripts", "postinstall.sh")
	for _, args := range [][]string{{"configure", ""}, {"1"}} {
		for _, systemd := range []bool{true, false} {
			e := newStubEnv(t, "systemctl", "patchagent")
			_, code, stderr := e.run(t, e.dir, script, systemd, []string{"STUB_CHECK_RC=2"}, args...)
			if code != 0 {
				t.Fatalf("%q: exit %d\n%s", args, code, stderr)
			}
			fi, err := os.Stat(e.config)
			if err != nil {
				t.Fatalf("%q, systemd %v: no config created: %v\n%s", args, systemd, err, stderr)
			}
			got, _ := os.ReadFile(e.config)
			want, _ := os.ReadFile(e.template)
			if fi.Mode().Perm() != 0o600 || string(got) != string(want) || !strings.Contains(stderr, "created "+e.config) {
				t.Errorf("%q: config %v %q, want 0600 and the template; stderr %q", args, fi.Mode(), got, stderr)
			}
			if _, err := os.Stat(e.config + ".patchagent-new"); err == nil {
				t.Errorf("%q: the temporary file is left", args)
			}
			// An upgrade after the operator's edit keeps it.
			if err := os.WriteFile(e.config, []byte("app: {name: edited}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			up := []string{"configure", "0.1.0-1"}
			if args[0] == "1" {
				up = []string{"2"}
			}
			if _, code, stderr := e.run(t, e.dir, script, systemd, nil, up...); code != 0 || strings.Contains(stderr, "created") {
				t.Fatalf("upgrade %q: exit %d\n%s", up, code, stderr)
			}
			if got, _ := os.ReadFile(e.config); string(got) != "app: {name: edited}\n" {
				t.Errorf("upgrade %q replaced the operator's config: %q", up, got)
			}
		}
	}
	// A dangling symlink in its place is the operator's too: not followed.
	e := newStubEnv(t, "systemctl", "patchagent")
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(e.dir, "elsewhere"), e.config); err != nil {
		t.Fatal(err)
	}
	if _, code, stderr := e.run(t, e.dir, script, false, nil, "configure", ""); code != 0 || strings.Contains(stderr, "created") {
		t.Fatalf("dangling symlink: exit %d\n%s", code, stderr)
	}
	if _, err := os.Lstat(filepath.Join(e.dir, "elsewhere")); err == nil {
		t.Error("postinstall wrote through a symlink")
	}
}

// TestRemovalWithACycleOpen: with the state file saying a cycle is open,
// removal (deb remove, rpm erase) is refused, naming the commands that put
// the node back, unless PATCHAGENT_REMOVE_OPEN_CYCLE=1; a closed cycle
// does not stop it. An upgrade is never refused.
func TestRemovalWithACycleOpen(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(wd, "scripts", "preremove.sh")
	e := newStubEnv(t, "systemctl", "patchagent", "rm")
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	write := func(open bool) {
		t.Helper()
		body := fmt.Sprintf("{\n  \"open\": %t,\n  \"id\": \"c1\",\n  \"previous\": {\n    \"open\": true\n  }\n}\n", open)
		if err := os.WriteFile(filepath.Join(e.stateDir, "state.json"), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(true)
	for _, arg := range []string{"remove", "0"} {
		calls, code, stderr := e.run(t, e.dir, script, true, nil, arg)
		if code != 1 || len(calls) != 1 || !strings.HasPrefix(calls[0], "patchagent check-config") || !strings.Contains(stderr, "A PATCH CYCLE IS OPEN") ||
			!strings.Contains(stderr, "patchagent exit --force") || !strings.Contains(stderr, "iptables -D INPUT -j PATCHAGENT-BLOCK") ||
			!strings.Contains(stderr, "PATCHAGENT_REMOVE_OPEN_CYCLE=1") {
			t.Errorf("%s with a cycle open: exit %d, calls %q\n%s", arg, code, calls, stderr)
		}
		calls, code, stderr = e.run(t, e.dir, script, true, []string{"PATCHAGENT_REMOVE_OPEN_CYCLE=1"}, arg)
		if code != 0 || len(calls) == 0 || calls[len(calls)-1] != "systemctl disable patchagent.service patchagent-reconcile.service" || !strings.Contains(stderr, "removing it anyway") {
			t.Errorf("%s with the override: exit %d, calls %q\n%s", arg, code, calls, stderr)
		}
	}
	for _, arg := range []string{"upgrade", "1"} {
		if _, code, stderr := e.run(t, e.dir, script, true, nil, arg); code != 0 || stderr != "" {
			t.Errorf("%s with a cycle open: exit %d\n%s", arg, code, stderr)
		}
	}
	write(false) // a previous cycle's "open" nested deeper does not count
	if _, code, stderr := e.run(t, e.dir, script, true, nil, "remove"); code != 0 || strings.Contains(stderr, "CYCLE IS OPEN") {
		t.Errorf("remove with the cycle closed: exit %d\n%s", code, stderr)
	}

	// daemon.state_dir and daemon.textfile_dir elsewhere: the effective
	// values check-config prints are where the script looks.
	custom, textfiles := filepath.Join(e.dir, "custom-state"), filepath.Join(e.dir, "textfiles")
	if err := os.MkdirAll(custom, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(custom, "state.json"), []byte("{\n  \"open\": true\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	effective := []string{"PATCHAGENT_STATE_DIR=", "STUB_CHECK_OUT=daemon:\\n    state_dir: " + custom + "\\n    textfile_dir: \"" + textfiles + "\"\\n"}
	if _, code, stderr := e.run(t, e.dir, script, true, effective, "remove"); code != 1 || !strings.Contains(stderr, custom) {
		t.Errorf("remove with the cycle open in daemon.state_dir: exit %d\n%s", code, stderr)
	}
	calls, code, stderr := e.run(t, e.dir, script, true, append(effective, "PATCHAGENT_REMOVE_OPEN_CYCLE=1"), "remove")
	if code != 0 || !slices.Contains(calls, "rm -f "+textfiles+"/patchagent.prom") {
		t.Errorf("remove with daemon.textfile_dir set: exit %d, calls %q\n%s", code, calls, stderr)
	}
	// check-config exits 2 when the node lacks what the config names (pm2
	// or the app user already gone) and still prints the values: used.
	if _, code, stderr := e.run(t, e.dir, script, true, append(effective, "STUB_CHECK_RC=2"), "remove"); code != 1 || !strings.Contains(stderr, custom) {
		t.Errorf("remove with the cycle open in daemon.state_dir, a node check failing: exit %d\n%s", code, stderr)
	}
	// A config that is not valid prints nothing: the defaults, and it says so.
	if _, code, stderr := e.run(t, e.dir, script, true, []string{"PATCHAGENT_STATE_DIR=", "STUB_CHECK_RC=2"}, "remove"); code != 0 || !strings.Contains(stderr, e.config+" is not valid") || !strings.Contains(stderr, "the defaults") {
		t.Errorf("remove with a config that is not valid: exit %d\n%s", code, stderr)
	}
}

// patchagentBinary builds cmd/patchagent for the tests that run the
// maintainer scripts against the real check-config.
func patchagentBinary(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go not installed")
	}
	if os.Geteuid() != 0 {
		t.Skip("check-config refuses a config not owned by root: run as root")
	}
	dir := t.TempDir()
	if out, err := exec.Command(gobin, "build", "-o", filepath.Join(dir, "patchagent"), "../cmd/patchagent").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// TestScriptsFindTheStateOnABrokenNode: with the real check-config, a
// custom daemon.state_dir and an app user already gone (a node being
// decommissioned: check-config exits 2), preremove still finds the open
// cycle in that state_dir and refuses the removal, and an upgrade's
// postinstall still waits on that state_dir's phase lock. Before,
// check-config printed nothing on a node problem and both used
// /var/lib/patchagent.
func TestScriptsFindTheStateOnABrokenNode(t *testing.T) {
	bin := patchagentBinary(t)
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	e := newStubEnv(t, "systemctl", "rm")
	custom := filepath.Join(e.dir, "custom-state")
	if err := os.MkdirAll(custom, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := "app:\n  name: web\n  user: patchagent-no-such-user\ndaemon:\n  state_dir: " + custom + "\n  textfile_dir: " + filepath.Join(e.dir, "textfiles") + "\n"
	if err := os.WriteFile(e.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=" + filepath.Join(e.dir, "bin") + ":" + bin + ":/usr/bin:/bin", "PATCHAGENT_STATE_DIR="}
	check := exec.Command(filepath.Join(bin, "patchagent"), "check-config", "--config", e.config)
	if out, err := check.Output(); check.ProcessState.ExitCode() != 2 || !strings.Contains(string(out), "state_dir: "+custom+"\n") {
		t.Fatalf("check-config on this node: %v, want exit 2 with the state_dir on stdout:\n%s", err, out)
	}

	if err := os.WriteFile(filepath.Join(custom, "state.json"), []byte("{\n  \"open\": true\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	calls, code, stderr := e.run(t, e.dir, filepath.Join(wd, "scripts", "preremove.sh"), true, env, "remove")
	if code != 1 || !strings.Contains(stderr, "A PATCH CYCLE IS OPEN") || !strings.Contains(stderr, custom+"/state.json") || slices.Contains(calls, "systemctl stop patchagent.service patchagent-reconcile.service") {
		t.Errorf("remove with the cycle open in daemon.state_dir, the app user gone: exit %d, calls %q\n%s", code, calls, stderr)
	}

	lock, err := os.OpenFile(filepath.Join(custom, "phase.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	calls, code, stderr = e.run(t, e.dir, filepath.Join(wd, "scripts", "postinstall.sh"), true, append(env, "PATCHAGENT_LOCK_WAIT=1"), "2")
	if code != 0 || slices.Contains(calls, "systemctl try-restart patchagent.service") || !strings.Contains(stderr, "a patchagent phase still runs") {
		t.Errorf("upgrade during a phase, the app user gone: exit %d, calls %q\n%s", code, calls, stderr)
	}
}

// TestUpgradeWaitsForARunningPhase: an upgrade restarts the daemon only
// once the phase lock is free; while a phase holds it past the wait, the
// old daemon keeps running (npm is not killed mid-update) and it says so.
func TestUpgradeWaitsForARunningPhase(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(wd, "scripts", "postinstall.sh")
	e := newStubEnv(t, "systemctl", "patchagent")
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.config, []byte("app: {name: mine}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(e.stateDir, "phase.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	restart := "systemctl try-restart patchagent.service"
	calls, code, stderr := e.run(t, e.dir, script, true, []string{"PATCHAGENT_LOCK_WAIT=1"}, "configure", "0.1.0-1")
	if code != 0 || slices.Contains(calls, restart) || !strings.Contains(stderr, "a patchagent phase still runs") {
		t.Errorf("upgrade during a phase: exit %d, calls %q\n%s", code, calls, stderr)
	}
	// The lock found through daemon.state_dir, as check-config prints it.
	viaConfig := []string{"PATCHAGENT_LOCK_WAIT=1", "PATCHAGENT_STATE_DIR=", "STUB_CHECK_OUT=daemon:\\n    state_dir: " + e.stateDir + "\\n"}
	if calls, code, stderr := e.run(t, e.dir, script, true, viaConfig, "2"); code != 0 || slices.Contains(calls, restart) || !strings.Contains(stderr, "a patchagent phase still runs") {
		t.Errorf("upgrade during a phase, state_dir from the config: exit %d, calls %q\n%s", code, calls, stderr)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	calls, code, stderr = e.run(t, e.dir, script, true, []string{"PATCHAGENT_LOCK_WAIT=1"}, "2")
	if code != 0 || !slices.Contains(calls, restart) {
		t.Errorf("upgrade with no phase: exit %d, calls %q\n%s", code, calls, stderr)
	}
}

func TestDistributorScripts(t *testing.T) {
	e := newStubEnv(t, "systemctl", "dpkg", "dpkg-query", "rpm", "patchagent")
	debDir, rpmDir, emptyDir := filepath.Join(e.dir, "deb"), filepath.Join(e.dir, "rpm"), filepath.Join(e.dir, "empty")
	for _, d := range []string{debDir, rpmDir, emptyDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// As in the zips: the scripts next to the package.
	for _, d := range []string{debDir, rpmDir, emptyDir} {
		for _, s := range []string{"install.sh", "uninstall.sh", "dpkgwait.sh"} {
			b, err := os.ReadFile(filepath.Join("distributor", s))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, s), b, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	os.WriteFile(filepath.Join(debDir, "patchagent_1.0.0-1_amd64.deb"), nil, 0o644)
	os.WriteFile(filepath.Join(rpmDir, "patchagent-1.0.0-1.x86_64.rpm"), nil, 0o644)
	install, uninstall := "install.sh", "uninstall.sh"
	filter := func(calls []string) []string {
		var out []string
		for _, c := range calls {
			if c != "patchagent version" {
				out = append(out, c)
			}
		}
		return out
	}

	// The package managers install.sh may find: only the stubs and the
	// few tools it runs (PATH holds nothing else), so the host's own apt-get
	// or dnf is never run.
	only := func(t *testing.T, managers ...string) []string {
		t.Helper()
		d := t.TempDir()
		for _, tool := range []string{"dirname", "basename", "rm", "cat", "sleep"} {
			p, err := exec.LookPath(tool)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(p, filepath.Join(d, tool)); err != nil {
				t.Fatal(err)
			}
		}
		for _, m := range append(managers, "systemctl", "patchagent") {
			if err := os.WriteFile(filepath.Join(d, m), []byte(stub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return []string{"PATH=" + d}
	}
	for _, tc := range []struct {
		name, dir string
		managers  []string
		want      []string
		warns     string
	}{
		// apt-get waits for a dpkg lock unattended-upgrades or cloud-init
		// holds at first boot (apt before 1.9.11 ignores the option).
		{"deb with apt-get", debDir, []string{"apt-get", "dpkg"}, []string{"apt-get -o DPkg::Lock::Timeout=600 install -y -q ./patchagent_1.0.0-1_amd64.deb"}, ""},
		{"deb, dpkg only", debDir, []string{"dpkg"}, []string{"dpkg -i patchagent_1.0.0-1_amd64.deb"}, "dpkg -i installs no dependency"},
		{"rpm with dnf", rpmDir, []string{"dnf", "yum", "rpm"}, []string{"dnf install -y ./patchagent-1.0.0-1.x86_64.rpm"}, ""},
		{"rpm with yum", rpmDir, []string{"yum", "rpm"}, []string{"yum install -y ./patchagent-1.0.0-1.x86_64.rpm"}, ""},
		{"rpm, rpm only", rpmDir, []string{"rpm"}, []string{"rpm -Uvh --replacepkgs patchagent-1.0.0-1.x86_64.rpm"}, "rpm -Uvh installs no dependency"},
	} {
		t.Run("install "+tc.name, func(t *testing.T) {
			calls, code, stderr := e.run(t, tc.dir, install, true, only(t, tc.managers...))
			if code != 0 || !reflect.DeepEqual(filter(calls), tc.want) || !strings.Contains(stderr, tc.warns) {
				t.Errorf("exit %d, calls %q, want 0, %q\n%s", code, calls, tc.want, stderr)
			}
		})
	}
	t.Run("install fails", func(t *testing.T) {
		_, code, stderr := e.run(t, debDir, install, true, append(only(t, "apt-get"), "STUB_PM_RC=1"))
		if code != 1 || !strings.Contains(stderr, "'apt-get -o DPkg::Lock::Timeout=600 install -y -q ./patchagent_1.0.0-1_amd64.deb' failed (exit 1)") {
			t.Errorf("exit %d, want 1\n%s", code, stderr)
		}
	})
	t.Run("no package manager", func(t *testing.T) {
		for dir, msg := range map[string]string{debDir: "needs apt-get or dpkg, neither found", rpmDir: "needs dnf, yum or rpm, none found"} {
			if _, code, stderr := e.run(t, dir, install, true, only(t)); code != 2 || !strings.Contains(stderr, msg) {
				t.Errorf("%s: exit %d, want 2\n%s", filepath.Base(dir), code, stderr)
			}
		}
	})
	t.Run("no package", func(t *testing.T) {
		if _, code, _ := e.run(t, emptyDir, install, true, nil); code != 2 {
			t.Errorf("exit %d, want 2", code)
		}
	})
	t.Run("uninstall not installed", func(t *testing.T) {
		calls, code, _ := e.run(t, debDir, uninstall, true, nil)
		for _, c := range calls {
			if strings.HasPrefix(c, "dpkg ") || strings.HasPrefix(c, "rpm -e") {
				t.Errorf("removed a package that is not installed: %q", c)
			}
		}
		if code != 0 {
			t.Errorf("exit %d, want 0", code)
		}
	})
	t.Run("uninstall and reinstall keeps the daemon running", func(t *testing.T) {
		calls, code, stderr := e.run(t, debDir, uninstall, true, []string{"STUB_INSTALLED=1"})
		if code != 0 || calls[len(calls)-1] != "dpkg -r patchagent" {
			t.Fatalf("exit %d, calls %q\n%s", code, calls, stderr)
		}
		b, err := os.ReadFile(filepath.Join(e.stateDir, "distributor-units"))
		if want := "patchagent.service enabled\npatchagent.service active\n"; err != nil || string(b) != want {
			t.Fatalf("recorded units %q (%v), want %q", b, err, want)
		}
		calls, code, stderr = e.run(t, debDir, install, true, only(t, "apt-get"))
		want := []string{"apt-get -o DPkg::Lock::Timeout=600 install -y -q ./patchagent_1.0.0-1_amd64.deb", "systemctl enable patchagent.service", "systemctl start patchagent.service"}
		if code != 0 || !reflect.DeepEqual(filter(calls), want) {
			t.Errorf("exit %d, calls %q, want %q\n%s", code, calls, want, stderr)
		}
		if _, err := os.Stat(filepath.Join(e.stateDir, "distributor-units")); !os.IsNotExist(err) {
			t.Errorf("distributor-units left behind: %v", err)
		}
	})
	// dpkg fails at once on a held lock: install.sh's fallback and
	// uninstall.sh run it again every second, up to the wait.
	t.Run("dpkg waits for the lock", func(t *testing.T) {
		locked := filepath.Join(t.TempDir(), "locked")
		for _, tc := range []struct {
			script, dir string
			env         []string
			want        string
		}{
			{install, debDir, only(t, "dpkg"), "dpkg -i patchagent_1.0.0-1_amd64.deb"},
			{uninstall, debDir, []string{"STUB_INSTALLED=1"}, "dpkg -r patchagent"},
		} {
			env := append(tc.env, "STUB_DPKG_LOCKED="+locked)
			os.WriteFile(locked, []byte("2\n"), 0o644)
			calls, code, stderr := e.run(t, tc.dir, tc.script, false, env)
			var tries int
			for _, c := range calls {
				if c == tc.want {
					tries++
				}
			}
			if code != 0 || tries != 3 || !strings.Contains(stderr, "another process holds the dpkg lock: waiting for it, up to 600s") {
				t.Errorf("%s, the lock held for 2 tries: exit %d, %d tries, want 0, 3\n%s", tc.script, code, tries, stderr)
			}
			// Held past the wait: dpkg's own error, and a failure.
			os.WriteFile(locked, []byte("100\n"), 0o644)
			_, code, stderr = e.run(t, tc.dir, tc.script, false, append(env, "PATCHAGENT_DPKG_LOCK_WAIT=1"))
			if code != 1 || !strings.Contains(stderr, "failed") {
				t.Errorf("%s, the lock held past the wait: exit %d, want 1\n%s", tc.script, code, stderr)
			}
		}
	})
	t.Run("uninstall fails", func(t *testing.T) {
		if _, code, _ := e.run(t, debDir, uninstall, false, []string{"STUB_INSTALLED=1", "STUB_PM_RC=1"}); code != 1 {
			t.Errorf("exit %d, want 1", code)
		}
	})
}

// TestReinstallAfterRemoveEnablesWhatWasEnabled: a removal (deb remove,
// rpm erase) records which units were enabled; the reinstall after it
// (dpkg: configure <old-version>, as an upgrade; rpm: 1) enables exactly
// those again, the daemon only once check-config passes, as on a first
// install, and deletes the record. Before, dpkg's reinstall took the
// upgrade branch and the daemon stayed disabled.
func TestReinstallAfterRemoveEnablesWhatWasEnabled(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	prerm, postinst := filepath.Join(wd, "scripts", "preremove.sh"), filepath.Join(wd, "scripts", "postinstall.sh")
	e := newStubEnv(t, "systemctl", "patchagent")
	// The real rm, so the textfile preremove deletes must be one of the test's.
	textfiles := "STUB_CHECK_OUT=daemon:\n    textfile_dir: " + filepath.Join(e.dir, "textfiles") + "\n"
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.config, []byte("app: {name: mine}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const (
		daemon  = "systemctl enable patchagent.service"
		boot    = "systemctl enable patchagent-reconcile.service"
		restart = "systemctl try-restart patchagent.service"
	)
	check := "patchagent check-config --config " + e.config
	for _, pkg := range []struct{ remove, reinstall []string }{
		{[]string{"remove"}, []string{"configure", "0.1.0-1"}},
		{[]string{"0"}, []string{"1"}},
	} {
		for _, tc := range []struct {
			name, enabled, checkRC string
			want                   []string
		}{
			{"daemon enabled", "patchagent.service", "0", []string{"systemctl daemon-reload", "systemctl --version", check, daemon}},
			{"daemon enabled, config no longer valid", "patchagent.service", "2", []string{"systemctl daemon-reload", "systemctl --version", check}},
			{"both enabled", "patchagent.service patchagent-reconcile.service", "0", []string{"systemctl daemon-reload", "systemctl --version", check, daemon, boot}},
			{"boot step only", "patchagent-reconcile.service", "0", []string{"systemctl daemon-reload", "systemctl --version", boot}},
			{"nothing enabled", "", "0", []string{"systemctl daemon-reload"}},
		} {
			name := pkg.remove[0] + " then " + strings.Join(pkg.reinstall, " ") + ", " + tc.name
			_, code, stderr := e.run(t, e.dir, prerm, true, []string{"STUB_ENABLED=" + tc.enabled, textfiles}, pkg.remove...)
			if code != 0 {
				t.Fatalf("%s: preremove exit %d\n%s", name, code, stderr)
			}
			calls, code, stderr := e.run(t, e.dir, postinst, true, []string{"STUB_CHECK_RC=" + tc.checkRC}, pkg.reinstall...)
			if code != 0 || !reflect.DeepEqual(calls, tc.want) {
				t.Errorf("%s: exit %d, calls\n  %q\nwant\n  %q\n%s", name, code, calls, tc.want, stderr)
			}
			if tc.checkRC != "0" && !strings.Contains(stderr, "not enabled: "+e.config+" is not ready on this node") {
				t.Errorf("%s: does not say why the daemon is not enabled:\n%s", name, stderr)
			}
			if _, err := os.Stat(e.enabledUnits); !os.IsNotExist(err) {
				t.Errorf("%s: the record of the enabled units is left: %v", name, err)
			}
		}
	}
	// Without a removal before it, an upgrade is an upgrade.
	if calls, _, stderr := e.run(t, e.dir, postinst, true, nil, "configure", "0.1.0-1"); !reflect.DeepEqual(calls, []string{"systemctl daemon-reload", restart}) {
		t.Errorf("deb upgrade: calls %q\n%s", calls, stderr)
	}
	// A removal with systemd not running disables nothing and records
	// nothing.
	if _, code, stderr := e.run(t, e.dir, prerm, false, []string{textfiles}, "remove"); code != 0 {
		t.Fatalf("remove without systemd: exit %d\n%s", code, stderr)
	}
	if _, err := os.Stat(e.enabledUnits); !os.IsNotExist(err) {
		t.Errorf("remove without systemd recorded the units: %v", err)
	}
}

// TestPostinstallNeedsSystemd239: systemd older than 239 does not know
// @system-service (the units would run the daemon with the @default
// system calls only): postinstall enables nothing there, on a first
// install or a reinstall, and names the floor; 239 itself is enough.
func TestPostinstallNeedsSystemd239(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	postinst := filepath.Join(wd, "scripts", "postinstall.sh")
	e := newStubEnv(t, "systemctl", "patchagent")
	if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.config, []byte("app: {name: mine}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		version string
		enables bool
	}{{"219", false}, {"237", false}, {"238", false}, {"239", true}, {"252", true}} {
		for _, args := range [][]string{{"configure", ""}, {"1"}, {"configure", "0.1.0-1"}} {
			reinstall := args[0] == "configure" && args[1] != ""
			if reinstall {
				if err := os.MkdirAll(filepath.Dir(e.enabledUnits), 0o700); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(e.enabledUnits, []byte("patchagent.service\npatchagent-reconcile.service\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			calls, code, stderr := e.run(t, e.dir, postinst, true, []string{"STUB_SYSTEMD_VERSION=" + tc.version}, args...)
			enabled := slices.ContainsFunc(calls, func(c string) bool { return strings.HasPrefix(c, "systemctl enable") })
			if code != 0 || enabled != tc.enables {
				t.Errorf("systemd %s, %q: exit %d, calls %q, want enabling %v\n%s", tc.version, args, code, calls, tc.enables, stderr)
			}
			says := strings.Contains(stderr, "not enabled: systemd "+tc.version+" is older than 239, the oldest patchagent supports")
			if says == tc.enables {
				t.Errorf("systemd %s, %q: the floor said %v\n%s", tc.version, args, says, stderr)
			}
		}
	}
}

// TestTheRPMSaveOfPatchagent010IsPutBack: patchagent 0.1.0's rpm owned the
// config, so erasing it (the Distributor's uninstall) or upgrading from it
// renamed an edited config config.yaml.rpmsave. postinstall (after an
// erase) and posttrans (after an upgrade, once rpm erased the old copy)
// put it back, byte for byte; posttrans creates the config from the
// template when there is neither, and leaves one in place alone.
func TestTheRPMSaveOfPatchagent010IsPutBack(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	const edited = "app:\n  name: edited # the operator's\n"
	for _, script := range []string{"postinstall.sh", "posttrans.sh"} {
		e := newStubEnv(t, "systemctl", "patchagent")
		path := filepath.Join(wd, "scripts", script)
		if err := os.MkdirAll(filepath.Dir(e.config), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(e.config+".rpmsave", []byte(edited), 0o600); err != nil {
			t.Fatal(err)
		}
		_, code, stderr := e.run(t, e.dir, path, false, nil, "1")
		got, _ := os.ReadFile(e.config)
		fi, err := os.Stat(e.config)
		if code != 0 || err != nil || string(got) != edited || fi.Mode().Perm() != 0o600 || !strings.Contains(stderr, "restored "+e.config+" from "+e.config+".rpmsave") {
			t.Errorf("%s: exit %d, config %q (%v), want the .rpmsave's\n%s", script, code, got, err, stderr)
		}
		if _, err := os.Stat(e.config + ".rpmsave"); !os.IsNotExist(err) {
			t.Errorf("%s: the .rpmsave is left: %v", script, err)
		}
	}
	e := newStubEnv(t)
	posttrans := filepath.Join(wd, "scripts", "posttrans.sh")
	for _, arg := range []string{"0", "1", "2"} { // its $1 differs between rpm versions
		os.Remove(e.config)
		_, code, stderr := e.run(t, e.dir, posttrans, false, nil, arg)
		got, _ := os.ReadFile(e.config)
		want, _ := os.ReadFile(e.template)
		fi, err := os.Stat(e.config)
		if code != 0 || err != nil || string(got) != string(want) || fi.Mode().Perm() != 0o600 || !strings.Contains(stderr, "created "+e.config) {
			t.Errorf("posttrans %s, no config: exit %d, config %q (%v), want the template, 0600\n%s", arg, code, got, err, stderr)
		}
		if err := os.WriteFile(e.config, []byte(edited), 0o600); err != nil {
			t.Fatal(err)
		}
		if _, code, stderr := e.run(t, e.dir, posttrans, false, nil, arg); code != 0 || stderr != "" {
			t.Errorf("posttrans %s, a config in place: exit %d\n%s", arg, code, stderr)
		}
		if got, _ := os.ReadFile(e.config); string(got) != edited {
			t.Errorf("posttrans %s replaced the operator's config: %q", arg, got)
		}
	}
}
