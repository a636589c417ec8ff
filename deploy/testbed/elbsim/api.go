package elbsim

import (
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

func errNotFound() *awsquery.Error {
	return &awsquery.Error{Status: http.StatusBadRequest, Code: "TargetGroupNotFound", Message: "One or more target groups not found"}
}

func errInvalidTarget(ids []string) *awsquery.Error {
	return &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidTarget", Message: "The following targets are not valid: '" + strings.Join(ids, "', '") + "'"}
}

// action answers one API action: a result struct that becomes <XxxResult>,
// or an error. It runs without s.mu held and takes it where it needs it.
type action func(s *Server, f url.Values) (any, *awsquery.Error)

var actions = map[string]action{
	"DescribeTargetGroups":          (*Server).describeTargetGroups,
	"DescribeTargetHealth":          (*Server).describeTargetHealth,
	"RegisterTargets":               (*Server).registerTargets,
	"DeregisterTargets":             (*Server).deregisterTargets,
	"DescribeTargetGroupAttributes": (*Server).describeTargetGroupAttributes,
}

// ServeHTTP answers one API request in the AWS query protocol (see
// awsquery.API): a signed request naming Version 2015-12-01 and one of the
// actions.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.api.ServeHTTP(w, r) }

// dispatch is the awsquery.API's Dispatch: the action, which locks s.mu
// itself (the resolver it calls must run without it).
func (s *Server) dispatch(name string, f url.Values) (any, *awsquery.Error) {
	return actions[name](s, f)
}

// targetParam is one member of a Targets list.
type targetParam struct {
	key     Target
	hasPort bool
	zone    string
}

// targetList reads Targets.member.N.{Id,Port,AvailabilityZone}; a missing
// port is the group's.
func targetList(f url.Values, g *group) ([]targetParam, *awsquery.Error) {
	var out []targetParam
	for i := 1; ; i++ {
		p := "Targets.member." + strconv.Itoa(i) + "."
		id, port, zone := f.Get(p+"Id"), f.Get(p+"Port"), f.Get(p+"AvailabilityZone")
		if !f.Has(p+"Id") && !f.Has(p+"Port") && !f.Has(p+"AvailabilityZone") {
			return out, nil
		}
		if id == "" {
			return nil, awsquery.Null(fmt.Sprintf("targets.%d.member.id", i))
		}
		t := targetParam{key: Target{ID: id, Port: g.cfg.Port}, hasPort: port != "", zone: zone}
		if port != "" {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				return nil, awsquery.Validation("1 validation error detected: Value '%s' at 'targets.%d.member.port' failed to satisfy constraint: Member must be a port number from 1 to 65535", port, i)
			}
			t.key.Port = int32(n)
		}
		out = append(out, t)
	}
}

// lookup returns the group f's TargetGroupArn names.
func (s *Server) lookup(f url.Values) (*group, *awsquery.Error) {
	arn := f.Get("TargetGroupArn")
	if arn == "" {
		return nil, awsquery.Null("targetGroupArn")
	}
	g := s.groups[arn]
	if g == nil {
		return nil, errNotFound()
	}
	return g, nil
}

// invalid returns the ids among ts that the resolver does not know, as AWS
// refuses instances that do not exist. It calls the resolver, so must not be
// called with s.mu held.
func (s *Server) invalid(ts []targetParam) []string {
	var bad []string
	for _, t := range ts {
		if _, err := s.resolve(t.key.ID, t.key.Port); err != nil {
			bad = append(bad, t.key.ID)
		}
	}
	return bad
}

type stringMembers struct {
	Member []string `xml:"member"`
}

type xmlTargetGroup struct {
	HealthCheckEnabled         bool
	HealthCheckIntervalSeconds int64
	HealthCheckPath            string
	HealthCheckPort            string
	HealthCheckProtocol        string
	HealthCheckTimeoutSeconds  int64
	HealthyThresholdCount      int
	IpAddressType              string
	LoadBalancerArns           stringMembers
	Matcher                    struct{ HttpCode string }
	Port                       int32
	Protocol                   string
	ProtocolVersion            string
	TargetGroupArn             string
	TargetGroupName            string
	TargetType                 string
	UnhealthyThresholdCount    int
	VpcId                      string
}

type describeTargetGroupsResult struct {
	NextMarker   string `xml:",omitempty"`
	TargetGroups struct {
		Member []xmlTargetGroup `xml:"member"`
	}
}

// seconds reports d in whole seconds, rounded up, as the API's integer
// second fields do.
func seconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}

func (s *Server) describeTargetGroups(f url.Values) (any, *awsquery.Error) {
	arns, names, lb := awsquery.List(f, "TargetGroupArns"), awsquery.List(f, "Names"), f.Get("LoadBalancerArn")
	given := 0
	for _, b := range []bool{len(arns) > 0, len(names) > 0, lb != ""} {
		if b {
			given++
		}
	}
	if given > 1 {
		return nil, awsquery.Validation("Only one of TargetGroupArns, Names and LoadBalancerArn can be specified")
	}
	pageSize := 400
	if v := f.Get("PageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 400 {
			return nil, awsquery.Validation("1 validation error detected: Value '%s' at 'pageSize' failed to satisfy constraint: Member must have value between 1 and 400", v)
		}
		pageSize = n
	}
	var sel []*group
	switch {
	case len(arns) > 0:
		for _, arn := range arns {
			g := s.groups[arn]
			if g == nil {
				return nil, errNotFound()
			}
			sel = append(sel, g)
		}
	case len(names) > 0:
		for _, name := range names {
			arn := s.TargetGroupARN(name)
			if arn == "" {
				return nil, errNotFound()
			}
			sel = append(sel, s.groups[arn])
		}
	default:
		for _, g := range s.order {
			if lb == "" || slices.Contains(g.cfg.LoadBalancerARNs, lb) {
				sel = append(sel, g)
			}
		}
	}
	from := 0
	if m := f.Get("Marker"); m != "" {
		n, err := strconv.Atoi(m)
		if err != nil || n < 0 || n > len(sel) {
			return nil, awsquery.Validation("Invalid marker %q", m)
		}
		from = n
	}
	var res describeTargetGroupsResult
	to := min(from+pageSize, len(sel))
	if to < len(sel) {
		res.NextMarker = strconv.Itoa(to)
	}
	for _, g := range sel[from:to] {
		c := g.cfg
		x := xmlTargetGroup{
			HealthCheckEnabled:         true,
			HealthCheckIntervalSeconds: seconds(c.HealthCheckInterval),
			HealthCheckPath:            c.HealthCheckPath,
			HealthCheckPort:            c.HealthCheckPort,
			HealthCheckProtocol:        "HTTP",
			HealthCheckTimeoutSeconds:  seconds(c.HealthCheckTimeout),
			HealthyThresholdCount:      c.HealthyThreshold,
			IpAddressType:              "ipv4",
			LoadBalancerArns:           stringMembers{c.LoadBalancerARNs},
			Port:                       c.Port,
			Protocol:                   c.Protocol,
			ProtocolVersion:            "HTTP1",
			TargetGroupArn:             c.ARN,
			TargetGroupName:            c.Name,
			TargetType:                 "instance",
			UnhealthyThresholdCount:    c.UnhealthyThreshold,
			VpcId:                      c.VpcID,
		}
		x.Matcher.HttpCode = c.Matcher
		res.TargetGroups.Member = append(res.TargetGroups.Member, x)
	}
	return res, nil
}

type xmlTargetHealthDescription struct {
	HealthCheckPort string
	Target          struct {
		AvailabilityZone string `xml:",omitempty"`
		Id               string
		Port             int32
	}
	TargetHealth struct {
		Description string `xml:",omitempty"`
		Reason      string `xml:",omitempty"`
		State       string
	}
}

type describeTargetHealthResult struct {
	TargetHealthDescriptions struct {
		Member []xmlTargetHealthDescription `xml:"member"`
	}
}

func describe(g *group, key Target, zone, state, reason, desc string) xmlTargetHealthDescription {
	var x xmlTargetHealthDescription
	x.HealthCheckPort = strconv.Itoa(int(g.healthCheckPort(key)))
	x.Target.AvailabilityZone, x.Target.Id, x.Target.Port = zone, key.ID, key.Port
	x.TargetHealth.State, x.TargetHealth.Reason, x.TargetHealth.Description = state, reason, desc
	return x
}

func (t *target) describe(g *group) xmlTargetHealthDescription {
	zone := ""
	if t.zoneGiven {
		zone = t.zone
	}
	return describe(g, t.key, zone, t.state, t.reason, t.desc)
}

// describeTargetHealth reports every registration (draining ones included),
// or the targets asked for: a target asked for without a port matches every
// port it is registered on, and one not registered at all is unused.
func (s *Server) describeTargetHealth(f url.Values) (any, *awsquery.Error) {
	g, aerr := s.lookup(f)
	if aerr != nil {
		return nil, aerr
	}
	want, aerr := targetList(f, g)
	if aerr != nil {
		return nil, aerr
	}
	if bad := s.invalid(want); len(bad) > 0 {
		return nil, errInvalidTarget(bad)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var res describeTargetHealthResult
	add := func(x xmlTargetHealthDescription) {
		res.TargetHealthDescriptions.Member = append(res.TargetHealthDescriptions.Member, x)
	}
	if len(want) == 0 {
		for _, t := range g.sorted() {
			add(t.describe(g))
		}
		return res, nil
	}
	for _, w := range want {
		found := false
		for _, t := range g.sorted() {
			if t.key == w.key || (!w.hasPort && t.key.ID == w.key.ID) {
				add(t.describe(g))
				found = true
			}
		}
		if !found {
			add(describe(g, w.key, w.zone, stateUnused, reasonNotRegistered, "Target is not registered to the target group"))
		}
	}
	return res, nil
}

// registerTargets registers each target, or re-registers one that is
// draining; one already registered is left as it is. An unknown id fails the
// whole call, as AWS does.
func (s *Server) registerTargets(f url.Values) (any, *awsquery.Error) {
	return s.changeTargets(f, func(g *group, p targetParam) { s.register(g, p) })
}

// deregisterTargets starts draining each registered target named by id AND
// port; a pair that is not registered is ignored, as AWS does.
func (s *Server) deregisterTargets(f url.Values) (any, *awsquery.Error) {
	return s.changeTargets(f, func(g *group, p targetParam) {
		if t := g.targets[p.key]; t != nil && t.state != stateDraining {
			s.deregister(g, t)
		}
	})
}

// changeTargets is RegisterTargets' and DeregisterTargets' common part:
// the group, its targets (at least one, every id known), then change for
// each under the lock.
func (s *Server) changeTargets(f url.Values, change func(*group, targetParam)) (any, *awsquery.Error) {
	g, aerr := s.lookup(f)
	if aerr != nil {
		return nil, aerr
	}
	ts, aerr := targetList(f, g)
	if aerr != nil {
		return nil, aerr
	}
	if len(ts) == 0 {
		return nil, awsquery.Null("targets")
	}
	if bad := s.invalid(ts); len(bad) > 0 {
		return nil, errInvalidTarget(bad)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, awsquery.Unavailable()
	}
	for _, p := range ts {
		change(g, p)
	}
	return struct{}{}, nil
}

type describeTargetGroupAttributesResult struct {
	Attributes struct {
		Member []struct{ Key, Value string } `xml:"member"`
	}
}

func (s *Server) describeTargetGroupAttributes(f url.Values) (any, *awsquery.Error) {
	g, aerr := s.lookup(f)
	if aerr != nil {
		return nil, aerr
	}
	var res describeTargetGroupAttributesResult
	for _, kv := range [][2]string{
		{"deregistration_delay.timeout_seconds", strconv.FormatInt(seconds(g.cfg.DeregistrationDelay), 10)},
		{"load_balancing.algorithm.type", "round_robin"},
		{"load_balancing.cross_zone.enabled", strconv.FormatBool(g.cfg.CrossZone)},
		{"slow_start.duration_seconds", "0"},
		{"stickiness.enabled", "false"},
	} {
		res.Attributes.Member = append(res.Attributes.Member, struct{ Key, Value string }{kv[0], kv[1]})
	}
	return res, nil
}
