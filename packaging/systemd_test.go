package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	for _, want := range []string{"Before=network-pre.target", "Wants=network-pre.target network.target", "DefaultDependencies=no", "Type=oneshot", "ExecStart=/usr/bin/patchagent reconcile "} {
		if !strings.Contains(string(b), want) {
			t.Errorf("unit lacks %q", want)
		}
	}
}

// TestUnitsRunAfterTheDistroFirewalls pins issue 13's R2: both units that
// put the block back at boot start after every distribution firewall
// loader, which would otherwise be free to flush the re-applied block
// (deploy/testbed/node's real boot test shows it with Debian's nftables.service).
func TestUnitsRunAfterTheDistroFirewalls(t *testing.T) {
	for _, u := range []string{"systemd/patchagent.service", "systemd/patchagent-reconcile.service"} {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		// And pm2's unit (After=network.target) after both: network.target
		// must be part of the boot for that ordering to hold.
		if !strings.Contains(string(b), "\nWants=network-pre.target network.target\n") {
			t.Errorf("%s: does not pull in network.target", u)
		}
		var after []string
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "After="); ok {
				after = append(after, strings.Fields(v)...)
			}
		}
		for _, fw := range []string{"nftables.service", "netfilter-persistent.service", "iptables.service", "ip6tables.service", "firewalld.service", "ufw.service"} {
			if !slices.Contains(after, fw) {
				t.Errorf("%s: not After=%s", u, fw)
			}
		}
	}
}

// TestDaemonUnitLetsTheAgentWork pins what the hardening of
// patchagent.service must leave the daemon: root with CAP_NET_ADMIN for
// iptables, CAP_SETUID/SETGID to run pm2 and npm as the app user, the
// capabilities npm needs in the app tree, and write access to home and app
// directories.
func TestDaemonUnitLetsTheAgentWork(t *testing.T) {
	b, err := os.ReadFile("systemd/patchagent.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok && !strings.HasPrefix(l, "#") {
			keys[k] += " " + v
		}
	}
	for _, k := range []string{"User", "DynamicUser", "PrivateUsers", "AmbientCapabilities", "ReadOnlyPaths", "InaccessiblePaths"} {
		if v, ok := keys[k]; ok {
			t.Errorf("%s=%s: the daemon must run as root with its capabilities", k, v)
		}
	}
	if v, ok := keys["CapabilityBoundingSet"]; ok {
		for _, c := range []string{"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE"} {
			if !strings.Contains(v, c) || strings.Contains(v, "~") {
				t.Errorf("CapabilityBoundingSet=%s drops %s", v, c)
			}
		}
	}
	if v := strings.TrimSpace(keys["ProtectHome"]); v != "" && v != "no" && v != "false" {
		t.Errorf("ProtectHome=%s: pm2 and npm write under the app user's home", v)
	}
	if v := strings.TrimSpace(keys["ProtectSystem"]); v == "strict" && keys["ReadWritePaths"] == "" {
		t.Error("ProtectSystem=strict without ReadWritePaths: app directories become read-only")
	}
	if v := keys["RestrictAddressFamilies"]; v != "" {
		for _, af := range []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} {
			if !strings.Contains(v, af) {
				t.Errorf("RestrictAddressFamilies=%s lacks %s (iptables, sock_diag, pm2, npm)", v, af)
			}
		}
	}
}
