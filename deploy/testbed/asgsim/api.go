package asgsim

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

func errGroupNotFound(name string) *awsquery.Error {
	return awsquery.Validation("AutoScalingGroup name not found - AutoScalingGroup %s not found", name)
}

func errNotSimulated(action, param string) *awsquery.Error {
	return awsquery.Validation("asgsim: parameter %s of %s is not simulated", param, action)
}

// errSizes is AWS's refusal of a standby move that would take the desired
// capacity out of [MinSize, MaxSize]; move is "place into standby" or "exit
// standby".
func errSizes(g *group, move string, n int) *awsquery.Error {
	noun := "instances"
	if n == 1 {
		noun = "instance"
	}
	return awsquery.Validation("AutoScalingGroup %s has min-size=%d, max-size=%d, and desired-size=%d. To %s %d %s, please update the AutoScalingGroup sizes appropriately.", g.name, g.min, g.max, g.desired, move, n, noun)
}

// action answers one API action: a result struct that becomes <XxxResult>
// (nil: the action has no result element), or an error. It runs with s.mu
// held.
type action func(s *Server, f url.Values) (any, *awsquery.Error)

var actions = map[string]action{
	"DescribeAutoScalingGroups":    (*Server).describeAutoScalingGroups,
	"DescribeAutoScalingInstances": (*Server).describeAutoScalingInstances,
	"DescribeScalingActivities":    (*Server).describeScalingActivities,
	"EnterStandby":                 (*Server).enterStandby,
	"ExitStandby":                  (*Server).exitStandby,
	"UpdateAutoScalingGroup":       (*Server).updateAutoScalingGroup,
}

// ServeHTTP answers one API request in the AWS query protocol (see
// awsquery.API): a signed request naming Version 2011-01-01 and one of the
// actions.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.api.ServeHTTP(w, r) }

// dispatch is the awsquery.API's Dispatch: the action, with s.mu held, or
// ServiceUnavailable once the server is closed.
func (s *Server) dispatch(name string, f url.Values) (any, *awsquery.Error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, awsquery.Unavailable()
	}
	return actions[name](s, f)
}

// timestamp formats t as the API's timestamps are.
func timestamp(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// hasPrefixed reports whether f has a parameter name or name.….
func hasPrefixed(f url.Values, name string) bool {
	for k := range f {
		if k == name || strings.HasPrefix(k, name+".") {
			return true
		}
	}
	return false
}

// optInt32 reads an optional integer parameter; param is its name in
// AWS's messages (lower camel case).
func optInt32(f url.Values, name, param string) (int32, bool, *awsquery.Error) {
	if !f.Has(name) {
		return 0, false, nil
	}
	v := f.Get(name)
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, false, awsquery.Validation("1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must be an integer", v, param)
	}
	return int32(n), true, nil
}

// optBool reads an optional boolean parameter.
func optBool(f url.Values, name, param string, def bool) (bool, *awsquery.Error) {
	if !f.Has(name) {
		return def, nil
	}
	b, err := strconv.ParseBool(f.Get(name))
	if err != nil {
		return false, awsquery.Validation("1 validation error detected: Value '%s' at '%s' failed to satisfy constraint: Member must be a boolean", f.Get(name), param)
	}
	return b, nil
}

// page reads MaxRecords and NextToken for a list of n items, returning the
// slice [from, to) to answer and the NextToken to return ("" at the end).
func page(f url.Values, n, def, limit int) (from, to int, next string, aerr *awsquery.Error) {
	size := def
	if m, ok, aerr := optInt32(f, "MaxRecords", "maxRecords"); aerr != nil {
		return 0, 0, "", aerr
	} else if ok {
		if m < 1 || int(m) > limit {
			return 0, 0, "", awsquery.Validation("1 validation error detected: Value '%d' at 'maxRecords' failed to satisfy constraint: Member must have value between 1 and %d", m, limit)
		}
		size = int(m)
	}
	if tok := f.Get("NextToken"); tok != "" {
		i, err := strconv.Atoi(tok)
		if err != nil || i < 0 || i > n {
			return 0, 0, "", &awsquery.Error{Status: http.StatusBadRequest, Code: "InvalidNextToken", Message: "The token '" + tok + "' is invalid."}
		}
		from = i
	}
	to = min(from+size, n)
	if to < n {
		next = strconv.Itoa(to)
	}
	return from, to, next, nil
}

// groupParam returns the group AutoScalingGroupName names, which must exist.
func (s *Server) groupParam(f url.Values) (*group, *awsquery.Error) {
	name := f.Get("AutoScalingGroupName")
	if name == "" {
		return nil, awsquery.Null("autoScalingGroupName")
	}
	g := s.groups[name]
	if g == nil {
		return nil, errGroupNotFound(name)
	}
	return g, nil
}

// instanceIDs reads InstanceIds, at most limit of them, without duplicates.
func instanceIDs(f url.Values, limit int) ([]string, *awsquery.Error) {
	var ids []string
	for _, id := range awsquery.List(f, "InstanceIds") {
		if id == "" || len(id) > 19 {
			return nil, awsquery.Validation("1 validation error detected: Value '%s' at 'instanceIds' failed to satisfy constraint: Member must have length between 1 and 19", id)
		}
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	if len(ids) > limit {
		return nil, awsquery.Validation("The number of instance ids that may be passed in is limited to %d", limit)
	}
	return ids, nil
}

// xmlList is a list in the query protocol: <member> elements.
type xmlList[T any] struct {
	Member []T `xml:"member"`
}

type members = xmlList[string]

type xmlInstance struct {
	AvailabilityZone     string
	HealthStatus         string
	InstanceId           string
	InstanceType         string
	LifecycleState       string
	ProtectedFromScaleIn bool
}

type xmlTrafficSource struct {
	Identifier string
	Type       string
}

type xmlGroup struct {
	AutoScalingGroupARN              string
	AutoScalingGroupName             string
	AvailabilityZones                members
	CreatedTime                      string
	DefaultCooldown                  int32
	DesiredCapacity                  int32
	EnabledMetrics                   members
	HealthCheckGracePeriod           int32
	HealthCheckType                  string
	Instances                        xmlList[xmlInstance]
	LoadBalancerNames                members
	MaxSize                          int32
	MinSize                          int32
	NewInstancesProtectedFromScaleIn bool
	ServiceLinkedRoleARN             string
	SuspendedProcesses               members
	Tags                             members
	TargetGroupARNs                  members
	TerminationPolicies              members
	TrafficSources                   xmlList[xmlTrafficSource]
}

type describeAutoScalingGroupsResult struct {
	AutoScalingGroups xmlList[xmlGroup]
	NextToken         string `xml:",omitempty"`
}

// describe returns g as DescribeAutoScalingGroups reports it.
func (s *Server) describe(g *group, withInstances bool) xmlGroup {
	x := xmlGroup{
		AutoScalingGroupARN:  g.arn,
		AutoScalingGroupName: g.name,
		CreatedTime:          timestamp(s.created),
		DefaultCooldown:      300,
		DesiredCapacity:      g.desired,
		HealthCheckType:      g.healthCheckType,
		MaxSize:              g.max,
		MinSize:              g.min,
		ServiceLinkedRoleARN: "arn:aws:iam::123456789012:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
		TargetGroupARNs:      members{slices.Clone(g.tgARNs)},
		TerminationPolicies:  members{[]string{"Default"}},
	}
	if g.healthCheckType == HealthCheckELB {
		x.HealthCheckGracePeriod = 300
	}
	for _, arn := range g.tgARNs {
		x.TrafficSources.Member = append(x.TrafficSources.Member, xmlTrafficSource{Identifier: arn, Type: "elbv2"})
	}
	var zones []string
	for _, in := range g.instances {
		if !slices.Contains(zones, in.zone) {
			zones = append(zones, in.zone)
		}
		if withInstances {
			x.Instances.Member = append(x.Instances.Member, xmlInstance{
				AvailabilityZone: in.zone,
				HealthStatus:     in.health,
				InstanceId:       in.id,
				InstanceType:     in.itype,
				LifecycleState:   in.state,
			})
		}
	}
	if len(zones) == 0 {
		zones = []string{DefaultZone}
	}
	slices.Sort(zones)
	x.AvailabilityZones.Member = zones
	return x
}

// describeAutoScalingGroups reports the groups named, in configuration order
// (every group when none is named); a name that is no group's is ignored, as
// AWS does.
func (s *Server) describeAutoScalingGroups(f url.Values) (any, *awsquery.Error) {
	if hasPrefixed(f, "Filters") {
		return nil, errNotSimulated("DescribeAutoScalingGroups", "Filters")
	}
	withInstances, aerr := optBool(f, "IncludeInstances", "includeInstances", true)
	if aerr != nil {
		return nil, aerr
	}
	names := awsquery.List(f, "AutoScalingGroupNames")
	var sel []*group
	for _, g := range s.order {
		if len(names) == 0 || slices.Contains(names, g.name) {
			sel = append(sel, g)
		}
	}
	from, to, next, aerr := page(f, len(sel), 50, 100)
	if aerr != nil {
		return nil, aerr
	}
	var res describeAutoScalingGroupsResult
	res.NextToken = next
	for _, g := range sel[from:to] {
		res.AutoScalingGroups.Member = append(res.AutoScalingGroups.Member, s.describe(g, withInstances))
	}
	return res, nil
}

type xmlInstanceDetails struct {
	AutoScalingGroupName string
	AvailabilityZone     string
	HealthStatus         string
	InstanceId           string
	InstanceType         string
	LifecycleState       string
	ProtectedFromScaleIn bool
}

type describeAutoScalingInstancesResult struct {
	AutoScalingInstances xmlList[xmlInstanceDetails]
	NextToken            string `xml:",omitempty"`
}

// describeAutoScalingInstances reports the instances named, by id (every
// instance when none is named); an id that is no group's instance is
// ignored, as AWS does.
func (s *Server) describeAutoScalingInstances(f url.Values) (any, *awsquery.Error) {
	ids, aerr := instanceIDs(f, 50)
	if aerr != nil {
		return nil, aerr
	}
	var sel []*instance
	for _, in := range s.instances {
		if len(ids) == 0 || slices.Contains(ids, in.id) {
			sel = append(sel, in)
		}
	}
	slices.SortFunc(sel, func(a, b *instance) int { return strings.Compare(a.id, b.id) })
	from, to, next, aerr := page(f, len(sel), 50, 50)
	if aerr != nil {
		return nil, aerr
	}
	var res describeAutoScalingInstancesResult
	res.NextToken = next
	for _, in := range sel[from:to] {
		res.AutoScalingInstances.Member = append(res.AutoScalingInstances.Member, xmlInstanceDetails{
			AutoScalingGroupName: in.group.name,
			AvailabilityZone:     in.zone,
			HealthStatus:         strings.ToUpper(in.health),
			InstanceId:           in.id,
			InstanceType:         in.itype,
			LifecycleState:       in.state,
		})
	}
	return res, nil
}

type xmlActivity struct {
	ActivityId           string
	AutoScalingGroupARN  string
	AutoScalingGroupName string
	Cause                string
	Description          string
	Details              string
	EndTime              string `xml:",omitempty"`
	Progress             int32
	StartTime            string
	StatusCode           string
}

type activitiesResult struct {
	Activities xmlList[xmlActivity]
	NextToken  string `xml:",omitempty"`
}

func (a *activity) xml() xmlActivity {
	x := xmlActivity{
		ActivityId:           a.id,
		AutoScalingGroupARN:  a.group.arn,
		AutoScalingGroupName: a.group.name,
		Cause:                a.cause,
		Description:          a.description,
		Details:              a.details,
		Progress:             a.progress,
		StartTime:            timestamp(a.start),
		StatusCode:           a.status,
	}
	if !a.end.IsZero() {
		x.EndTime = timestamp(a.end)
	}
	return x
}

// describeScalingActivities reports the standby activities, newest first, of
// one group or of all; unknown activity ids are ignored, as AWS does.
func (s *Server) describeScalingActivities(f url.Values) (any, *awsquery.Error) {
	if hasPrefixed(f, "Filters") {
		return nil, errNotSimulated("DescribeScalingActivities", "Filters")
	}
	ids := awsquery.List(f, "ActivityIds")
	if len(ids) > 50 {
		return nil, awsquery.Validation("The number of activity ids that may be passed in is limited to 50")
	}
	name := f.Get("AutoScalingGroupName")
	var sel []*activity
	for i := len(s.activities) - 1; i >= 0; i-- {
		a := s.activities[i]
		if (name == "" || a.group.name == name) && (len(ids) == 0 || slices.Contains(ids, a.id)) {
			sel = append(sel, a)
		}
	}
	from, to, next, aerr := page(f, len(sel), 100, 100)
	if aerr != nil {
		return nil, aerr
	}
	var res activitiesResult
	res.NextToken = next
	for _, a := range sel[from:to] {
		res.Activities.Member = append(res.Activities.Member, a.xml())
	}
	return res, nil
}

// standbyMove reads the group and instances of EnterStandby or ExitStandby
// and checks that each instance is the group's and in state want.
func (s *Server) standbyMove(f url.Values, want string) (*group, []*instance, *awsquery.Error) {
	g, aerr := s.groupParam(f)
	if aerr != nil {
		return nil, nil, aerr
	}
	ids, aerr := instanceIDs(f, 20)
	if aerr != nil {
		return nil, nil, aerr
	}
	var ins []*instance
	for _, id := range ids {
		in := s.instances[id]
		if in == nil || in.group != g {
			return nil, nil, awsquery.Validation("The instance %s is not part of Auto Scaling group %s.", id, g.name)
		}
		if in.state != want {
			return nil, nil, awsquery.Validation("The instance %s is not in %s.", id, want)
		}
		ins = append(ins, in)
	}
	return g, ins, nil
}

// newActivity records an activity for in, started now.
func (s *Server) newActivity(in *instance, now time.Time, description, cause, status string, progress int32) *activity {
	details, _ := json.Marshal(map[string]string{"Availability Zone": in.zone}) // strings only: cannot fail
	a := &activity{
		id:          awsquery.RequestID(),
		group:       in.group,
		description: description + ": " + in.id,
		cause:       cause,
		details:     string(details),
		start:       now,
		status:      status,
		progress:    progress,
	}
	s.activities = append(s.activities, a)
	return a
}

// enterStandby moves every instance named (all InService) to EnteringStandby
// at once and to Standby after the hook and the delay. With
// ShouldDecrementDesiredCapacity the desired capacity drops by their number,
// which must not go below MinSize; without it the group counts as many
// replacement launches.
func (s *Server) enterStandby(f url.Values) (any, *awsquery.Error) {
	if !f.Has("ShouldDecrementDesiredCapacity") {
		return nil, awsquery.Null("shouldDecrementDesiredCapacity")
	}
	decrement, aerr := optBool(f, "ShouldDecrementDesiredCapacity", "shouldDecrementDesiredCapacity", false)
	if aerr != nil {
		return nil, aerr
	}
	g, ins, aerr := s.standbyMove(f, InService)
	if aerr != nil {
		return nil, aerr
	}
	n := int32(len(ins))
	if decrement && g.desired-n < g.min {
		return nil, errSizes(g, "place into standby", len(ins))
	}
	now := time.Now().UTC()
	var cause string
	if decrement {
		cause = fmt.Sprintf("was moved to standby in response to a user request, shrinking the capacity from %d to %d.", g.desired, g.desired-n)
		g.desired -= n
	} else {
		cause = "was moved to standby in response to a user request."
		g.launched += len(ins)
	}
	var res activitiesResult
	for _, in := range ins {
		a := s.newActivity(in, now, "Moving EC2 instance to Standby", fmt.Sprintf("At %s instance %s %s", now.Format(time.RFC3339), in.id, cause), "InProgress", 50)
		in.state = EnteringStandby
		s.startTransition(in, InService, EnteringStandby, Standby, a)
		res.Activities.Member = append(res.Activities.Member, a.xml())
	}
	s.notify()
	return res, nil
}

// exitStandby moves every instance named (all Standby) to Pending at once
// and to InService after the hook and the delay. The desired capacity rises
// by their number, which must not go above MaxSize.
func (s *Server) exitStandby(f url.Values) (any, *awsquery.Error) {
	g, ins, aerr := s.standbyMove(f, Standby)
	if aerr != nil {
		return nil, aerr
	}
	n := int32(len(ins))
	if g.desired+n > g.max {
		return nil, errSizes(g, "exit standby", len(ins))
	}
	now := time.Now().UTC()
	cause := fmt.Sprintf("was moved out of standby in response to a user request, increasing the capacity from %d to %d.", g.desired, g.desired+n)
	g.desired += n
	var res activitiesResult
	for _, in := range ins {
		a := s.newActivity(in, now, "Moving EC2 instance out of Standby", fmt.Sprintf("At %s instance %s %s", now.Format(time.RFC3339), in.id, cause), "PreInService", 30)
		in.state = Pending
		s.startTransition(in, Standby, Pending, InService, a)
		res.Activities.Member = append(res.Activities.Member, a.xml())
	}
	s.notify()
	return res, nil
}

// updateParams are the parameters UpdateAutoScalingGroup simulates; any
// other is refused rather than silently ignored.
var updateParams = []string{"Action", "Version", "AutoScalingGroupName", "MinSize", "MaxSize", "DesiredCapacity", "HealthCheckType"}

// updateAutoScalingGroup changes the sizes and the health-check type. A new
// MinSize above the desired capacity, or MaxSize below it, given without
// DesiredCapacity moves the desired capacity with it, as AWS does. The result
// must satisfy MinSize ≤ DesiredCapacity ≤ MaxSize, or nothing changes.
func (s *Server) updateAutoScalingGroup(f url.Values) (any, *awsquery.Error) {
	for k := range f {
		if !slices.Contains(updateParams, k) {
			return nil, errNotSimulated("UpdateAutoScalingGroup", k)
		}
	}
	g, aerr := s.groupParam(f)
	if aerr != nil {
		return nil, aerr
	}
	minSize, minGiven, aerr := optInt32(f, "MinSize", "minSize")
	if aerr != nil {
		return nil, aerr
	}
	maxSize, maxGiven, aerr := optInt32(f, "MaxSize", "maxSize")
	if aerr != nil {
		return nil, aerr
	}
	desired, desiredGiven, aerr := optInt32(f, "DesiredCapacity", "desiredCapacity")
	if aerr != nil {
		return nil, aerr
	}
	for _, p := range []struct {
		v     int32
		given bool
		param string
	}{{minSize, minGiven, "minSize"}, {maxSize, maxGiven, "maxSize"}, {desired, desiredGiven, "desiredCapacity"}} {
		if p.given && p.v < 0 {
			return nil, awsquery.Validation("1 validation error detected: Value '%d' at '%s' failed to satisfy constraint: Member must have value greater than or equal to 0", p.v, p.param)
		}
	}
	hc := g.healthCheckType
	if f.Has("HealthCheckType") {
		hc = f.Get("HealthCheckType")
		if hc != HealthCheckEC2 && hc != HealthCheckELB {
			return nil, awsquery.Validation("asgsim: health-check type %q is not simulated (only %s and %s)", hc, HealthCheckEC2, HealthCheckELB)
		}
	}
	if !minGiven {
		minSize = g.min
	}
	if !maxGiven {
		maxSize = g.max
	}
	if !desiredGiven {
		desired = g.desired
		if minGiven && minSize > desired {
			desired = minSize
		}
		if maxGiven && maxSize < desired {
			desired = maxSize
		}
	}
	if minSize > maxSize {
		return nil, awsquery.Validation("Max bound, %d, must be greater than or equal to min bound, %d", maxSize, minSize)
	}
	if desired < minSize || desired > maxSize {
		return nil, awsquery.Validation("Desired capacity:%d must be between the specified min size:%d and max size:%d", desired, minSize, maxSize)
	}
	g.min, g.max, g.desired, g.healthCheckType = minSize, maxSize, desired, hc
	s.notify()
	return nil, nil
}
