package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestUnitsVerify runs systemd-analyze verify on every unit, with ExecStart
// pointed at an executable that exists here: any output is a failure
// (unknown keys and bad values only warn otherwise).
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	units, err := filepath.Glob("systemd/*.service")
	if err != nil || len(units) == 0 {
		t.Fatalf("no units: %v", err)
	}
	for _, u := range units {
		t.Run(filepath.Base(u), func(t *testing.T) {
			b, err := os.ReadFile(u)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), "ExecStart=/usr/bin/patchagent ") {
				t.Fatal("ExecStart does not run /usr/bin/patchagent")
			}
			dir := t.TempDir()
			p := filepath.Join(dir, filepath.Base(u))
			body := strings.ReplaceAll(string(b), "/usr/bin/patchagent ", "/bin/true ")
			if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(analyze, "verify", "--man=no", "--recursive-errors=no", p).CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Fatalf("systemd-analyze verify %s: %v\n%s", u, err, out)
			}
		})
	}
}

// TestReconcileRunsBeforeTheNetwork pins the ordering that keeps the app
// (pm2-<user>.service is After=network.target) behind the block at boot.
func TestReconcileRunsBeforeTheNetwork(t *testing.T) {
	b, err := os.ReadFile("systemd/patchagent-reconcile.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Before=network-pre.target", "Wants=network-pre.target", "DefaultDependencies=no", "Type=oneshot", "ExecStart=/usr/bin/patchagent reconcile "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}
