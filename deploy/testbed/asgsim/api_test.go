package asgsim_test

import (
	"encoding/xml"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/smithy-go"

	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// batchGroup is a second group, with an explicit ARN and an instance that
// starts on standby.
func batchGroup() asgsim.Group {
	return asgsim.Group{
		Name:            "batch",
		ARN:             "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:11111111-2222-3333-4444-555555555555:autoScalingGroupName/batch",
		MinSize:         0,
		DesiredCapacity: 0,
		MaxSize:         2,
		Instances:       []asgsim.Instance{{ID: idC, AvailabilityZone: "us-east-1c", InstanceType: "m5.large", LifecycleState: asgsim.Standby}},
	}
}

// DescribeAutoScalingInstances reports each instance asked for with every
// field, ignores an id that is no group's, and lists all instances, paged,
// when none is asked for.
func TestDescribeAutoScalingInstances(t *testing.T) {
	t.Parallel()
	web := webGroup(1, 2, 4)
	web.Instances[1].HealthStatus = asgsim.Unhealthy
	e := setup(t, web, batchGroup())

	out, err := e.c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{idB, idGhost, idA}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AutoScalingInstances) != 2 {
		t.Fatalf("%d instances, want 2 (the unknown id is absent): %+v", len(out.AutoScalingInstances), out.AutoScalingInstances)
	}
	a, b := out.AutoScalingInstances[0], out.AutoScalingInstances[1]
	for what, c := range map[string][2]any{
		"A id":        {aws.ToString(a.InstanceId), idA},
		"A group":     {aws.ToString(a.AutoScalingGroupName), "web"},
		"A zone":      {aws.ToString(a.AvailabilityZone), "us-east-1a"},
		"A lifecycle": {aws.ToString(a.LifecycleState), "InService"},
		"A health":    {aws.ToString(a.HealthStatus), "HEALTHY"},
		"A type":      {aws.ToString(a.InstanceType), asgsim.DefaultInstanceType},
		"A protected": {aws.ToBool(a.ProtectedFromScaleIn), false},
		"B id":        {aws.ToString(b.InstanceId), idB},
		"B zone":      {aws.ToString(b.AvailabilityZone), "us-east-1b"},
		"B health":    {aws.ToString(b.HealthStatus), "UNHEALTHY"},
	} {
		if c[0] != c[1] {
			t.Errorf("%s: %v, want %v", what, c[0], c[1])
		}
	}
	if a.ProtectedFromScaleIn == nil {
		t.Error("ProtectedFromScaleIn (a required member) is missing")
	}

	none, err := e.c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{idGhost}})
	if err != nil || len(none.AutoScalingInstances) != 0 {
		t.Errorf("only an unknown id: %v, %+v; want an empty answer, no error", err, none)
	}

	var ids, states []string
	p := autoscaling.NewDescribeAutoScalingInstancesPaginator(e.c, &autoscaling.DescribeAutoScalingInstancesInput{MaxRecords: aws.Int32(2)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(page.AutoScalingInstances) > 2 {
			t.Fatalf("page of %d instances, want at most MaxRecords 2", len(page.AutoScalingInstances))
		}
		for _, in := range page.AutoScalingInstances {
			ids = append(ids, aws.ToString(in.InstanceId)+"/"+aws.ToString(in.AutoScalingGroupName))
			states = append(states, aws.ToString(in.LifecycleState))
		}
	}
	if got, want := strings.Join(ids, ","), idA+"/web,"+idB+"/web,"+idC+"/batch"; got != want {
		t.Errorf("all instances: %s, want %s", got, want)
	}
	if got := strings.Join(states, ","); got != "InService,InService,Standby" {
		t.Errorf("states %s, want InService,InService,Standby", got)
	}
}

// DescribeAutoScalingGroups reports every configured field of a group and
// its instances; an unknown name is ignored and alone gives an empty answer.
func TestDescribeAutoScalingGroups(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 4), batchGroup())

	out, err := e.c.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"ghost", "web"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(out.AutoScalingGroups) != 1 {
		t.Fatalf("%d groups, want only web", len(out.AutoScalingGroups))
	}
	g := out.AutoScalingGroups[0]
	var sources []string
	for _, ts := range g.TrafficSources {
		sources = append(sources, aws.ToString(ts.Type)+":"+aws.ToString(ts.Identifier))
	}
	for what, c := range map[string][2]any{
		"name":           {aws.ToString(g.AutoScalingGroupName), "web"},
		"ARN":            {aws.ToString(g.AutoScalingGroupARN), e.sim.GroupARN("web")},
		"min":            {aws.ToInt32(g.MinSize), int32(1)},
		"desired":        {aws.ToInt32(g.DesiredCapacity), int32(2)},
		"max":            {aws.ToInt32(g.MaxSize), int32(4)},
		"health check":   {aws.ToString(g.HealthCheckType), "ELB"},
		"target groups":  {strings.Join(g.TargetGroupARNs, ","), tgWeb},
		"traffic":        {strings.Join(sources, ","), "elbv2:" + tgWeb},
		"zones":          {strings.Join(g.AvailabilityZones, ","), "us-east-1a,us-east-1b"},
		"instances":      {len(g.Instances), 2},
		"A id":           {aws.ToString(g.Instances[0].InstanceId), idA},
		"A zone":         {aws.ToString(g.Instances[0].AvailabilityZone), "us-east-1a"},
		"A lifecycle":    {g.Instances[0].LifecycleState, types.LifecycleStateInService},
		"A health":       {aws.ToString(g.Instances[0].HealthStatus), "Healthy"},
		"B id":           {aws.ToString(g.Instances[1].InstanceId), idB},
		"B zone":         {aws.ToString(g.Instances[1].AvailabilityZone), "us-east-1b"},
		"default cool":   {aws.ToInt32(g.DefaultCooldown), int32(300)},
		"grace (ELB)":    {aws.ToInt32(g.HealthCheckGracePeriod), int32(300)},
		"policies":       {strings.Join(g.TerminationPolicies, ","), "Default"},
		"load balancers": {len(g.LoadBalancerNames), 0},
	} {
		if c[0] != c[1] {
			t.Errorf("%s: %v, want %v", what, c[0], c[1])
		}
	}
	if !strings.HasPrefix(e.sim.GroupARN("web"), "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:") || !strings.HasSuffix(e.sim.GroupARN("web"), ":autoScalingGroupName/web") {
		t.Errorf("derived ARN %q is not in AWS's form", e.sim.GroupARN("web"))
	}
	if ct := aws.ToTime(g.CreatedTime); time.Since(ct) > time.Minute || time.Since(ct) < 0 {
		t.Errorf("CreatedTime %v, want about now", ct)
	}

	batch := e.group(t, "batch")
	if aws.ToString(batch.AutoScalingGroupARN) != batchGroup().ARN || aws.ToString(batch.HealthCheckType) != "EC2" || aws.ToInt32(batch.DesiredCapacity) != 0 || aws.ToInt32(batch.MaxSize) != 2 ||
		len(batch.Instances) != 1 || batch.Instances[0].LifecycleState != types.LifecycleStateStandby || aws.ToString(batch.Instances[0].InstanceType) != "m5.large" || len(batch.TargetGroupARNs) != 0 {
		t.Errorf("batch: %+v, want the configured ARN, EC2 checks, sizes 0/0/2, %s on Standby and no target group", batch, idC)
	}

	ghost, err := e.c.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"ghost"}})
	if err != nil || len(ghost.AutoScalingGroups) != 0 {
		t.Errorf("unknown group: %v, %+v; want an empty answer, no error", err, ghost)
	}

	noInstances, err := e.c.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{"web"}, IncludeInstances: aws.Bool(false)})
	if err != nil || len(noInstances.AutoScalingGroups) != 1 || len(noInstances.AutoScalingGroups[0].Instances) != 0 {
		t.Errorf("IncludeInstances false: %v, %+v; want web without its instances", err, noInstances)
	}

	var names []string
	p := autoscaling.NewDescribeAutoScalingGroupsPaginator(e.c, &autoscaling.DescribeAutoScalingGroupsInput{MaxRecords: aws.Int32(1)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(page.AutoScalingGroups) != 1 {
			t.Fatalf("page of %d groups, want MaxRecords 1", len(page.AutoScalingGroups))
		}
		names = append(names, aws.ToString(page.AutoScalingGroups[0].AutoScalingGroupName))
	}
	if strings.Join(names, ",") != "web,batch" {
		t.Errorf("paged through %v, want web,batch", names)
	}
}

// An unknown group is AWS's ValidationError "AutoScalingGroup name not found"
// for the actions that change a group; the Describe actions answer empty.
func TestUnknownGroup(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 3))
	const msg = "AutoScalingGroup name not found - AutoScalingGroup ghost not found"
	_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("ghost"), InstanceIds: []string{idA}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	wantValidation(t, err, msg)
	_, err = e.c.ExitStandby(ctx(t), &autoscaling.ExitStandbyInput{AutoScalingGroupName: aws.String("ghost"), InstanceIds: []string{idA}})
	wantValidation(t, err, msg)
	_, err = e.c.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("ghost"), MinSize: aws.Int32(0)})
	wantValidation(t, err, msg)
	if n := e.sim.Calls("EnterStandby"); n != 1 {
		t.Errorf("EnterStandby called %d times, want 1: a ValidationError is not retried", n)
	}
	if st := e.state(t, idA); st != asgsim.InService {
		t.Errorf("%s is %s after the refused calls, want InService", idA, st)
	}
	acts, err := e.c.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("ghost")})
	if err != nil || len(acts.Activities) != 0 {
		t.Errorf("activities of an unknown group: %v, %+v; want none", err, acts)
	}
}

// Injected throttling is retried by the SDK's retryer until it passes, and
// the call then acts once; past the attempts it is the Throttling error and
// nothing changed.
func TestThrottlingIsRetried(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(0, 2, 3))
	if err := e.sim.FailNext("EnterStandby", 2, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	out := e.enter(t, "web", true, idA)
	if n := e.sim.Calls("EnterStandby"); n != 3 {
		t.Errorf("%d calls, want 3: two throttled, one passed", n)
	}
	if len(out.Activities) != 1 || e.sizes(t, "web") != [3]int32{0, 1, 3} {
		t.Errorf("after the retries: %d activities, sizes %v; want 1 activity and desired 2 → 1 (decremented once)", len(out.Activities), e.sizes(t, "web"))
	}
	e.wait(t, idA, asgsim.Standby)

	if err := e.sim.FailNext("EnterStandby", 5, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idB}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	if code, msg := apiError(t, err); code != "Throttling" || msg != "Rate exceeded" {
		t.Errorf("throttled beyond the 3 attempts: %s %q, want Throttling", code, msg)
	}
	if n := e.sim.Calls("EnterStandby"); n != 6 {
		t.Errorf("%d calls in all, want 6", n)
	}
	if st := e.state(t, idB); st != asgsim.InService || e.sizes(t, "web") != [3]int32{0, 1, 3} {
		t.Errorf("after the throttled call: %s %s, sizes %v; want it InService and the sizes unchanged", idB, st, e.sizes(t, "web"))
	}

	if err := e.sim.FailNext("AttachInstances", 1, awsquery.Throttling); err == nil {
		t.Error("FailNext accepted an action the server does not implement")
	}
	if err := e.sim.FailNext("EnterStandby", 0, awsquery.Throttling); err == nil {
		t.Error("FailNext accepted n = 0")
	}
}

// AccessDenied reaches the caller as a smithy.APIError with its code, its
// 403 and a request id, is not retried, and changes nothing.
func TestAccessDeniedDecoded(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 3))
	if err := e.sim.FailNext("EnterStandby", 1, awsquery.AccessDenied); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idA}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "AccessDenied" || ae.ErrorMessage() != awsquery.AccessDenied.Message || ae.ErrorFault() == smithy.FaultServer {
		t.Fatalf("%v, want the AccessDenied APIError", err)
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusForbidden || re.ServiceRequestID() == "" {
		t.Errorf("%v, want an HTTP 403 with a request id", err)
	}
	if n := e.sim.Calls("EnterStandby"); n != 1 {
		t.Errorf("%d calls, want 1: AccessDenied is not retried", n)
	}
	if st := e.state(t, idA); st != asgsim.InService || e.sizes(t, "web") != [3]int32{1, 2, 3} {
		t.Errorf("after the denied call: %s, sizes %v; want InService and 1/2/3", st, e.sizes(t, "web"))
	}
	out, err := e.c.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	if err != nil {
		t.Fatalf("the call after the fault: %v", err)
	}
	if id, ok := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); !ok || id == "" {
		t.Error("no request id in a successful answer's metadata")
	}
}

// The raw wire format: a signed form POST in, an XML envelope in the Auto
// Scaling namespace out, with AWS's element names (which the SDK's decoder,
// being case-insensitive, would not catch); errors as <ErrorResponse>.
func TestWireFormat(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 3))
	post := func(form url.Values, signed bool) (int, string) {
		rec := httptest.NewRecorder()
		e.sim.ServeHTTP(rec, awsquery.NewRequest(form, signed))
		return rec.Code, rec.Body.String()
	}
	form := func(action string, kv ...string) url.Values {
		f := url.Values{"Action": {action}, "Version": {asgsim.APIVersion}}
		for i := 0; i+1 < len(kv); i += 2 {
			f.Set(kv[i], kv[i+1])
		}
		return f
	}
	type envelope struct {
		XMLName   xml.Name
		RequestId string `xml:"ResponseMetadata>RequestId"`
	}

	code, body := post(form("DescribeAutoScalingGroups", "AutoScalingGroupNames.member.1", "web"), true)
	var env envelope
	if err := xml.Unmarshal([]byte(body), &env); code != 200 || err != nil || env.XMLName.Local != "DescribeAutoScalingGroupsResponse" || env.XMLName.Space != asgsim.Namespace || env.RequestId == "" {
		t.Fatalf("%d %v %+v, want DescribeAutoScalingGroupsResponse in %s with a RequestId: %s", code, err, env, asgsim.Namespace, body)
	}
	for _, want := range []string{
		"<DescribeAutoScalingGroupsResult><AutoScalingGroups><member><AutoScalingGroupARN>" + e.sim.GroupARN("web") + "</AutoScalingGroupARN><AutoScalingGroupName>web</AutoScalingGroupName>",
		"<TargetGroupARNs><member>" + tgWeb + "</member></TargetGroupARNs>",
		"<Instances><member><AvailabilityZone>us-east-1a</AvailabilityZone><HealthStatus>Healthy</HealthStatus><InstanceId>" + idA + "</InstanceId>",
		"<LifecycleState>InService</LifecycleState><ProtectedFromScaleIn>false</ProtectedFromScaleIn>",
		"<MaxSize>3</MaxSize><MinSize>1</MinSize>", "<DesiredCapacity>2</DesiredCapacity>", "<HealthCheckType>ELB</HealthCheckType>",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("DescribeAutoScalingGroups answer lacks %s: %s", want, body)
		}
	}

	code, body = post(form("DescribeAutoScalingInstances", "InstanceIds.member.1", idA), true)
	if want := "<AutoScalingInstances><member><AutoScalingGroupName>web</AutoScalingGroupName><AvailabilityZone>us-east-1a</AvailabilityZone><HealthStatus>HEALTHY</HealthStatus><InstanceId>" + idA + "</InstanceId>"; code != 200 || !strings.Contains(body, want) {
		t.Errorf("DescribeAutoScalingInstances: %d %s, want it to contain %s", code, body, want)
	}

	code, body = post(form("EnterStandby", "AutoScalingGroupName", "web", "InstanceIds.member.1", idA, "ShouldDecrementDesiredCapacity", "true"), true)
	for _, want := range []string{"<EnterStandbyResult><Activities><member><ActivityId>", "<StatusCode>InProgress</StatusCode>", "<Progress>50</Progress>", "<Description>Moving EC2 instance to Standby: " + idA + "</Description>", `<Details>{&#34;Availability Zone&#34;:&#34;us-east-1a&#34;}</Details>`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("EnterStandby: %d, answer lacks %s: %s", code, want, body)
		}
	}

	// An action without output answers no result element, as AWS does.
	code, body = post(form("UpdateAutoScalingGroup", "AutoScalingGroupName", "web", "MaxSize", "4"), true)
	env = envelope{}
	if err := xml.Unmarshal([]byte(body), &env); code != 200 || err != nil || env.XMLName.Local != "UpdateAutoScalingGroupResponse" || env.RequestId == "" || strings.Contains(body, "Result") {
		t.Errorf("UpdateAutoScalingGroup: %d %v %s, want a bare UpdateAutoScalingGroupResponse with a RequestId", code, err, body)
	}

	type errorResponse struct {
		XMLName   xml.Name
		Error     struct{ Type, Code, Message string }
		RequestId string
	}
	for _, c := range []struct {
		form   url.Values
		signed bool
		status int
		code   string
		msg    string // a part of the message, if not empty
	}{
		{form("AttachInstances"), true, 400, "InvalidAction", ""},
		{url.Values{"Action": {"DescribeAutoScalingGroups"}, "Version": {"2015-12-01"}}, true, 400, "InvalidAction", ""},
		{form("DescribeAutoScalingGroups"), false, 403, "MissingAuthenticationToken", ""},
		{url.Values{"Version": {asgsim.APIVersion}}, true, 400, "MissingAction", ""},
		{form("EnterStandby", "AutoScalingGroupName", "web", "InstanceIds.member.1", idB), true, 400, "ValidationError", "'shouldDecrementDesiredCapacity'"},
		{form("EnterStandby", "InstanceIds.member.1", idB, "ShouldDecrementDesiredCapacity", "true"), true, 400, "ValidationError", "'autoScalingGroupName'"},
		{form("EnterStandby", "AutoScalingGroupName", "web", "InstanceIds.member.1", idB, "ShouldDecrementDesiredCapacity", "maybe"), true, 400, "ValidationError", "'maybe'"},
		{form("UpdateAutoScalingGroup", "AutoScalingGroupName", "web", "DefaultCooldown", "60"), true, 400, "ValidationError", "DefaultCooldown"},
		{form("UpdateAutoScalingGroup", "AutoScalingGroupName", "web", "MinSize", "two"), true, 400, "ValidationError", "'minSize'"},
		{form("DescribeAutoScalingGroups", "MaxRecords", "101"), true, 400, "ValidationError", "maxRecords"},
		{form("DescribeAutoScalingGroups", "NextToken", "bogus"), true, 400, "InvalidNextToken", ""},
		{form("DescribeAutoScalingGroups", "Filters.member.1.Name", "tag:env"), true, 400, "ValidationError", "Filters"},
	} {
		status, body := post(c.form, c.signed)
		var er errorResponse
		if err := xml.Unmarshal([]byte(body), &er); err != nil || status != c.status || er.XMLName.Local != "ErrorResponse" || er.XMLName.Space != asgsim.Namespace || er.Error.Type != "Sender" || er.Error.Code != c.code || er.Error.Message == "" || !strings.Contains(er.Error.Message, c.msg) || er.RequestId == "" {
			t.Errorf("%v: %d %s, want %d and an ErrorResponse with Type Sender, Code %s, a message with %q and a RequestId", c.form, status, body, c.status, c.code, c.msg)
		}
	}
	if st, _ := e.sim.Instance(idB); st.LifecycleState != asgsim.InService {
		t.Errorf("%s is %s after refused calls, want InService", idB, st.LifecycleState)
	}
}

// New refuses configurations Auto Scaling would refuse, saying what is wrong.
func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what string
		edit func(*asgsim.Group)
		want string
	}{
		{"no name", func(g *asgsim.Group) { g.Name = "" }, "name"},
		{"desired below min", func(g *asgsim.Group) { g.DesiredCapacity = 0 }, "min ≤ desired ≤ max"},
		{"desired above max", func(g *asgsim.Group) { g.DesiredCapacity = 9 }, "min ≤ desired ≤ max"},
		{"health check", func(g *asgsim.Group) { g.HealthCheckType = "VPC_LATTICE" }, "health-check type"},
		{"no instance id", func(g *asgsim.Group) { g.Instances[0].ID = "" }, "id"},
		{"duplicate instance", func(g *asgsim.Group) { g.Instances[1].ID = idA }, "unique"},
		{"initial state", func(g *asgsim.Group) { g.Instances[0].LifecycleState = asgsim.Pending }, "initial lifecycle state"},
		{"health", func(g *asgsim.Group) { g.Instances[0].HealthStatus = "HEALTHY" }, "health status"},
	} {
		g := webGroup(1, 2, 3)
		c.edit(&g)
		if _, err := asgsim.New(asgsim.Options{Groups: []asgsim.Group{g}}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", c.what, err, c.want)
		}
	}
	other := batchGroup()
	other.Instances[0].ID = idA
	for what, opts := range map[string]asgsim.Options{
		"duplicate group":           {Groups: []asgsim.Group{webGroup(1, 2, 3), webGroup(1, 2, 3)}},
		"instance in two groups":    {Groups: []asgsim.Group{webGroup(1, 2, 3), other}},
		"negative transition delay": {TransitionDelay: -time.Second},
	} {
		if _, err := asgsim.New(opts); err == nil {
			t.Errorf("%s: accepted", what)
		}
	}
}
