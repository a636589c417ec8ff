package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/patchagent/patchagent/healthcheck"
)

// DefaultConfigPath is where the packaged config lives.
const DefaultConfigPath = "/etc/patchagent/config.yaml"

// Config is what operators write in /etc/patchagent/config.yaml. Only
// app.name is required; every default reproduces AWS's tutorial.
type Config struct {
	App     AppConfig     `yaml:"app"`
	Traffic TrafficConfig `yaml:"traffic"`
	Drain   DrainConfig   `yaml:"drain"`
	Health  HealthConfig  `yaml:"health"`
	Exit    ExitConfig    `yaml:"exit"`
	Post    PostConfig    `yaml:"post"`
	Steps   StepsConfig   `yaml:"steps"`
	Daemon  DaemonConfig  `yaml:"daemon"`
	LB      LBConfig      `yaml:"lb"`
}

// AppConfig names the application and how pm2 runs it.
type AppConfig struct {
	// The pm2 process name (required).
	Name string `yaml:"name"`
	// The user whose pm2 runs the app (default: the owner of dir).
	User string `yaml:"user"`
	// The app's directory, holding package.json (needed by post; default none).
	Dir string `yaml:"dir"`
	// The pm2 executable (default: found on the app user's usual paths).
	PM2 string `yaml:"pm2"`
	// The app user's PM2_HOME (default: <home of user>/.pm2).
	PM2Home string `yaml:"pm2_home"`
	// The npm executable post runs (default: next to the node pm2 uses, else /usr/bin/npm).
	NPM string `yaml:"npm"`
	// How to start the app when pm2 no longer knows it (default none).
	Ecosystem string `yaml:"ecosystem"`
}

// TrafficConfig says which new connections the block refuses, and how.
type TrafficConfig struct {
	// The app's TCP ports (default [443]).
	Ports []int `yaml:"ports"`
	// reject (TCP reset: clients and load balancers fail over at once) or
	// drop (as the tutorial; clients wait for their connect timeout) (default reject).
	Action string `yaml:"action"`
	// Also block IPv6 (default true).
	IPv6 bool `yaml:"ipv6"`
	// How long an iptables call may wait for the xtables lock (default 5s).
	LockWait Duration `yaml:"lock_wait"`
}

// DrainConfig bounds the wait for in-flight requests after the block.
type DrainConfig struct {
	// Give up waiting and go on with a warning after this long (default 30s).
	Timeout Duration `yaml:"timeout"`
	// A connection that has not sent a request yet, or that the drain has
	// seen nothing on, counts as drained once idle this long (default 1s).
	Idle Duration `yaml:"idle"`
	// A keep-alive connection on which the drain saw a request answered
	// counts as drained once idle this long (default 100ms). Go's and
	// Node's servers close such a connection at once in a graceful
	// shutdown; keep it above the clients' round-trip time.
	KeepAliveIdle Duration `yaml:"keepalive_idle"`
	// Keep draining at least this long after the block: behind a load
	// balancer, its health-check interval x unhealthy threshold (default 0s).
	MinWait Duration `yaml:"min_wait"`
	// How often the connections are polled (default 200ms).
	Interval Duration `yaml:"interval"`
}

// HealthConfig is the application's health check (the tutorial's curl).
type HealthConfig struct {
	// The URL probed over loopback (default http://localhost:443/health-check).
	URL string `yaml:"url"`
	// Per-attempt timeout, the tutorial's curl -m 10 (default 10s).
	Timeout Duration `yaml:"timeout"`
	// Skip TLS verification, the tutorial's curl -k (default true).
	Insecure bool `yaml:"insecure"`
	// A CA bundle to verify the app's certificate with (default none).
	CAFile string `yaml:"ca_file"`
	// Host header and TLS server name, when the certificate is for the public name (default none).
	Host string `yaml:"host"`
	// The User-Agent sent, the tutorial's -A "" (default empty: none sent).
	UserAgent string `yaml:"user_agent"`
	// Accepted status codes: numbers or ranges like "200-299" (default 200-299).
	ExpectStatus []StatusRange `yaml:"expect_status"`
	// A substring the body must contain (default none).
	ExpectBody string `yaml:"expect_body"`
	// Follow redirects (at most 5) instead of failing on a 3xx (default false).
	FollowRedirects bool `yaml:"follow_redirects"`
	// Pause after an attempt the app answered or that timed out (default
	// 250ms). A refused connection (nothing listens yet) is retried after
	// 20ms, or this interval if shorter.
	Interval Duration `yaml:"interval"`
	// Give up after this long (default 2m).
	Deadline Duration `yaml:"deadline"`
	// Consecutive successes required (default 1).
	Successes int `yaml:"successes"`
}

// ExitConfig says what exit does when the app does not come back healthy.
type ExitConfig struct {
	// keep_blocked (fail closed) or unblock (the tutorial's order) (default keep_blocked).
	OnFailure string `yaml:"on_failure"`
	// Undo this cycle's dependency update if the app is unhealthy (default true).
	Rollback bool `yaml:"rollback"`
	// exit returns the node once every instance has been up, without a
	// restart, for the app's own pm2 min_uptime (1s when the app sets
	// none), or for this long if longer, for apps that crash late
	// (default 0s: pm2's alone).
	MinUptime Duration `yaml:"min_uptime"`
}

// PostConfig configures the post-install phase.
type PostConfig struct {
	NPM NPMConfig `yaml:"npm"`
	// Snapshots of the dependency tree kept, one per cycle (default 3).
	KeepSnapshots int `yaml:"keep_snapshots"`
}

// NPMConfig configures the dependency update of post.
type NPMConfig struct {
	// Run npm update in app.dir (default true).
	Enabled bool `yaml:"enabled"`
	// Also upgrade across major versions (default false).
	Major bool `yaml:"major"`
	// Deadline of the whole update (default 15m).
	Timeout Duration `yaml:"timeout"`
	// npm's per-request timeout (default 30s; npm's own 5m makes a silent
	// registry hang the update for 15 minutes and more).
	FetchTimeout Duration `yaml:"fetch_timeout"`
	// npm's retries of a failed request (default 1).
	FetchRetries int `yaml:"fetch_retries"`
}

// StepsConfig holds the tutorial's "other scenarios".
type StepsConfig struct {
	// systemd units stopped in pre and started again in exit (default none).
	StopUnits []string `yaml:"stop_units"`
	// argv lists run in pre (default none).
	PreCommands [][]string `yaml:"pre_commands"`
	// argv lists run in exit (default none).
	ExitCommands [][]string `yaml:"exit_commands"`
}

// DaemonConfig configures the service and where state lives.
// LBConfig is the load balancer's side of the patch window (issue 15):
// the readiness endpoint the LB's health check targets instead of the
// app's, served by the daemon. pre takes the node out of rotation before
// the block; exit puts it back after the unblock and waits for the LB.
type LBConfig struct {
	// Where the daemon serves the readiness endpoint, e.g. 0.0.0.0:8742
	// (default "": none, nothing waits for an LB).
	HealthListen string `yaml:"health_listen"`
	// Its path (default /ready).
	Path string `yaml:"path"`
	// The LB's health check interval (default 10s): a checker address not
	// seen for two of them no longer counts.
	Interval Duration `yaml:"interval"`
	// The LB's thresholds: failed checks in a row that take the node out
	// (default 2), passed ones that put it back (default 2).
	UnhealthyThreshold int `yaml:"unhealthy_threshold"`
	HealthyThreshold   int `yaml:"healthy_threshold"`
	// The longest pre waits for the LB to take the node out, and exit for
	// it to route to the node again (default 2m).
	Deadline Duration `yaml:"deadline"`
	// HAProxy, instead of the readiness endpoint: its runtime API.
	HAProxy HAProxyConfig `yaml:"haproxy"`
	// AWS, instead of either: the instance's ELBv2 target groups.
	AWS AWSConfig `yaml:"aws"`
}

// AWSConfig takes the instance out of ELBv2 (ALB/NLB) target groups:
// pre records every registration of the instance in them (the port
// included) in the state file, deregisters them and waits until each
// group reports the target draining; exit registers exactly those again
// and waits until each reports it healthy. In an Auto Scaling group whose
// health check type is ELB, pre also puts the instance on Standby and
// exit takes it out again. The instance is found from IMDSv2; credentials
// come from the instance profile.
type AWSConfig struct {
	// TargetGroups are the target groups' ARNs, or auto: those attached to
	// the instance's Auto Scaling group (default none: not used).
	TargetGroups TargetGroupList `yaml:"target_groups"`
	// Standby is auto (the default: Standby when the instance's Auto
	// Scaling group checks health with ELB) or never.
	Standby string `yaml:"standby"`
	// DecrementDesiredCapacity is EnterStandby's
	// ShouldDecrementDesiredCapacity (default true: the group launches no
	// replacement; pre lowers its minimum size for the patch if it must,
	// and exit restores it). False: the group launches a replacement, and
	// leaving Standby raises the desired capacity by one.
	DecrementDesiredCapacity bool `yaml:"decrement_desired_capacity"`
	// MinHealthy is the capacity gate: pre refuses (nothing changed) when
	// taking this instance out would leave a group fewer healthy targets
	// than this, a count or a percent of its targets, draining ones
	// included ("50%"; targets past the deregistration delay cannot count:
	// the count is the robust form)
	// (default "1": never the last healthy one; "0": no gate).
	MinHealthy string `yaml:"min_healthy"`
	// HealthyTimeout bounds exit's wait for the instance to be back: off
	// Standby (EnteringStandby lasts the target groups' deregistration
	// delay), and healthy in every group (ALB's default health check
	// takes 5 × 30 s) (default 10m; lb.deadline bounds pre's wait).
	HealthyTimeout Duration `yaml:"healthy_timeout"`
	// Endpoints other than AWS's (VPC endpoints with their own names,
	// tests), each a base URL (default "": AWS's).
	Endpoints AWSEndpoints `yaml:"endpoints"`
}

// aws reports whether the node leaves ELBv2 target groups.
func (c LBConfig) aws() bool { return len(c.AWS.TargetGroups) > 0 }

// wait bounds pre's wait for the LB (out) or exit's (in); zero without an
// LB.
func (c LBConfig) wait(out bool) Duration {
	switch {
	case c.aws() && !out:
		return c.AWS.HealthyTimeout
	case c.aws() || c.HealthListen != "" || c.HAProxy.set():
		return c.Deadline
	}
	return 0
}

// AWSEndpoints are base URLs of the instance metadata service, the ELBv2,
// Auto Scaling and EC2 APIs.
type AWSEndpoints struct {
	IMDS        string `yaml:"imds"`
	ELBv2       string `yaml:"elbv2"`
	AutoScaling string `yaml:"autoscaling"`
	EC2         string `yaml:"ec2"`
}

// AutoTargetGroups is lb.aws.target_groups' value for the target groups
// of the instance's Auto Scaling group.
const AutoTargetGroups = "auto"

// TargetGroupList is a list of target group ARNs, or the scalar auto
// (held as the one-element list [auto]).
type TargetGroupList []string

// Auto reports whether the list is auto.
func (l TargetGroupList) Auto() bool { return len(l) == 1 && l[0] == AutoTargetGroups }

// ARNs are the target groups named, none for auto.
func (l TargetGroupList) ARNs() []string {
	if l.Auto() {
		return nil
	}
	return l
}

// UnmarshalYAML reads a sequence of ARNs or the scalar auto.
func (l *TargetGroupList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		if n.Tag != "!!str" || n.Value != AutoTargetGroups {
			return fmt.Errorf("want a list of target group ARNs or %q, got %s", AutoTargetGroups, describe(n))
		}
		*l = TargetGroupList{AutoTargetGroups}
		return nil
	}
	var arns []string
	if err := n.Decode(&arns); err != nil {
		return err
	}
	if slices.Contains(arns, AutoTargetGroups) {
		return fmt.Errorf("%q is not a target group ARN: write target_groups: %s, not a list", AutoTargetGroups, AutoTargetGroups)
	}
	*l = arns
	return nil
}

// MarshalYAML writes auto as the scalar it was read from.
func (l TargetGroupList) MarshalYAML() (any, error) {
	if l.Auto() {
		return AutoTargetGroups, nil
	}
	return []string(l), nil
}

// backend names how the node leaves the load balancer, for status ("" for
// none).
func (c LBConfig) backend() string {
	switch {
	case c.AWS.TargetGroups.Auto():
		return fmt.Sprintf("AWS ELBv2, the Auto Scaling group's target groups, min_healthy %s, standby %s", c.AWS.MinHealthy, c.AWS.Standby)
	case c.aws():
		return fmt.Sprintf("AWS ELBv2, %d target group(s), min_healthy %s, standby %s", len(c.AWS.TargetGroups), c.AWS.MinHealthy, c.AWS.Standby)
	case c.HAProxy.set():
		return fmt.Sprintf("HAProxy runtime API %s, server %s", strings.Join(c.HAProxy.sockets(), ", "), strings.Join(c.HAProxy.servers(), ", "))
	case c.HealthListen != "":
		return fmt.Sprintf("readiness endpoint %s%s", c.HealthListen, c.Path)
	}
	return ""
}

// plan is what lb-out (out) or lb-in does, for a dry run.
func (c LBConfig) plan(out bool) string {
	if a := c.AWS; c.aws() {
		groups := fmt.Sprintf("%d target group(s)", len(a.TargetGroups))
		if a.TargetGroups.Auto() {
			groups = "the target groups of its Auto Scaling group"
		}
		standby, back := "", ""
		if a.Standby == "auto" {
			standby = fmt.Sprintf(", then, in an Auto Scaling group that checks health with ELB, put it on Standby (decrement desired capacity: %t; the minimum size lowered for it if need be)", a.DecrementDesiredCapacity)
			back = "take the instance off Standby if pre put it there, "
		}
		if out {
			return fmt.Sprintf("record this instance's registrations in %s in the state file, refuse if a group would keep fewer healthy targets than min_healthy %s, deregister them, wait until each group reports them draining (at most %s)%s", groups, a.MinHealthy, c.Deadline, standby)
		}
		return fmt.Sprintf("%sregister the recorded target group registrations again, wait until each group reports them healthy (at most lb.aws.healthy_timeout %s), restore a lowered minimum size", back, a.HealthyTimeout)
	}
	if h := c.HAProxy; h.set() {
		apis, servers := strings.Join(h.sockets(), ", "), strings.Join(h.servers(), ", ")
		if out {
			return fmt.Sprintf("record the admin state of server %s on HAProxy's runtime API %s in the state file (one set to maint or drain before is left so); set it to drain; wait until HAProxy reports it out of rotation (DRAIN, MAINT, NOLB or DOWN; its sessions are left to the drain) (at most %s)", servers, apis, c.Deadline)
		}
		return fmt.Sprintf("set server %s state ready on HAProxy's runtime API %s, unless pre found it set to maint or drain; wait until HAProxy reports it UP (\"no check\" without a health check) (at most %s)", servers, apis, c.Deadline)
	}
	if out {
		return fmt.Sprintf("the readiness endpoint on %s%s answers 503; wait until each load balancer checker was told so %d time(s) in a row (at most %s)", c.HealthListen, c.Path, c.UnhealthyThreshold, c.Deadline)
	}
	return fmt.Sprintf("the readiness endpoint answers as the app again; wait until each load balancer checker saw it pass %d time(s) in a row (at most %s)", c.HealthyThreshold, c.Deadline)
}

// HAProxyConfig names this node in an HAProxy and its runtime API (a
// stats socket at level admin): pre sets the server to drain and waits
// until HAProxy reports it drained, exit sets it ready and waits for UP.
type HAProxyConfig struct {
	// The runtime API: a unix socket path or host:port (default "": not
	// used).
	Socket string `yaml:"socket"`
	// Or the runtime APIs of several HAProxy instances that each balance
	// to the node (an HA pair), the same backend and server in each; not
	// with socket.
	Sockets []string `yaml:"sockets"`
	// The backend and server this node is in HAProxy's configuration.
	Backend string `yaml:"backend"`
	Server  string `yaml:"server"`
	// Or each backend/server this node is in (one per backend it serves),
	// in every instance; not with backend and server.
	Servers []string `yaml:"servers"`
}

// set reports whether any of lb.haproxy is set.
func (h HAProxyConfig) set() bool {
	return h.Socket != "" || len(h.Sockets) > 0 || h.Backend != "" || h.Server != "" || len(h.Servers) > 0
}

// servers are the backend/server names to drive in each instance:
// backend's and server's, or servers.
func (h HAProxyConfig) servers() []string {
	if len(h.Servers) > 0 {
		return h.Servers
	}
	return []string{h.Backend + "/" + h.Server}
}

// sockets are the runtime APIs to drive: socket's, or sockets.
func (h HAProxyConfig) sockets() []string {
	if h.Socket != "" {
		return []string{h.Socket}
	}
	return h.Sockets
}

type DaemonConfig struct {
	// The control socket (default /run/patchagent/patchagent.sock).
	Socket string `yaml:"socket"`
	// Where the state file and the phase lock live (default /var/lib/patchagent).
	StateDir string `yaml:"state_dir"`
	// Address of /metrics (default 127.0.0.1:8741).
	MetricsListen string `yaml:"metrics_listen"`
	// node_exporter's textfile collector directory, for runs without the daemon
	// (default /var/lib/prometheus/node-exporter).
	TextfileDir string `yaml:"textfile_dir"`
	// Report a node blocked longer than this with no phase activity (default 2h).
	MaxOutOfService Duration `yaml:"max_out_of_service"`
	// Run exit automatically when max_out_of_service passes (default false).
	AutoRecover bool `yaml:"auto_recover"`
	// How often the daemon checks the block and the dead-man timer
	// (default 5s; at most half the systemd watchdog).
	WatchInterval Duration `yaml:"watch_interval"`
	// Where the kernel's boot id is read, to tell a reboot (default
	// /proc/sys/kernel/random/boot_id; a test node sets its own).
	BootIDFile string `yaml:"boot_id_file"`
	// How long the daemon stays up degraded when the node lacks what the
	// config names (the app user, pm2, the CA file), as it may at boot
	// until LDAP/SSSD or a disk is there; then, with no cycle open, it
	// exits 2 and systemd leaves it stopped. 0 waits for ever (default 10m).
	NodeWait Duration `yaml:"node_wait"`
}

// DefaultConfig reproduces the tutorial: port 443, its curl health check.
func DefaultConfig() Config {
	return Config{
		Traffic: TrafficConfig{Ports: []int{443}, Action: "reject", IPv6: true, LockWait: Duration(5 * time.Second)},
		Drain:   DrainConfig{Timeout: Duration(30 * time.Second), Idle: Duration(time.Second), KeepAliveIdle: Duration(100 * time.Millisecond), Interval: Duration(200 * time.Millisecond)},
		Health: HealthConfig{
			URL:          "http://localhost:443/health-check",
			Timeout:      Duration(healthcheck.DefaultTimeout),
			Insecure:     true,
			ExpectStatus: defaultExpectStatus(),
			Interval:     Duration(250 * time.Millisecond),
			Deadline:     Duration(2 * time.Minute),
			Successes:    1,
		},
		Exit: ExitConfig{OnFailure: "keep_blocked", Rollback: true},
		Post: PostConfig{
			NPM:           NPMConfig{Enabled: true, Timeout: Duration(15 * time.Minute), FetchTimeout: Duration(30 * time.Second), FetchRetries: 1},
			KeepSnapshots: 3,
		},
		Steps: StepsConfig{
			StopUnits: []string{}, PreCommands: [][]string{}, ExitCommands: [][]string{},
		},
		Daemon: DaemonConfig{
			Socket:          "/run/patchagent/patchagent.sock",
			StateDir:        "/var/lib/patchagent",
			MetricsListen:   "127.0.0.1:8741",
			TextfileDir:     "/var/lib/prometheus/node-exporter",
			MaxOutOfService: Duration(2 * time.Hour),
			BootIDFile:      BootIDFile,
			WatchInterval:   Duration(5 * time.Second),
			NodeWait:        Duration(10 * time.Minute),
		},
		LB: LBConfig{Path: "/ready", Interval: Duration(10 * time.Second), UnhealthyThreshold: 2, HealthyThreshold: 2, Deadline: Duration(2 * time.Minute),
			HAProxy: HAProxyConfig{Sockets: []string{}, Servers: []string{}},
			AWS:     AWSConfig{TargetGroups: TargetGroupList{}, MinHealthy: "1", Standby: "auto", DecrementDesiredCapacity: true, HealthyTimeout: Duration(10 * time.Minute)}},
	}
}

// defaultExpectStatus is healthcheck's default, as the config's type.
func defaultExpectStatus() []StatusRange {
	var rs []StatusRange
	for _, r := range healthcheck.DefaultExpectStatus {
		rs = append(rs, StatusRange{r.Min, r.Max})
	}
	return rs
}

// Duration is a time.Duration written as a Go duration string ("30s").
type Duration time.Duration

// D returns the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

func (d Duration) String() string { return time.Duration(d).String() }

// UnmarshalYAML accepts only Go duration strings: a bare number has no unit.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return fmt.Errorf("want a duration string like \"30s\", got %s", describe(n))
	}
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("want a duration like \"30s\": %w", err)
	}
	*d = Duration(v)
	return nil
}

// MarshalYAML writes the duration string.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// StatusRange is an inclusive range of HTTP status codes.
type StatusRange struct{ Min, Max int }

// Contains reports whether code is in the range.
func (r StatusRange) Contains(code int) bool { return code >= r.Min && code <= r.Max }

func (r StatusRange) String() string {
	if r.Min == r.Max {
		return strconv.Itoa(r.Min)
	}
	return fmt.Sprintf("%d-%d", r.Min, r.Max)
}

// UnmarshalYAML accepts 200, "200" or "200-299".
func (r *StatusRange) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		return fmt.Errorf("want a status code or a range like \"200-299\", got %s", describe(n))
	}
	lo, hi, isRange := strings.Cut(n.Value, "-")
	if !isRange {
		hi = lo
	}
	a, err1 := strconv.Atoi(strings.TrimSpace(lo))
	b, err2 := strconv.Atoi(strings.TrimSpace(hi))
	if err1 != nil || err2 != nil {
		return fmt.Errorf("want a status code or a range like \"200-299\", got %q", n.Value)
	}
	if a < 100 || b > 599 || a > b {
		return fmt.Errorf("status range %q is not within 100-599 and ordered", n.Value)
	}
	*r = StatusRange{a, b}
	return nil
}

// MarshalYAML writes the range as a number or "lo-hi".
func (r StatusRange) MarshalYAML() (any, error) {
	if r.Min == r.Max {
		return r.Min, nil
	}
	return r.String(), nil
}

// ConfigError lists every problem found in a config file at once.
type ConfigError struct {
	Path     string
	Problems []Problem
}

// Problem is one bad key; Line is 0 when the key is not in the file.
type Problem struct {
	Line int
	Key  string
	Msg  string
}

func (p Problem) String() string {
	if p.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", p.Line, p.Key, p.Msg)
	}
	return fmt.Sprintf("%s: %s", p.Key, p.Msg)
}

func (e *ConfigError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config %s: %d problem(s)", e.Path, len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(e.Path)
		b.WriteString(":")
		b.WriteString(p.String())
	}
	return b.String()
}

// LoadConfig reads, checks and validates the config file at path. It
// refuses a file that is not owned by root or is group/world-writable: the
// config names commands that run as root.
// Its errors are configuration errors (exit code 2 in a FailedReport).
func LoadConfig(path string) (Config, error) {
	cfg, err := loadConfig(path, 0)
	if err != nil {
		return Config{}, configError(err)
	}
	return cfg, nil
}

// ReadConfig reads a config from r (check-config --config -, stdin), at
// most as large as a config file, and validates it; name is used in
// messages. There is no file whose owner and mode to check.
func ReadConfig(name string, r io.Reader) (Config, error) {
	cfg, err := readConfig(name, r)
	if err != nil {
		return Config{}, configError(err)
	}
	return cfg, nil
}

func loadConfig(path string, ownerUID uint32) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("loading config: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Config{}, fmt.Errorf("loading config: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return Config{}, fmt.Errorf("loading config %s: not a regular file", path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != ownerUID {
		return Config{}, fmt.Errorf("loading config %s: owned by uid %d, must be owned by uid %d (it names commands run as root)", path, st.Uid, ownerUID)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return Config{}, fmt.Errorf("loading config %s: mode %04o is group/world-writable (it names commands run as root): chmod go-w %s", path, fi.Mode().Perm(), path)
	}
	return readConfig(path, f)
}

// maxConfigSize bounds what is read of a config.
const maxConfigSize = 1 << 20

func readConfig(name string, r io.Reader) (Config, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(r, maxConfigSize+1)); err != nil {
		return Config{}, fmt.Errorf("loading config %s: %w", name, err)
	}
	if buf.Len() > maxConfigSize {
		return Config{}, fmt.Errorf("loading config %s: larger than %d bytes", name, maxConfigSize)
	}
	return ParseConfig(name, buf.Bytes())
}

// ParseConfig decodes data strictly over DefaultConfig and validates it.
// name is used in messages. Every problem is reported at once.
func ParseConfig(name string, data []byte) (Config, error) {
	cfg := DefaultConfig()
	var doc, next yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	err := dec.Decode(&doc)
	// yaml reads one document: what follows a second "---" would be
	// ignored, silently.
	if err == nil {
		if err = dec.Decode(&next); err == nil {
			return Config{}, &ConfigError{Path: name, Problems: []Problem{{Line: next.Line, Key: "(yaml)",
				Msg: "a second YAML document starts here: the config is one document (remove this \"---\" and move what follows into the first)"}}}
		}
	}
	if !errors.Is(err, io.EOF) {
		return Config{}, &ConfigError{Path: name, Problems: []Problem{yamlSyntaxProblem(err)}}
	}
	d := decoder{lines: map[string]int{}}
	if len(doc.Content) > 0 {
		root := doc.Content[0]
		if !(root.Kind == yaml.ScalarNode && root.Tag == "!!null") {
			d.decode(root, reflect.ValueOf(&cfg).Elem(), "")
		}
	}
	for _, p := range cfg.Validate() {
		p.Line = d.line(p.Key)
		d.problems = append(d.problems, p)
	}
	if len(d.problems) > 0 {
		sort.SliceStable(d.problems, func(i, j int) bool { return lineOrder(d.problems[i]) < lineOrder(d.problems[j]) })
		return Config{}, &ConfigError{Path: name, Problems: d.problems}
	}
	return cfg, nil
}

func lineOrder(p Problem) int {
	if p.Line == 0 {
		return 1 << 30
	}
	return p.Line
}

func yamlSyntaxProblem(err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	p := Problem{Key: "(yaml)", Msg: msg}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if n, tail, ok := strings.Cut(rest, ":"); ok {
			if l, err := strconv.Atoi(n); err == nil {
				p.Line, p.Msg = l, strings.TrimSpace(tail)
			}
		}
	}
	return p
}

// decoder walks the YAML tree alongside the Config struct so that each
// problem is reported with its dotted key and line, and decoding goes on
// after a problem to find the others.
type decoder struct {
	problems []Problem
	lines    map[string]int
}

func (d *decoder) add(n *yaml.Node, key, format string, args ...any) {
	d.problems = append(d.problems, Problem{Line: n.Line, Key: key, Msg: fmt.Sprintf(format, args...)})
}

// line returns the line of key or of its nearest parent in the file.
func (d *decoder) line(key string) int {
	for k := key; k != ""; {
		if l, ok := d.lines[k]; ok {
			return l
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

func (d *decoder) decode(n *yaml.Node, v reflect.Value, key string) {
	if n.Kind == yaml.AliasNode {
		d.add(n, keyOr(key), "YAML aliases are not supported in this file")
		return
	}
	if v.Kind() == reflect.Struct && !reflect.PointerTo(v.Type()).Implements(unmarshalerType) {
		if n.Kind != yaml.MappingNode {
			d.add(n, keyOr(key), "want a mapping of keys, got %s", describe(n))
			return
		}
		fields := yamlFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			sub := join(key, k.Value)
			if seen[k.Value] {
				d.add(k, sub, "key given twice")
				continue
			}
			seen[k.Value] = true
			idx, ok := fields[k.Value]
			if !ok {
				d.add(k, sub, "unknown key (known keys: %s)", strings.Join(sortedKeys(fields), ", "))
				continue
			}
			d.lines[sub] = k.Line
			d.decode(val, v.Field(idx), sub)
		}
		return
	}
	// A list, unless its type reads itself (TargetGroupList: auto or ARNs).
	ownList := n.Tag != "!!null" && reflect.PointerTo(v.Type()).Implements(unmarshalerType)
	if v.Kind() == reflect.Slice && v.Type().Elem().Kind() != reflect.Uint8 && !ownList {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			v.Set(reflect.MakeSlice(v.Type(), 0, 0))
			return
		}
		if n.Kind != yaml.SequenceNode {
			d.add(n, key, "want a list, got %s", describe(n))
			return
		}
		out := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, el := range n.Content {
			sub := fmt.Sprintf("%s[%d]", key, i)
			d.lines[sub] = el.Line
			d.decode(el, out.Index(i), sub)
		}
		v.Set(out)
		return
	}
	// A scalar leaf (or a type with its own UnmarshalYAML).
	if n.Kind != yaml.ScalarNode && !ownList {
		d.add(n, key, "want %s, got %s", kindName(v), describe(n))
		return
	}
	if v.Kind() == reflect.String && n.Tag != "!!str" && n.Tag != "!!null" {
		// yaml would turn `name: 123` or `name: yes` into a string silently.
		d.add(n, key, "want a string, got %s (quote it)", describe(n))
		return
	}
	tmp := reflect.New(v.Type())
	tmp.Elem().Set(v)
	if err := n.Decode(tmp.Interface()); err != nil {
		msg := err.Error()
		var te *yaml.TypeError
		if errors.As(err, &te) {
			msg = fmt.Sprintf("want %s, got %s", kindName(v), describe(n))
		}
		d.add(n, key, "%s", msg)
		return
	}
	v.Set(tmp.Elem())
}

func keyOr(key string) string {
	if key == "" {
		return "(top level)"
	}
	return key
}

func join(prefix, k string) string {
	if prefix == "" {
		return k
	}
	return prefix + "." + k
}

func yamlFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := 0; i < t.NumField(); i++ {
		tag, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if tag != "" && tag != "-" {
			m[tag] = i
		}
	}
	return m
}

func sortedKeys(m map[string]int) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

func kindName(v reflect.Value) string {
	switch v.Type() {
	case reflect.TypeOf(Duration(0)):
		return "a duration string like \"30s\""
	case reflect.TypeOf(StatusRange{}):
		return "a status code or range"
	}
	switch v.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "an integer"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	}
	return v.Type().String()
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	switch n.Tag {
	case "!!null":
		return "nothing (null)"
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int":
		return fmt.Sprintf("the number %s", n.Value)
	case "!!float":
		return fmt.Sprintf("the number %s", n.Value)
	case "!!bool":
		return fmt.Sprintf("the boolean %s", n.Value)
	}
	return fmt.Sprintf("%q", n.Value)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// YAML renders the effective config (check-config).
func (c Config) YAML() []byte {
	out, err := yaml.Marshal(c)
	if err != nil {
		// Every field type marshals; this cannot happen.
		panic(fmt.Sprintf("marshalling config: %v", err))
	}
	return out
}

// within reports whether path p is dir or below it (lexically, both
// absolute; an empty dir contains nothing).
func within(p, dir string) bool {
	if dir == "" || !filepath.IsAbs(dir) || !filepath.IsAbs(p) {
		return false
	}
	p, dir = filepath.Clean(p), filepath.Clean(dir)
	return p == dir || strings.HasPrefix(p, dir+"/") || dir == "/"
}
