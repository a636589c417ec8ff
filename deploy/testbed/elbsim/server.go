package elbsim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// APIVersion is the ELBv2 API version the server speaks; requests naming
// another are refused, as AWS does.
const APIVersion = "2015-12-01"

// Namespace is the XML namespace of every response.
const Namespace = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/"

// TrafficPort is the HealthCheckPort value meaning "the port the target
// receives traffic on", ELB's default.
const TrafficPort = "traffic-port"

// ALB's defaults for the health check, used for zero TargetGroup fields.
const (
	DefaultHealthCheckInterval = 30 * time.Second
	DefaultHealthCheckTimeout  = 5 * time.Second
	DefaultHealthyThreshold    = 5
	DefaultUnhealthyThreshold  = 2
	DefaultMatcher             = "200"
	DefaultZone                = "us-east-1a"
	// DefaultProxyTimeout is ALB's default idle timeout.
	DefaultProxyTimeout = 60 * time.Second
)

// TargetGroup configures one target group of the simulated service. A zero
// field takes ALB's default, except DeregistrationDelay (zero: none).
type TargetGroup struct {
	// ARN identifies the group. Empty derives one from Name, in account
	// 123456789012 and region us-east-1.
	ARN string
	// Name is the group's name (required, at most 32 characters, unique).
	Name string
	// Port is the traffic port of a target registered without one (required).
	Port int32
	// Protocol must be "HTTP", the only one simulated; empty means HTTP.
	Protocol string
	// HealthCheckPath is the path the health check GETs (default "/").
	HealthCheckPath string
	// HealthCheckPort is TrafficPort (the default) or a port number that
	// every target is checked on instead.
	HealthCheckPort string
	// HealthCheckInterval is the time between the starts of two checks of a
	// target (default 30s).
	HealthCheckInterval time.Duration
	// HealthCheckTimeout bounds one check, connection included (default 5s);
	// it must be shorter than the interval, as ELB requires.
	HealthCheckTimeout time.Duration
	// HealthyThreshold is how many passed checks in a row make a target
	// healthy (default 5).
	HealthyThreshold int
	// UnhealthyThreshold is how many failed checks in a row make a target
	// unhealthy (default 2).
	UnhealthyThreshold int
	// Matcher lists the HTTP codes a check accepts: "200" (default),
	// "200,202" or "200-299".
	Matcher string
	// DeregistrationDelay is how long a deregistered target stays draining
	// before it is gone and its in-flight routed requests are cut. Zero
	// removes it at once (AWS's default is 300s, too long for a test).
	DeregistrationDelay time.Duration
	// CrossZone is the attribute load_balancing.cross_zone.enabled: when
	// false, RouterInZone sends only to targets in its own zone.
	CrossZone bool
	// VpcID is reported by DescribeTargetGroups (default
	// "vpc-0123456789abcdef0").
	VpcID string
	// LoadBalancerARNs are reported by DescribeTargetGroups and select the
	// group there by LoadBalancerArn.
	LoadBalancerARNs []string
}

// Options configures a Server.
type Options struct {
	// TargetGroups are the groups the service knows; there is no
	// CreateTargetGroup.
	TargetGroups []TargetGroup
	// Resolve returns the address ("host:port") at which target id listens on
	// port. It is asked for the traffic port when routing and validating and
	// for the health-check port when checking. An error makes the API answer
	// InvalidTarget for that id, as AWS does for an instance that does not
	// exist. Nil accepts only ids that are IP addresses (ip targets).
	Resolve func(id string, port int32) (string, error)
	// Dial opens the connections of health checks and routed requests
	// (default: a net.Dialer). Tests whose targets live in other network
	// namespaces pass their own.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DefaultZone is the Availability Zone of a target registered without
	// one (default "us-east-1a").
	DefaultZone string
	// ProxyTimeout bounds how long a routed request waits for the target's
	// response headers (default 60s, ALB's idle timeout); past it the router
	// answers 504.
	ProxyTimeout time.Duration
}

// Target names one registration: a target id (an EC2 instance id, or an IP
// address) and the port it receives traffic on. ELB keys registrations by
// both: one instance may be registered on several ports.
type Target struct {
	ID   string
	Port int32
}

// String returns "id:port", for messages.
func (t Target) String() string { return t.ID + ":" + strconv.Itoa(int(t.Port)) }

// StaticResolver returns a resolver for Options.Resolve that maps each id to a
// host (for example "127.0.0.1") and listens on whatever port is asked.
// Unknown ids are an error, so they are InvalidTarget to the API.
func StaticResolver(hosts map[string]string) func(id string, port int32) (string, error) {
	m := make(map[string]string, len(hosts))
	for id, h := range hosts {
		m[id] = h
	}
	return func(id string, port int32) (string, error) {
		h, ok := m[id]
		if !ok {
			return "", fmt.Errorf("no address for target %q", id)
		}
		return net.JoinHostPort(h, strconv.Itoa(int(port))), nil
	}
}

// resolveIP is the default resolver: ip targets only.
func resolveIP(id string, port int32) (string, error) {
	if net.ParseIP(id) == nil {
		return "", fmt.Errorf("target %q is not an IP address and no resolver was given", id)
	}
	return net.JoinHostPort(id, strconv.Itoa(int(port))), nil
}

// Server simulates the ELBv2 target-group service. It is the http.Handler of
// the API (see ServeHTTP); Router gives each group's listener. Close it to stop
// its health checks.
type Server struct {
	resolve     func(string, int32) (string, error)
	defaultZone string
	checker     *http.Client
	checkTr     *http.Transport
	proxyTr     *http.Transport
	proxy       *httputil.ReverseProxy
	groups      map[string]*group // by ARN; fixed after New
	order       []*group          // as configured, for DescribeTargetGroups

	ctx    context.Context // ends at Close; parent of every target's context
	cancel context.CancelFunc
	wg     sync.WaitGroup // health-check goroutines

	api *awsquery.API // the query protocol, FailNext and Calls; dispatches to actions

	mu     sync.Mutex // guards closed and the mutable state of groups and targets
	closed bool
}

// group is a configured target group and its registrations.
type group struct {
	cfg     TargetGroup // normalised; immutable after New
	hcPort  int32       // 0: traffic port
	matcher []codeRange

	targets   map[Target]*target
	next      uint64         // round-robin cursor
	routed    map[Target]int // survives deregistration
	elb5xx    int
	target5xx int
}

// target is one registration, from RegisterTargets until its draining ends.
type target struct {
	key       Target
	zone      string
	zoneGiven bool // the AZ was in the request: DescribeTargetHealth echoes it

	state, reason, desc string
	passes, fails       int    // consecutive check results
	gen                 uint64 // bumped at each (re)registration and deregistration; stale results are dropped
	stopChecks          context.CancelFunc
	drainTimer          *time.Timer

	life context.Context // ends when the registration is gone: cuts in-flight routed requests
	end  context.CancelFunc
}

type codeRange struct{ lo, hi int }

// New returns a server for opts. It starts nothing: health checks begin with
// RegisterTargets.
func New(opts Options) (*Server, error) {
	s := &Server{
		resolve:     opts.Resolve,
		defaultZone: opts.DefaultZone,
		groups:      map[string]*group{},
	}
	s.api = &awsquery.API{
		Version:   APIVersion,
		Namespace: Namespace,
		Actions:   slices.Sorted(maps.Keys(actions)),
		Dispatch:  s.dispatch,
	}
	if s.resolve == nil {
		s.resolve = resolveIP
	}
	if s.defaultZone == "" {
		s.defaultZone = DefaultZone
	}
	dial := opts.Dial
	if dial == nil {
		dial = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	}
	if opts.ProxyTimeout < 0 {
		return nil, fmt.Errorf("elbsim: proxy timeout %s must not be negative", opts.ProxyTimeout)
	}
	proxyTimeout := opts.ProxyTimeout
	if proxyTimeout == 0 {
		proxyTimeout = DefaultProxyTimeout
	}

	names := map[string]bool{}
	for i, tg := range opts.TargetGroups {
		g, err := newGroup(tg)
		if err != nil {
			return nil, fmt.Errorf("elbsim: target group %d (%q): %w", i, tg.Name, err)
		}
		if s.groups[g.cfg.ARN] != nil || names[g.cfg.Name] {
			return nil, fmt.Errorf("elbsim: target group %d: name %q or ARN %q is already used", i, g.cfg.Name, g.cfg.ARN)
		}
		s.groups[g.cfg.ARN] = g
		names[g.cfg.Name] = true
		s.order = append(s.order, g)
	}

	// Health checks: a fresh connection each, no proxy from the
	// environment, redirects not followed (a 3xx is a code like any other).
	s.checkTr = &http.Transport{DialContext: dial, DisableKeepAlives: true}
	s.checker = &http.Client{
		Transport:     s.checkTr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	s.proxyTr = &http.Transport{DialContext: dial, ResponseHeaderTimeout: proxyTimeout, MaxIdleConnsPerHost: 16}
	s.proxy = s.newProxy()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// newGroup validates tg and fills in its defaults.
func newGroup(tg TargetGroup) (*group, error) {
	var errs []error
	if tg.Name == "" || len(tg.Name) > 32 {
		errs = append(errs, fmt.Errorf("name %q must have 1 to 32 characters", tg.Name))
	}
	if tg.Port < 1 || tg.Port > 65535 {
		errs = append(errs, fmt.Errorf("port %d is not in 1-65535", tg.Port))
	}
	if tg.Protocol == "" {
		tg.Protocol = "HTTP"
	}
	if tg.Protocol != "HTTP" {
		errs = append(errs, fmt.Errorf("protocol %q is not simulated (only HTTP)", tg.Protocol))
	}
	if tg.HealthCheckPath == "" {
		tg.HealthCheckPath = "/"
	}
	if !strings.HasPrefix(tg.HealthCheckPath, "/") {
		errs = append(errs, fmt.Errorf("health-check path %q must begin with /", tg.HealthCheckPath))
	}
	if tg.HealthCheckPort == "" {
		tg.HealthCheckPort = TrafficPort
	}
	var hcPort int32
	if tg.HealthCheckPort != TrafficPort {
		p, err := strconv.ParseUint(tg.HealthCheckPort, 10, 16)
		if err != nil || p == 0 {
			errs = append(errs, fmt.Errorf("health-check port %q is neither %q nor a port number", tg.HealthCheckPort, TrafficPort))
		}
		hcPort = int32(p)
	}
	if tg.HealthCheckInterval == 0 {
		tg.HealthCheckInterval = DefaultHealthCheckInterval
	}
	if tg.HealthCheckTimeout == 0 {
		tg.HealthCheckTimeout = DefaultHealthCheckTimeout
	}
	if tg.HealthCheckTimeout <= 0 || tg.HealthCheckTimeout >= tg.HealthCheckInterval {
		errs = append(errs, fmt.Errorf("health-check timeout %s must be positive and shorter than the interval %s", tg.HealthCheckTimeout, tg.HealthCheckInterval))
	}
	if tg.HealthyThreshold == 0 {
		tg.HealthyThreshold = DefaultHealthyThreshold
	}
	if tg.UnhealthyThreshold == 0 {
		tg.UnhealthyThreshold = DefaultUnhealthyThreshold
	}
	if tg.HealthyThreshold < 1 || tg.UnhealthyThreshold < 1 {
		errs = append(errs, fmt.Errorf("thresholds %d (healthy) and %d (unhealthy) must be positive", tg.HealthyThreshold, tg.UnhealthyThreshold))
	}
	if tg.Matcher == "" {
		tg.Matcher = DefaultMatcher
	}
	matcher, err := parseMatcher(tg.Matcher)
	if err != nil {
		errs = append(errs, err)
	}
	if tg.DeregistrationDelay < 0 {
		errs = append(errs, fmt.Errorf("deregistration delay %s must not be negative", tg.DeregistrationDelay))
	}
	if tg.VpcID == "" {
		tg.VpcID = "vpc-0123456789abcdef0"
	}
	if tg.ARN == "" {
		h := fnv.New64a()
		h.Write([]byte(tg.Name))
		tg.ARN = fmt.Sprintf("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/%s/%016x", tg.Name, h.Sum64())
	}
	tg.LoadBalancerARNs = slices.Clone(tg.LoadBalancerARNs)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return &group{cfg: tg, hcPort: hcPort, matcher: matcher, targets: map[Target]*target{}, routed: map[Target]int{}}, nil
}

// parseMatcher reads ELB's HttpCode syntax: codes and ranges, comma-separated.
func parseMatcher(s string) ([]codeRange, error) {
	var out []codeRange
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.Atoi(lo)
		h, err2 := strconv.Atoi(hi)
		if err1 != nil || err2 != nil || l < 100 || h > 599 || l > h {
			return nil, fmt.Errorf("matcher %q: %q is not an HTTP code or a range of them", s, part)
		}
		out = append(out, codeRange{l, h})
	}
	return out, nil
}

func (g *group) accepts(code int) bool {
	for _, r := range g.matcher {
		if code >= r.lo && code <= r.hi {
			return true
		}
	}
	return false
}

// healthCheckPort is the port t is checked on, as DescribeTargetHealth says.
func (g *group) healthCheckPort(t Target) int32 {
	if g.hcPort != 0 {
		return g.hcPort
	}
	return t.Port
}

// sorted returns the group's registrations in a stable order (by id, then
// port), so that answers and round-robin are deterministic. Call with s.mu
// held.
func (g *group) sorted() []*target {
	out := make([]*target, 0, len(g.targets))
	for _, t := range g.targets {
		out = append(out, t)
	}
	slices.SortFunc(out, func(a, b *target) int {
		if c := strings.Compare(a.key.ID, b.key.ID); c != 0 {
			return c
		}
		return int(a.key.Port) - int(b.key.Port)
	})
	return out
}

// Close stops every health check and cuts routed requests still in flight.
// It waits for the health-check goroutines, each bounded by its timeout. The
// API answers ServiceUnavailable afterwards.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	for _, g := range s.order {
		for _, t := range g.targets {
			if t.drainTimer != nil {
				t.drainTimer.Stop()
			}
		}
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
	s.checkTr.CloseIdleConnections()
	s.proxyTr.CloseIdleConnections()
}

// TargetGroupARN returns the ARN of the group called name (derived by New
// when the configuration gave none), or "" if there is no such group.
func (s *Server) TargetGroupARN(name string) string {
	for _, g := range s.order {
		if g.cfg.Name == name {
			return g.cfg.ARN
		}
	}
	return ""
}

// FailNext makes the next n calls of action (e.g. "DescribeTargetHealth")
// answer e (for example awsquery.Throttling) instead of acting, after any
// faults already queued for it. The calls still count in Calls.
func (s *Server) FailNext(action string, n int, e awsquery.Error) error {
	return s.api.FailNext(action, n, e)
}

// Calls returns how many requests named action so far, failed ones included:
// with FailNext it shows how often the SDK retried.
func (s *Server) Calls(action string) int { return s.api.Calls(action) }
