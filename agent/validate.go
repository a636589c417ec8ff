package agent

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/patchagent/patchagent/healthcheck"
)

// Validate checks values (types are checked while decoding) and returns
// every problem, each named by its key, sorted by key. Each section checks
// its own keys; a check that spans sections sits with the key it reports.
func (c Config) Validate() []Problem {
	var ps problems
	c.App.validate(&ps)
	c.Traffic.validate(&ps)
	c.Drain.validate(&ps)
	c.Health.validate(&ps)
	c.Exit.validate(&ps, c.Health)
	c.Post.validate(&ps)
	c.Steps.validate(&ps)
	c.Daemon.validate(&ps, c.App)
	c.LB.validate(&ps)
	sort.SliceStable(ps, func(i, j int) bool { return ps[i].Key < ps[j].Key })
	return ps
}

// problems collects what Validate finds.
type problems []Problem

func (ps *problems) bad(key, format string, args ...any) {
	*ps = append(*ps, Problem{Key: key, Msg: fmt.Sprintf(format, args...)})
}

func (ps *problems) positive(key string, d Duration) {
	if d <= 0 {
		ps.bad(key, "must be greater than 0, got %s", d)
	}
}

// notNegativeNorOver checks 0 <= d <= limit (the value of key limitKey).
func (ps *problems) notNegativeNorOver(key string, d Duration, limitKey string, limit Duration) {
	if d < 0 {
		ps.bad(key, "must not be negative, got %s", d)
	} else if d > limit {
		ps.bad(key, "%s is longer than %s %s", d, limitKey, limit)
	}
}

// listen checks a host:port to listen on.
func (ps *problems) listen(key, addr string) {
	if host, port, err := net.SplitHostPort(addr); err != nil {
		ps.bad(key, "%q is not host:port", addr)
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		ps.bad(key, "port %q is not 1-65535", port)
	} else if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		ps.bad(key, "host %q is not an IP address", host)
	}
}

// absolute checks that p, if set, is an absolute path.
func (ps *problems) absolute(key, p string) {
	if p != "" && !strings.HasPrefix(p, "/") {
		ps.bad(key, "%q must be an absolute path", p)
	}
}

func (c AppConfig) validate(ps *problems) {
	if c.Name == "" {
		ps.bad("app.name", "required: the pm2 process name of the app")
	} else if strings.ContainsAny(c.Name, " \t\n/\\\x00") || strings.HasPrefix(c.Name, "-") || c.Name == "all" {
		ps.bad("app.name", "%q is not a usable pm2 app name (no spaces or slashes, no leading '-', not \"all\")", c.Name)
	}
	if c.User != "" && (strings.ContainsAny(c.User, " \t\n/:") || strings.HasPrefix(c.User, "-")) {
		ps.bad("app.user", "%q is not a user name", c.User)
	}
	ps.absolute("app.dir", c.Dir)
	ps.absolute("app.pm2", c.PM2)
	ps.absolute("app.pm2_home", c.PM2Home)
	ps.absolute("app.npm", c.NPM)
	ps.absolute("app.ecosystem", c.Ecosystem)
}

func (c TrafficConfig) validate(ps *problems) {
	if len(c.Ports) == 0 {
		ps.bad("traffic.ports", "at least one port is required")
	}
	seen := map[int]bool{}
	for i, p := range c.Ports {
		key := fmt.Sprintf("traffic.ports[%d]", i)
		switch {
		case p < 1 || p > 65535:
			ps.bad(key, "%d is not a TCP port (1-65535)", p)
		case p == 22:
			ps.bad(key, "22 is SSH: blocking it would lock operators out of the node")
		case seen[p]:
			ps.bad(key, "%d is listed twice", p)
		}
		seen[p] = true
	}
	if c.Action != "reject" && c.Action != "drop" {
		ps.bad("traffic.action", "%q: want reject or drop", c.Action)
	}
	ps.positive("traffic.lock_wait", c.LockWait)
}

func (c DrainConfig) validate(ps *problems) {
	ps.positive("drain.timeout", c.Timeout)
	ps.positive("drain.idle", c.Idle)
	ps.positive("drain.interval", c.Interval)
	ps.notNegativeNorOver("drain.keepalive_idle", c.KeepAliveIdle, "drain.idle", c.Idle)
	ps.notNegativeNorOver("drain.min_wait", c.MinWait, "drain.timeout", c.Timeout)
}

func (c HealthConfig) validate(ps *problems) {
	// The probe's own options are healthcheck's to check; the config adds
	// what patchagent needs of them: a loopback URL (the check must reach
	// the app past the block), explicit values.
	urlOK := true
	for _, p := range c.probeOptions().Check() {
		ps.bad("health."+p.Key, "%s", p.Msg)
		urlOK = urlOK && p.Key != "url"
	}
	if u, err := url.Parse(c.URL); urlOK && err == nil && !isLoopbackHost(u.Hostname()) {
		ps.bad("health.url", "host %q is not loopback: the check must reach the app past the block (use localhost, 127.0.0.1 or [::1]; set health.host for the Host header)", u.Hostname())
	}
	ps.absolute("health.ca_file", c.CAFile)
	ps.positive("health.timeout", c.Timeout)
	ps.positive("health.interval", c.Interval)
	ps.positive("health.deadline", c.Deadline)
	if len(c.ExpectStatus) == 0 {
		ps.bad("health.expect_status", "at least one status code or range is required")
	}
	if c.Successes < 1 {
		ps.bad("health.successes", "must be at least 1, got %d", c.Successes)
	}
}

// probeOptions are the health check's options as healthcheck takes them:
// the one place they are copied from the config.
func (c HealthConfig) probeOptions() healthcheck.HTTPOptions {
	rs := make([]healthcheck.StatusRange, len(c.ExpectStatus))
	for i, r := range c.ExpectStatus {
		rs[i] = healthcheck.StatusRange{Min: r.Min, Max: r.Max}
	}
	return healthcheck.HTTPOptions{
		URL: c.URL, Timeout: c.Timeout.D(), Insecure: c.Insecure, CAFile: c.CAFile,
		Host: c.Host, UserAgent: c.UserAgent, ExpectStatus: rs,
		ExpectBody: c.ExpectBody, FollowRedirects: c.FollowRedirects,
	}
}

func (c ExitConfig) validate(ps *problems, health HealthConfig) {
	if c.OnFailure != "keep_blocked" && c.OnFailure != "unblock" {
		ps.bad("exit.on_failure", "%q: want keep_blocked or unblock", c.OnFailure)
	}
	ps.notNegativeNorOver("exit.min_uptime", c.MinUptime, "health.deadline", health.Deadline)
}

func (c PostConfig) validate(ps *problems) {
	ps.positive("post.npm.timeout", c.NPM.Timeout)
	ps.positive("post.npm.fetch_timeout", c.NPM.FetchTimeout)
	if c.NPM.FetchTimeout > c.NPM.Timeout {
		ps.bad("post.npm.fetch_timeout", "%s is longer than post.npm.timeout %s", c.NPM.FetchTimeout, c.NPM.Timeout)
	}
	if c.NPM.FetchRetries < 0 || c.NPM.FetchRetries > 10 {
		ps.bad("post.npm.fetch_retries", "%d: want 0 to 10", c.NPM.FetchRetries)
	}
	if c.KeepSnapshots < 1 || c.KeepSnapshots > 100 {
		ps.bad("post.keep_snapshots", "%d: want 1 to 100 (the open cycle's snapshot is always kept)", c.KeepSnapshots)
	}
}

func (c StepsConfig) validate(ps *problems) {
	for i, u := range c.StopUnits {
		if u == "" || strings.ContainsAny(u, " \t\n/") || strings.HasPrefix(u, "-") {
			ps.bad(fmt.Sprintf("steps.stop_units[%d]", i), "%q is not a systemd unit name", u)
		}
	}
	for name, cmds := range map[string][][]string{"steps.pre_commands": c.PreCommands, "steps.exit_commands": c.ExitCommands} {
		for i, argv := range cmds {
			if len(argv) == 0 || !strings.HasPrefix(argv[0], "/") {
				ps.bad(fmt.Sprintf("%s[%d]", name, i), "want an argv list whose first element is an absolute path")
			}
		}
	}
}

func (c DaemonConfig) validate(ps *problems, app AppConfig) {
	paths := map[string]string{"daemon.socket": c.Socket, "daemon.state_dir": c.StateDir, "daemon.textfile_dir": c.TextfileDir, "daemon.boot_id_file": c.BootIDFile}
	for key, p := range paths {
		if !strings.HasPrefix(p, "/") {
			ps.bad(key, "%q must be an absolute path", p)
		}
	}
	// root's own files must not live where the app user can write
	// (SECURITY.md): a snapshot holds .npmrc, the state decides the block.
	delete(paths, "daemon.boot_id_file")
	for key, p := range paths {
		for ukey, u := range map[string]string{"app.dir": app.Dir, "app.pm2_home": app.PM2Home} {
			if within(p, u) {
				ps.bad(key, "%q is inside %s %q, which the app user controls: root's files must live elsewhere", p, ukey, u)
			}
		}
	}
	ps.listen("daemon.metrics_listen", c.MetricsListen)
	ps.positive("daemon.max_out_of_service", c.MaxOutOfService)
	ps.positive("daemon.watch_interval", c.WatchInterval)
	if c.NodeWait < 0 {
		ps.bad("daemon.node_wait", "must not be negative (0 waits for ever), got %s", c.NodeWait)
	}
}

// parseMinHealthy reads lb.aws.min_healthy: a count ("2") or a percent
// ("50%").
func parseMinHealthy(s string) (count, percent int, err error) {
	num, pct := strings.CutSuffix(s, "%")
	n, err := strconv.Atoi(num)
	switch {
	case err != nil || n < 0 || num != strconv.Itoa(n):
		return 0, 0, fmt.Errorf("%q: want a count of healthy targets (\"1\") or a percent of the registered ones (\"50%%\")", s)
	case pct && n > 100:
		return 0, 0, fmt.Errorf("%q: a percent is at most 100%%", s)
	case pct:
		return 0, n, nil
	}
	return n, 0, nil
}

// targetGroupARN is an ELBv2 target group's ARN.
var targetGroupARN = regexp.MustCompile(`^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:targetgroup/[A-Za-z0-9-]{1,32}/[0-9a-f]{16}$`)

func (c LBConfig) validate(ps *problems) {
	if a := c.AWS; c.aws() || a.Endpoints != (AWSEndpoints{}) {
		if c.HealthListen != "" || c.HAProxy.set() {
			ps.bad("lb.aws", "set with lb.health_listen or lb.haproxy: choose one way to take the node out of rotation")
		}
		if len(a.TargetGroups) == 0 {
			ps.bad("lb.aws.target_groups", "empty: name the target groups' ARNs, or auto for those of the instance's Auto Scaling group")
		}
		seen := map[string]bool{}
		for i, arn := range a.TargetGroups {
			if a.TargetGroups.Auto() {
				break
			}
			if !targetGroupARN.MatchString(arn) {
				ps.bad(fmt.Sprintf("lb.aws.target_groups[%d]", i), "%q is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)", arn)
			} else if seen[arn] {
				ps.bad(fmt.Sprintf("lb.aws.target_groups[%d]", i), "%q is named twice", arn)
			}
			seen[arn] = true
		}
		if a.Standby != "auto" && a.Standby != "never" {
			ps.bad("lb.aws.standby", "%q: want auto or never", a.Standby)
		}
		for key, u := range map[string]string{"lb.aws.endpoints.imds": a.Endpoints.IMDS, "lb.aws.endpoints.elbv2": a.Endpoints.ELBv2, "lb.aws.endpoints.autoscaling": a.Endpoints.AutoScaling, "lb.aws.endpoints.ec2": a.Endpoints.EC2} {
			if u == "" {
				continue
			}
			if p, err := url.Parse(u); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
				ps.bad(key, "%q is not an http(s) base URL", u)
			}
		}
		if _, _, err := parseMinHealthy(a.MinHealthy); err != nil {
			ps.bad("lb.aws.min_healthy", "%v", err)
		}
		ps.positive("lb.deadline", c.Deadline)
		ps.positive("lb.aws.healthy_timeout", a.HealthyTimeout)
		return
	}
	if h := c.HAProxy; h.set() {
		if c.HealthListen != "" {
			ps.bad("lb.haproxy", "set with lb.health_listen: choose one way to take the node out of rotation")
		}
		for key, s := range ps.oneOrList("lb.haproxy.socket", h.Socket, "lb.haproxy.sockets", h.Sockets) {
			if !strings.HasPrefix(s, "/") {
				if _, _, err := net.SplitHostPort(s); err != nil {
					ps.bad(key, "%q is neither an absolute unix socket path nor host:port", s)
				}
			}
		}
		badName := func(v string) bool { return v == "" || strings.ContainsAny(v, " \t\n/") }
		if len(h.Servers) == 0 {
			for key, v := range map[string]string{"lb.haproxy.backend": h.Backend, "lb.haproxy.server": h.Server} {
				if badName(v) {
					ps.bad(key, "%q is not an HAProxy proxy or server name", v)
				}
			}
		} else if h.Backend != "" || h.Server != "" {
			ps.bad("lb.haproxy.servers", "set with lb.haproxy.backend or server: name the one there, or all of them here")
		}
		for key, bs := range ps.oneOrList("", "", "lb.haproxy.servers", h.Servers) {
			if b, s, _ := strings.Cut(bs, "/"); badName(b) || badName(s) {
				ps.bad(key, "%q is not an HAProxy backend/server", bs)
			}
		}
		ps.positive("lb.deadline", c.Deadline)
		return
	}
	if c.HealthListen == "" {
		return
	}
	ps.listen("lb.health_listen", c.HealthListen)
	if !strings.HasPrefix(c.Path, "/") || strings.ContainsAny(c.Path, " ?#") {
		ps.bad("lb.path", "%q is not a URL path", c.Path)
	}
	ps.positive("lb.interval", c.Interval)
	for key, n := range map[string]int{"lb.unhealthy_threshold": c.UnhealthyThreshold, "lb.healthy_threshold": c.HealthyThreshold} {
		if n < 1 || n > 10 {
			ps.bad(key, "%d: want 1 to 10 (the LB's own threshold)", n)
		}
	}
	// The LB needs threshold checks an interval apart, and a checker's
	// first one may come an interval late.
	if need := Duration(int64(c.Interval) * int64(max(c.UnhealthyThreshold, c.HealthyThreshold)+1)); c.Deadline < need {
		ps.bad("lb.deadline", "%s is shorter than the LB needs at its interval and thresholds (%s)", c.Deadline, need)
	}
}

// oneOrList checks a key that names one value (single, at key) or a list
// of them (list, at listKey), not both, none listed twice, and returns
// them by key. key "" has no single form.
func (ps *problems) oneOrList(key, single, listKey string, list []string) map[string]string {
	switch {
	case single != "" && len(list) > 0:
		ps.bad(listKey, "set with %s: name one there, or all of them here", key)
		return nil
	case len(list) == 0:
		if key == "" {
			return nil
		}
		return map[string]string{key: single}
	}
	keys := map[string]string{}
	for i, v := range list {
		k := fmt.Sprintf("%s[%d]", listKey, i)
		if j := slices.Index(list, v); j < i {
			ps.bad(k, "%q is %s[%d] already", v, listKey, j)
		}
		keys[k] = v
	}
	return keys
}
