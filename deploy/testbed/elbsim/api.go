package elbsim

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// apiError is an error answer of the API.
type apiError struct {
	status        int
	code, message string
}

func errValidation(format string, args ...any) *apiError {
	return &apiError{http.StatusBadRequest, "ValidationError", fmt.Sprintf(format, args...)}
}

func errNotFound() *apiError {
	return &apiError{http.StatusBadRequest, "TargetGroupNotFound", "One or more target groups not found"}
}

func errInvalidTarget(ids []string) *apiError {
	return &apiError{http.StatusBadRequest, "InvalidTarget", "The following targets are not valid: '" + strings.Join(ids, "', '") + "'"}
}

func errUnavailable() *apiError {
	return &apiError{http.StatusServiceUnavailable, "ServiceUnavailable", "The simulated service is closed"}
}

// action answers one API action: a result struct that becomes <XxxResult>,
// or an error.
type action func(s *Server, f url.Values) (any, *apiError)

var actions = map[string]action{
	"DescribeTargetGroups":          (*Server).describeTargetGroups,
	"DescribeTargetHealth":          (*Server).describeTargetHealth,
	"RegisterTargets":               (*Server).registerTargets,
	"DeregisterTargets":             (*Server).deregisterTargets,
	"DescribeTargetGroupAttributes": (*Server).describeTargetGroupAttributes,
}

// ServeHTTP answers one API request in the AWS query protocol. It checks that
// the request is signed (an AWS4-HMAC-SHA256 Authorization header; the
// signature itself is not verified) and names Version 2015-12-01.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := newRequestID()
	w.Header().Set("X-Amzn-Requestid", id)
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		writeError(w, id, &apiError{http.StatusMethodNotAllowed, "InvalidHttpRequest", "Method " + r.Method + " is not allowed; send POST"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		writeError(w, id, &apiError{http.StatusBadRequest, "MalformedQueryString", "Cannot parse the request: " + err.Error()})
		return
	}
	name := r.Form.Get("Action")
	s.mu.Lock()
	s.calls[name]++
	s.mu.Unlock()
	if name == "" {
		writeError(w, id, &apiError{http.StatusBadRequest, "MissingAction", "Request is missing Action"})
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		writeError(w, id, &apiError{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"})
		return
	}
	act, ok := actions[name]
	if v := r.Form.Get("Version"); !ok || v != APIVersion {
		writeError(w, id, &apiError{http.StatusBadRequest, "InvalidAction", fmt.Sprintf("Could not find operation %s for version %s", name, v)})
		return
	}
	s.mu.Lock()
	f := s.takeFault(name)
	s.mu.Unlock()
	if f != nil {
		writeError(w, id, &apiError{f.Status, f.Code, f.Message})
		return
	}
	res, aerr := act(s, r.Form)
	if aerr != nil {
		writeError(w, id, aerr)
		return
	}
	writeResult(w, id, name, res)
}

// writeResult writes <XxxResponse><XxxResult>res</XxxResult><ResponseMetadata>.
func writeResult(w http.ResponseWriter, id, name string, res any) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	start := xml.StartElement{Name: xml.Name{Local: name + "Response"}, Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: Namespace}}}
	err := enc.EncodeToken(start)
	if err == nil {
		err = enc.EncodeElement(res, xml.StartElement{Name: xml.Name{Local: name + "Result"}})
	}
	if err == nil {
		err = enc.EncodeElement(struct{ RequestId string }{id}, xml.StartElement{Name: xml.Name{Local: "ResponseMetadata"}})
	}
	if err == nil {
		err = enc.EncodeToken(start.End())
	}
	if err == nil {
		err = enc.Flush()
	}
	if err != nil {
		writeError(w, id, &apiError{http.StatusInternalServerError, "InternalFailure", "Cannot encode the result: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Write(buf.Bytes())
}

// xmlError is <ErrorResponse>, as the query protocol's errors are.
type xmlError struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Error   struct {
		Type    string
		Code    string
		Message string
	}
	RequestId string
}

func writeError(w http.ResponseWriter, id string, e *apiError) {
	var x xmlError
	x.Xmlns = Namespace
	x.Error.Type = "Sender"
	if e.status >= 500 {
		x.Error.Type = "Receiver"
	}
	x.Error.Code, x.Error.Message, x.RequestId = e.code, e.message, id
	body, _ := xml.Marshal(x) // strings only: cannot fail
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	w.Write(body)
}

// newRequestID returns a random id in AWS's UUID form.
func newRequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// stringList reads the query protocol's list name.member.1, name.member.2, …
func stringList(f url.Values, name string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := f[name+".member."+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

// targetParam is one member of a Targets list.
type targetParam struct {
	key     Target
	hasPort bool
	zone    string
}

// targetList reads Targets.member.N.{Id,Port,AvailabilityZone}; a missing
// port is the group's.
func targetList(f url.Values, g *group) ([]targetParam, *apiError) {
	var out []targetParam
	for i := 1; ; i++ {
		p := "Targets.member." + strconv.Itoa(i) + "."
		id, port, zone := f.Get(p+"Id"), f.Get(p+"Port"), f.Get(p+"AvailabilityZone")
		if !f.Has(p+"Id") && !f.Has(p+"Port") && !f.Has(p+"AvailabilityZone") {
			return out, nil
		}
		if id == "" {
			return nil, errValidation("1 validation error detected: Value null at 'targets.%d.member.id' failed to satisfy constraint: Member must not be null", i)
		}
		t := targetParam{key: Target{ID: id, Port: g.cfg.Port}, hasPort: port != "", zone: zone}
		if port != "" {
			n, err := strconv.Atoi(port)
			if err != nil || n < 1 || n > 65535 {
				return nil, errValidation("1 validation error detected: Value '%s' at 'targets.%d.member.port' failed to satisfy constraint: Member must be a port number from 1 to 65535", port, i)
			}
			t.key.Port = int32(n)
		}
		out = append(out, t)
	}
}

// lookup returns the group f's TargetGroupArn names.
func (s *Server) lookup(f url.Values) (*group, *apiError) {
	arn := f.Get("TargetGroupArn")
	if arn == "" {
		return nil, errValidation("1 validation error detected: Value null at 'targetGroupArn' failed to satisfy constraint: Member must not be null")
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

func (s *Server) describeTargetGroups(f url.Values) (any, *apiError) {
	arns, names, lb := stringList(f, "TargetGroupArns"), stringList(f, "Names"), f.Get("LoadBalancerArn")
	given := 0
	for _, b := range []bool{len(arns) > 0, len(names) > 0, lb != ""} {
		if b {
			given++
		}
	}
	if given > 1 {
		return nil, errValidation("Only one of TargetGroupArns, Names and LoadBalancerArn can be specified")
	}
	pageSize := 400
	if v := f.Get("PageSize"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 400 {
			return nil, errValidation("1 validation error detected: Value '%s' at 'pageSize' failed to satisfy constraint: Member must have value between 1 and 400", v)
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
			return nil, errValidation("Invalid marker %q", m)
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
func (s *Server) describeTargetHealth(f url.Values) (any, *apiError) {
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
func (s *Server) registerTargets(f url.Values) (any, *apiError) {
	return s.changeTargets(f, func(g *group, p targetParam) { s.register(g, p) })
}

// deregisterTargets starts draining each registered target named by id AND
// port; a pair that is not registered is ignored, as AWS does.
func (s *Server) deregisterTargets(f url.Values) (any, *apiError) {
	return s.changeTargets(f, func(g *group, p targetParam) {
		if t := g.targets[p.key]; t != nil && t.state != stateDraining {
			s.deregister(g, t)
		}
	})
}

// changeTargets is RegisterTargets' and DeregisterTargets' common part:
// the group, its targets (at least one, every id known), then change for
// each under the lock.
func (s *Server) changeTargets(f url.Values, change func(*group, targetParam)) (any, *apiError) {
	g, aerr := s.lookup(f)
	if aerr != nil {
		return nil, aerr
	}
	ts, aerr := targetList(f, g)
	if aerr != nil {
		return nil, aerr
	}
	if len(ts) == 0 {
		return nil, errValidation("1 validation error detected: Value null at 'targets' failed to satisfy constraint: Member must not be null")
	}
	if bad := s.invalid(ts); len(bad) > 0 {
		return nil, errInvalidTarget(bad)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errUnavailable()
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

func (s *Server) describeTargetGroupAttributes(f url.Values) (any, *apiError) {
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
