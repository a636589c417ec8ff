package agent

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParseConfigMinimalGivesTutorialDefaults(t *testing.T) {
	cfg, err := ParseConfig("c.yaml", []byte("app:\n  name: my-app\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := DefaultConfig()
	want.App.Name = "my-app"
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Fatalf("config (-want +got):\n%s", diff)
	}
	if cfg.Traffic.Ports[0] != 443 || cfg.Health.URL != "http://localhost:443/health-check" ||
		cfg.Health.Timeout.D() != 10*time.Second || !cfg.Health.Insecure || cfg.Health.UserAgent != "" {
		t.Fatalf("defaults do not reproduce the tutorial: %+v", cfg)
	}
}

func TestParseConfigFull(t *testing.T) {
	in := `
app:
  name: web
  user: node
  dir: /srv/web
traffic:
  ports: [443, 8443]
  action: drop
  ipv6: false
drain:
  timeout: 45s
  idle: 500ms
  min_wait: 10s
health:
  url: https://127.0.0.1:8443/hc
  expect_status: [200, "300-399"]
  successes: 3
exit:
  on_failure: unblock
steps:
  pre_commands:
    - [/usr/local/bin/leave-cluster, --now]
`
	cfg, err := ParseConfig("c.yaml", []byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]int{443, 8443}, cfg.Traffic.Ports); diff != "" {
		t.Error(diff)
	}
	if cfg.Traffic.Action != "drop" || cfg.Traffic.IPv6 || cfg.Drain.Timeout.D() != 45*time.Second ||
		cfg.Drain.Idle.D() != 500*time.Millisecond || cfg.Health.Successes != 3 || cfg.Exit.OnFailure != "unblock" {
		t.Errorf("values not decoded: %+v", cfg)
	}
	if diff := cmp.Diff([]StatusRange{{200, 200}, {300, 399}}, cfg.Health.ExpectStatus); diff != "" {
		t.Error(diff)
	}
	if diff := cmp.Diff([][]string{{"/usr/local/bin/leave-cluster", "--now"}}, cfg.Steps.PreCommands); diff != "" {
		t.Error(diff)
	}
	// Unset keys keep their defaults.
	if cfg.Health.Timeout.D() != 10*time.Second || cfg.Daemon.StateDir != "/var/lib/patchagent" {
		t.Errorf("defaults lost: %+v", cfg)
	}
}

// tgARN is a well-formed target group ARN.
const tgARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"

func TestParseConfigRefusesBadInput(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // each must appear in the error, in this order
	}{
		{"empty file", "", []string{"app.name: required"}},
		{"unknown top-level key", "app: {name: a}\nfirewal: {}\n", []string{"c.yaml:line 2: firewal: unknown key"}},
		{"unknown nested key", "app:\n  name: a\n  nmae: b\n", []string{"line 3: app.nmae: unknown key (known keys: dir, ecosystem, name, npm, pm2, pm2_home, user)"}},
		{"wrong type int", "app: {name: a}\ntraffic:\n  ports: [https]\n", []string{"line 3: traffic.ports[0]: want an integer, got the string \"https\""}},
		{"scalar for list", "app: {name: a}\ntraffic:\n  ports: 443\n", []string{"line 3: traffic.ports: want a list, got the number 443"}},
		{"number for string", "app:\n  name: 123\n", []string{"line 2: app.name: want a string, got the number 123 (quote it)"}},
		{"bool for string", "app:\n  name: true\n", []string{"app.name: want a string"}},
		{"duration without unit", "app: {name: a}\ndrain:\n  timeout: 30\n", []string{"line 3: drain.timeout: want a duration string like \"30s\", got the number 30"}},
		{"bad duration", "app: {name: a}\ndrain:\n  idle: 1x\n", []string{"line 3: drain.idle: want a duration like \"30s\""}},
		{"zero timeout", "app: {name: a}\ndrain:\n  timeout: 0s\n", []string{"line 3: drain.timeout: must be greater than 0"}},
		{"negative min_wait", "app: {name: a}\ndrain:\n  min_wait: -1s\n", []string{"line 3: drain.min_wait: must not be negative"}},
		{"negative keepalive_idle", "app: {name: a}\ndrain:\n  keepalive_idle: -1s\n", []string{"line 3: drain.keepalive_idle: must not be negative"}},
		{"keepalive_idle over idle", "app: {name: a}\ndrain:\n  idle: 500ms\n  keepalive_idle: 2s\n", []string{"line 4: drain.keepalive_idle: 2s is longer than drain.idle 500ms"}},
		{"port out of range", "app: {name: a}\ntraffic:\n  ports: [0, 65536]\n", []string{"traffic.ports[0]: 0 is not a TCP port", "traffic.ports[1]: 65536 is not a TCP port"}},
		{"ssh port", "app: {name: a}\ntraffic:\n  ports: [22]\n", []string{"traffic.ports[0]: 22 is SSH"}},
		{"duplicate port", "app: {name: a}\ntraffic:\n  ports: [443, 443]\n", []string{"traffic.ports[1]: 443 is listed twice"}},
		{"no ports", "app: {name: a}\ntraffic:\n  ports: []\n", []string{"traffic.ports: at least one port"}},
		{"bad action", "app: {name: a}\ntraffic:\n  action: accept\n", []string{"line 3: traffic.action: \"accept\": want reject or drop"}},
		{"health not loopback", "app: {name: a}\nhealth:\n  url: http://example.com/h\n", []string{"line 3: health.url: host \"example.com\" is not loopback"}},
		{"health host not a host (healthcheck's own check, at load time)", "app: {name: a}\nhealth:\n  host: app.example/x\n", []string{"health.host: \"app.example/x\" is not a host[:port]"}},
		{"health not url", "app: {name: a}\nhealth:\n  url: localhost:443\n", []string{"health.url: \"localhost:443\": scheme must be http or https"}},
		{"bad status", "app: {name: a}\nhealth:\n  expect_status: [700]\n", []string{"health.expect_status[0]: status range \"700\""}},
		{"bad on_failure", "app: {name: a}\nexit:\n  on_failure: maybe\n", []string{"exit.on_failure: \"maybe\""}},
		{"relative dir", "app:\n  name: a\n  dir: srv/app\n", []string{"line 3: app.dir: \"srv/app\" must be an absolute path"}},
		{"app name all", "app:\n  name: all\n", []string{"app.name: \"all\" is not a usable pm2 app name"}},
		{"relative command", "app: {name: a}\nsteps:\n  pre_commands: [[leave]]\n", []string{"steps.pre_commands[0]: want an argv list"}},
		{"duplicate key", "app:\n  name: a\n  name: b\n", []string{"app.name"}},
		{"syntax error", "app:\n  name: [a\n", []string{"c.yaml:line "}},
		{"not a mapping", "- a\n- b\n", []string{"(top level): want a mapping of keys"}},
		{"second document", "app: {name: a}\n---\ntraffic:\n  ports: [22]\n", []string{"c.yaml:line 2: (yaml): a second YAML document starts here"}},
		{"second document, empty", "app: {name: a}\n\n--- # more\n", []string{"c.yaml:line 3: (yaml): a second YAML document starts here"}},
		{"second document after the end marker", "app: {name: a}\n...\n---\napp: {name: b}\n", []string{"c.yaml:line 3: (yaml): a second YAML document"}},
		{"syntax error in the second document", "app: {name: a}\n---\napp: [b\n", []string{"c.yaml:line ", "(yaml)"}},
		{"section not a mapping", "app: web\n", []string{"line 1: app: want a mapping of keys, got the string \"web\""}},
		{"state dir in the app dir", "app:\n  name: a\n  dir: /srv/app\ndaemon:\n  state_dir: /srv/app/.patchagent\n", []string{"daemon.state_dir: \"/srv/app/.patchagent\" is inside app.dir \"/srv/app\", which the app user controls"}},
		{"socket in PM2_HOME", "app:\n  name: a\n  pm2_home: /home/node/.pm2\ndaemon:\n  socket: /home/node/.pm2/pa.sock\n", []string{"daemon.socket: \"/home/node/.pm2/pa.sock\" is inside app.pm2_home"}},
		{"bad metrics listen", "app: {name: a}\ndaemon:\n  metrics_listen: nowhere\n", []string{"daemon.metrics_listen: \"nowhere\" is not host:port"}},
		{"aws target group not an ARN", "app: {name: a}\nlb:\n  aws:\n    target_groups: [web]\n", []string{"lb.aws.target_groups[0]: \"web\" is not a target group ARN"}},
		{"aws target group twice", "app: {name: a}\nlb:\n  aws:\n    target_groups: [" + tgARN + ", " + tgARN + "]\n", []string{"lb.aws.target_groups[1]: \"" + tgARN + "\" is named twice"}},
		{"aws endpoints without target groups", "app: {name: a}\nlb:\n  aws:\n    endpoints: {elbv2: \"ftp://x\"}\n", []string{"lb.aws.target_groups: empty", "lb.aws.endpoints.elbv2: \"ftp://x\" is not an http(s) base URL"}},
		{"aws min_healthy", "app: {name: a}\nlb:\n  aws:\n    target_groups: [" + tgARN + "]\n    min_healthy: 150%\n", []string{"lb.aws.min_healthy: \"150%\": a percent is at most 100%"}},
		{"aws min_healthy not a number", "app: {name: a}\nlb:\n  aws:\n    target_groups: [" + tgARN + "]\n    min_healthy: half\n", []string{"lb.aws.min_healthy: \"half\": want a count"}},
		{"aws target groups auto inside a list", "app: {name: a}\nlb:\n  aws:\n    target_groups: [auto]\n", []string{"\"auto\" is not a target group ARN: write target_groups: auto, not a list"}},
		{"aws target groups a scalar other than auto", "app: {name: a}\nlb:\n  aws:\n    target_groups: " + tgARN + "\n", []string{"want a list of target group ARNs or \"auto\""}},
		{"aws standby", "app: {name: a}\nlb:\n  aws:\n    target_groups: auto\n    standby: always\n    endpoints: {autoscaling: \"x\"}\n", []string{"lb.aws.standby: \"always\": want auto or never", "lb.aws.endpoints.autoscaling: \"x\" is not an http(s) base URL"}},
		{"aws with the readiness endpoint", "app: {name: a}\nlb:\n  health_listen: 0.0.0.0:8742\n  aws:\n    target_groups: [" + tgARN + "]\n", []string{"lb.aws: set with lb.health_listen or lb.haproxy"}},
		{"haproxy socket not a socket", "app: {name: a}\nlb:\n  haproxy: {socket: haproxy.sock, backend: be, server: n1}\n", []string{"lb.haproxy.socket: \"haproxy.sock\" is neither an absolute unix socket path nor host:port"}},
		{"haproxy socket and sockets", "app: {name: a}\nlb:\n  haproxy: {socket: /run/h.sock, sockets: [\"10.0.0.5:9999\"], backend: be, server: n1}\n", []string{"lb.haproxy.sockets: set with lb.haproxy.socket"}},
		{"haproxy sockets", "app: {name: a}\nlb:\n  haproxy: {sockets: [\"10.0.0.5:9999\", lb2, \"10.0.0.5:9999\"], backend: be, server: n1}\n", []string{"lb.haproxy.sockets[1]: \"lb2\" is neither", "lb.haproxy.sockets[2]: \"10.0.0.5:9999\" is lb.haproxy.sockets[0] already"}},
		{"haproxy without a socket", "app: {name: a}\nlb:\n  haproxy: {backend: be, server: n1}\n", []string{"lb.haproxy.socket: \"\" is neither"}},
		{"haproxy servers with backend", "app: {name: a}\nlb:\n  haproxy: {socket: /run/h.sock, backend: be, servers: [be/n1]}\n", []string{"lb.haproxy.servers: set with lb.haproxy.backend or server"}},
		{"haproxy servers", "app: {name: a}\nlb:\n  haproxy: {socket: /run/h.sock, servers: [be/n1, n1, \"be/n 1\", be/n1]}\n", []string{"lb.haproxy.servers[1]: \"n1\" is not an HAProxy backend/server", "lb.haproxy.servers[2]: \"be/n 1\" is not", "lb.haproxy.servers[3]: \"be/n1\" is lb.haproxy.servers[0] already"}},
		{"every problem at once", "app:\n  nmae: a\ntraffic:\n  ports: [0]\n  action: x\ndrain:\n  idle: 3\n",
			[]string{"line 1: app.name: required", "line 2: app.nmae: unknown key", "line 4: traffic.ports[0]: 0 is not a TCP port", "line 5: traffic.action", "line 7: drain.idle"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfig("c.yaml", []byte(tt.in))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want a *ConfigError, got %v", err)
			}
			msg := err.Error()
			pos := 0
			for _, w := range tt.want {
				i := strings.Index(msg[pos:], w)
				if i < 0 {
					t.Fatalf("error does not contain %q (in order):\n%s", w, msg)
				}
				pos += i + len(w)
			}
		})
	}
}

// TestParseConfigOneDocument: a document start or end marker around the
// one document is fine.
func TestParseConfigOneDocument(t *testing.T) {
	for _, in := range []string{"---\napp: {name: a}\n", "app: {name: a}\n...\n", "--- # config\napp: {name: a}\n...\n# end\n"} {
		if cfg, err := ParseConfig("c.yaml", []byte(in)); err != nil || cfg.App.Name != "a" {
			t.Errorf("%q: %v", in, err)
		}
	}
}

// TestReadConfig: a config on stdin is parsed as a file's is, and bounded
// in size as a file is.
func TestReadConfig(t *testing.T) {
	cfg, err := ReadConfig("<stdin>", strings.NewReader("app:\n  name: web\n"))
	if err != nil || cfg.App.Name != "web" {
		t.Fatalf("ReadConfig = %+v, %v", cfg.App, err)
	}
	_, err = ReadConfig("<stdin>", strings.NewReader("app:\n  nmae: web\n"))
	if err == nil || !strings.Contains(err.Error(), "<stdin>:line 2: app.nmae: unknown key") || exitCode(err) != ExitUsage {
		t.Fatalf("bad config: %v (exit %d)", err, exitCode(err))
	}
	big := "app:\n  name: web\n#" + strings.Repeat("x", maxConfigSize) + "\n"
	if _, err := ReadConfig("<stdin>", strings.NewReader(big)); err == nil || !strings.Contains(err.Error(), "larger than 1048576 bytes") {
		t.Fatalf("oversized config: %v", err)
	}
}

func TestLoadConfigFileChecks(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(good, []byte("app:\n  name: web\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	me := uint32(os.Geteuid())
	if _, err := loadConfig(good, me); err != nil {
		t.Fatalf("good file refused: %v", err)
	}
	if _, err := loadConfig(good, me+1); err == nil || !strings.Contains(err.Error(), "must be owned by uid") {
		t.Fatalf("file of another owner accepted: %v", err)
	}
	if err := os.Chmod(good, 0o620); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(good, me); err == nil || !strings.Contains(err.Error(), "group/world-writable") {
		t.Fatalf("group-writable file accepted: %v", err)
	}
	if err := os.Chmod(good, 0o602); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(good, me); err == nil || !strings.Contains(err.Error(), "group/world-writable") {
		t.Fatalf("world-writable file accepted: %v", err)
	}
	if _, err := loadConfig(filepath.Join(dir, "missing.yaml"), me); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	if _, err := loadConfig(dir, me); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Fatalf("directory accepted: %v", err)
	}
}

func TestConfigYAMLRoundTrips(t *testing.T) {
	cfg, err := ParseConfig("c.yaml", []byte("app:\n  name: web\nhealth:\n  expect_status: [200, \"301-302\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseConfig("printed", cfg.YAML())
	if err != nil {
		t.Fatalf("check-config output does not load back: %v\n%s", err, cfg.YAML())
	}
	if diff := cmp.Diff(cfg, again); diff != "" {
		t.Fatalf("round trip (-want +got):\n%s", diff)
	}
}

// TestConfigAutoTargetGroups: target_groups auto is read as the scalar,
// printed back as it, and kept apart from a list of ARNs.
func TestConfigAutoTargetGroups(t *testing.T) {
	cfg, err := ParseConfig("c.yaml", []byte("app: {name: web}\nlb:\n  aws:\n    target_groups: auto\n    standby: never\n    decrement_desired_capacity: false\n"))
	if err != nil {
		t.Fatal(err)
	}
	a := cfg.LB.AWS
	if !a.TargetGroups.Auto() || a.Standby != "never" || a.DecrementDesiredCapacity {
		t.Fatalf("lb.aws = %+v", a)
	}
	if !strings.Contains(string(cfg.YAML()), "target_groups: auto\n") {
		t.Fatalf("printed:\n%s", cfg.YAML())
	}
	again, err := ParseConfig("printed", cfg.YAML())
	if err != nil || !cmp.Equal(cfg, again) {
		t.Fatalf("round trip: %v %s", err, cmp.Diff(cfg, again))
	}
	if d := DefaultConfig().LB.AWS; d.Standby != "auto" || !d.DecrementDesiredCapacity {
		t.Fatalf("defaults: %+v", d)
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("app:\n  name: web\n"))
	f.Add([]byte("app: {name: a}\ntraffic:\n  ports: [443, 0]\n  action: drop\ndrain: {timeout: 1s}\n"))
	f.Add([]byte("health:\n  expect_status: [\"200-299\", 301]\n  url: http://[::1]:443/x\n"))
	f.Add([]byte("steps:\n  pre_commands: [[/bin/true], []]\n"))
	f.Add([]byte("a: &x {b: 1}\nc: *x\n"))
	f.Add([]byte("app: {name: a}\nlb:\n  aws:\n    target_groups: auto\n"))
	f.Add([]byte("app: {name: a}\n---\ntraffic:\n  ports: [22]\n"))
	f.Add([]byte("--- \napp: {name: a}\n...\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := ParseConfig("fuzz.yaml", data)
		if err == nil {
			// A second document after an accepted one is refused, not ignored.
			_, err2 := ParseConfig("fuzz.yaml", append(append([]byte(nil), data...), "\n---\ntraffic:\n  ports: [22]\n"...))
			if err2 == nil || !strings.Contains(err2.Error(), "a second YAML document") {
				t.Fatalf("a second document after an accepted config: %v", err2)
			}
		}
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Problems) == 0 {
				t.Fatalf("error is not a ConfigError with problems: %v", err)
			}
			return
		}
		// Anything accepted is valid and prints back to the same config.
		if ps := cfg.Validate(); len(ps) != 0 {
			t.Fatalf("accepted an invalid config: %v", ps)
		}
		again, err := ParseConfig("printed", cfg.YAML())
		if err != nil {
			t.Fatalf("accepted config does not round-trip: %v", err)
		}
		if !cmp.Equal(cfg, again) {
			t.Fatalf("round trip changed the config: %s", cmp.Diff(cfg, again))
		}
	})
}

func TestParseMinHealthy(t *testing.T) {
	for in, want := range map[string][2]int{"0": {0, 0}, "1": {1, 0}, "3": {3, 0}, "50%": {0, 50}, "100%": {0, 100}} {
		if c, p, err := parseMinHealthy(in); err != nil || c != want[0] || p != want[1] {
			t.Errorf("%q: %d %d %v, want %v", in, c, p, err, want)
		}
	}
	for _, in := range []string{"", "-1", "01", "1.5", "%", "101%", "x%"} {
		if _, _, err := parseMinHealthy(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// TestHAProxyServersInEachInstance: lb.haproxy names the node's servers
// (backend and server, or servers) and the instances (socket, or
// sockets): each server is driven in each instance.
func TestHAProxyServersInEachInstance(t *testing.T) {
	for _, tt := range []struct {
		yaml string
		want []string
	}{
		{"{socket: /run/h.sock, backend: be, server: n1}", []string{"/run/h.sock be/n1"}},
		{"{sockets: [\"10.0.0.5:9999\", \"10.0.0.6:9999\"], backend: be, server: n1}", []string{"10.0.0.5:9999 be/n1", "10.0.0.6:9999 be/n1"}},
		{"{sockets: [\"10.0.0.5:9999\", \"10.0.0.6:9999\"], servers: [web/n1, api/n1]}", []string{"10.0.0.5:9999 web/n1", "10.0.0.5:9999 api/n1", "10.0.0.6:9999 web/n1", "10.0.0.6:9999 api/n1"}},
	} {
		cfg, err := ParseConfig("c.yaml", []byte("app: {name: a}\nlb:\n  haproxy: "+tt.yaml+"\n"))
		if err != nil {
			t.Fatalf("%s: %v", tt.yaml, err)
		}
		var got []string
		for _, h := range haproxies(cfg.LB.HAProxy) {
			got = append(got, h.Socket+" "+h.Backend+"/"+h.Server)
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: %q, want %q", tt.yaml, got, tt.want)
		}
	}
}
