//go:build integration

package e2e

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/hooks"
)

// TestAppUserOnlyTheNameServicesKnow: an app user that only an NSS source
// knows (LDAP and SSSD are such sources; here libnss-extrausers, a real
// NSS module reading /var/lib/extrausers) is found by the static binary,
// whose os/user reads /etc/passwd alone, through the C library's getent.
// It runs in a mount namespace whose /etc/nsswitch.conf adds the module:
// the host's own files are left as they are.
func TestAppUserOnlyTheNameServicesKnow(t *testing.T) {
	if _, err := os.Stat("/usr/lib/libnss_extrausers.so.2"); err != nil {
		t.Fatalf("needs libnss-extrausers (deploy/setup.sh installs it): %v", err)
	}
	const name = "pa-nss-only"
	if _, err := user.Lookup(name); err == nil {
		t.Fatalf("%s is in /etc/passwd: the test proves nothing", name)
	}
	dir := t.TempDir()
	nss, eu := filepath.Join(dir, "nsswitch.conf"), filepath.Join(dir, "extrausers")
	if err := os.Mkdir(eu, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	for p, body := range map[string]string{
		nss:                         "passwd: files extrausers\ngroup: files extrausers\n",
		filepath.Join(eu, "passwd"): name + ":x:61234:61234:NSS only:/home/" + name + ":/bin/sh\n",
		filepath.Join(eu, "group"):  name + ":x:61234:\npa-nss-deploy:x:61235:" + name + "\n",
		cfg:                         "app:\n  name: web\n  user: " + name + "\n  pm2: /bin/true\ndaemon:\n  state_dir: " + filepath.Join(dir, "state") + "\n",
	} {
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(nss, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount --bind "$1" /etc/nsswitch.conf && mount --bind "$2" /var/lib/extrausers && exec "$3" check-config --config "$4"`,
		"sh", nss, eu, binary, cfg)
	cmd.Env = []string{"PATH=" + hooks.SafePath}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "app user: "+name+" (uid 61234, app.user)") {
		t.Fatalf("check-config with an app user only NSS knows: %v\n%s", err, out)
	}
}
