package elbsim_test

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
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/smithy-go"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
)

// DescribeTargetGroups reports the configuration by ARN, by name and paged.
func TestDescribeTargetGroups(t *testing.T) {
	t.Parallel()
	g := fastGroup("tg-one")
	g.LoadBalancerARNs = []string{"arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188"}
	g.HealthCheckInterval = 1500 * time.Millisecond
	g.HealthyThreshold = 3
	e := setup(t, g, elbsim.TargetGroup{ARN: "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/tg-two/0123456789abcdef", Name: "tg-two", Port: 8080})

	byName, err := e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{Names: []string{"tg-one"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(byName.TargetGroups) != 1 {
		t.Fatalf("%d groups by name, want 1", len(byName.TargetGroups))
	}
	tg := byName.TargetGroups[0]
	for what, c := range map[string][2]any{
		"port":               {aws.ToInt32(tg.Port), int32(80)},
		"protocol":           {tg.Protocol, types.ProtocolEnumHttp},
		"path":               {aws.ToString(tg.HealthCheckPath), "/health"},
		"health-check port":  {aws.ToString(tg.HealthCheckPort), elbsim.TrafficPort},
		"interval (rounded)": {aws.ToInt32(tg.HealthCheckIntervalSeconds), int32(2)},
		"timeout (rounded)":  {aws.ToInt32(tg.HealthCheckTimeoutSeconds), int32(1)},
		"healthy threshold":  {aws.ToInt32(tg.HealthyThresholdCount), int32(3)},
		"unhealthy":          {aws.ToInt32(tg.UnhealthyThresholdCount), int32(2)},
		"matcher":            {aws.ToString(tg.Matcher.HttpCode), "200"},
		"target type":        {tg.TargetType, types.TargetTypeEnumInstance},
		"load balancers":     {strings.Join(tg.LoadBalancerArns, ","), g.LoadBalancerARNs[0]},
		"name":               {aws.ToString(tg.TargetGroupName), "tg-one"},
		"ARN":                {aws.ToString(tg.TargetGroupArn), arnOf(e, "tg-one")},
	} {
		if c[0] != c[1] {
			t.Errorf("%s: %v, want %v", what, c[0], c[1])
		}
	}

	byARN, err := e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arnOf(e, "tg-two")}})
	if err != nil {
		t.Fatal(err)
	}
	if len(byARN.TargetGroups) != 1 || aws.ToString(byARN.TargetGroups[0].TargetGroupName) != "tg-two" || aws.ToInt32(byARN.TargetGroups[0].HealthCheckIntervalSeconds) != 30 {
		t.Errorf("by ARN: %+v, want tg-two with ALB's default 30s interval", byARN.TargetGroups)
	}

	var names []string
	p := elbv2.NewDescribeTargetGroupsPaginator(e.c, &elbv2.DescribeTargetGroupsInput{PageSize: aws.Int32(1)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(page.TargetGroups) != 1 {
			t.Fatalf("page of %d groups, want PageSize 1", len(page.TargetGroups))
		}
		names = append(names, aws.ToString(page.TargetGroups[0].TargetGroupName))
	}
	if strings.Join(names, ",") != "tg-one,tg-two" {
		t.Errorf("paged through %v, want tg-one,tg-two", names)
	}
}

// An unknown group is the SDK's own TargetGroupNotFoundException, whatever
// the action.
func TestTargetGroupNotFound(t *testing.T) {
	t.Parallel()
	e := setup(t, fastGroup("tg-known"))
	ghost := aws.String("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/ghost/0000000000000000")
	calls := map[string]func() error{
		"DescribeTargetGroups by name": func() error {
			_, err := e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{Names: []string{"tg-known", "ghost"}})
			return err
		},
		"DescribeTargetGroups by ARN": func() error {
			_, err := e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{*ghost}})
			return err
		},
		"DescribeTargetHealth": func() error {
			_, err := e.c.DescribeTargetHealth(ctx(t), &elbv2.DescribeTargetHealthInput{TargetGroupArn: ghost})
			return err
		},
		"RegisterTargets": func() error {
			_, err := e.c.RegisterTargets(ctx(t), &elbv2.RegisterTargetsInput{TargetGroupArn: ghost, Targets: []types.TargetDescription{td(idA, 0)}})
			return err
		},
		"DeregisterTargets": func() error {
			_, err := e.c.DeregisterTargets(ctx(t), &elbv2.DeregisterTargetsInput{TargetGroupArn: ghost, Targets: []types.TargetDescription{td(idA, 0)}})
			return err
		},
		"DescribeTargetGroupAttributes": func() error {
			_, err := e.c.DescribeTargetGroupAttributes(ctx(t), &elbv2.DescribeTargetGroupAttributesInput{TargetGroupArn: ghost})
			return err
		},
	}
	for what, call := range calls {
		var nf *types.TargetGroupNotFoundException
		if err := call(); !errors.As(err, &nf) || nf.ErrorMessage() != "One or more target groups not found" {
			t.Errorf("%s: %v, want *types.TargetGroupNotFoundException", what, err)
		}
	}
}

// DescribeTargetGroupAttributes reports the draining delay in whole seconds
// and cross-zone as configured.
func TestDescribeTargetGroupAttributes(t *testing.T) {
	t.Parallel()
	off := fastGroup("tg-attr-off")
	off.DeregistrationDelay = 5 * time.Second
	on := fastGroup("tg-attr-on") // 300ms: rounded up
	on.CrossZone = true
	e := setup(t, off, on)
	for name, want := range map[string]map[string]string{
		"tg-attr-off": {"deregistration_delay.timeout_seconds": "5", "load_balancing.cross_zone.enabled": "false"},
		"tg-attr-on":  {"deregistration_delay.timeout_seconds": "1", "load_balancing.cross_zone.enabled": "true"},
	} {
		out, err := e.c.DescribeTargetGroupAttributes(ctx(t), &elbv2.DescribeTargetGroupAttributesInput{TargetGroupArn: aws.String(arnOf(e, name))})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, a := range out.Attributes {
			got[aws.ToString(a.Key)] = aws.ToString(a.Value)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %q, want %q (all: %v)", name, k, got[k], v, got)
			}
		}
	}
}

// Injected throttling is retried by the SDK's retryer until it passes, or
// until its attempts run out.
func TestThrottlingIsRetried(t *testing.T) {
	t.Parallel()
	e := setup(t, fastGroup("tg-throttle"))
	if err := e.sim.FailNext("DescribeTargetGroups", 2, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	out, err := e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{})
	if err != nil || len(out.TargetGroups) != 1 {
		t.Fatalf("after 2 throttled attempts: %v, %+v; want the groups", err, out)
	}
	if n := e.sim.Calls("DescribeTargetGroups"); n != 3 {
		t.Errorf("%d calls, want 3: two throttled, one passed", n)
	}

	if err := e.sim.FailNext("DescribeTargetGroups", 5, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.DescribeTargetGroups(ctx(t), &elbv2.DescribeTargetGroupsInput{})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "Throttling" || apiErr.ErrorMessage() != "Rate exceeded" {
		t.Errorf("throttled beyond the 3 attempts: %v, want the Throttling error", err)
	}
	if n := e.sim.Calls("DescribeTargetGroups"); n != 6 {
		t.Errorf("%d calls in all, want 6", n)
	}

	if err := e.sim.FailNext("CreateTargetGroup", 1, awsquery.Throttling); err == nil {
		t.Error("FailNext accepted an action the server does not implement")
	}
}

// AccessDenied reaches the caller as a smithy.APIError with its code, its
// 403 and a request id, and is not retried.
func TestAccessDeniedDecoded(t *testing.T) {
	t.Parallel()
	e := setup(t, fastGroup("tg-denied"))
	arn := arnOf(e, "tg-denied")
	if err := e.sim.FailNext("DescribeTargetHealth", 1, awsquery.AccessDenied); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.DescribeTargetHealth(ctx(t), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "AccessDenied" || apiErr.ErrorMessage() != awsquery.AccessDenied.Message || apiErr.ErrorFault() == smithy.FaultServer {
		t.Fatalf("%v, want the AccessDenied APIError", err)
	}
	var re *awshttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusForbidden || re.ServiceRequestID() == "" {
		t.Errorf("%v, want an HTTP 403 with a request id", err)
	}
	if n := e.sim.Calls("DescribeTargetHealth"); n != 1 {
		t.Errorf("%d calls, want 1: AccessDenied is not retried", n)
	}
	out, err := e.c.DescribeTargetHealth(ctx(t), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
	if err != nil {
		t.Fatalf("the call after the fault: %v", err)
	}
	if id, ok := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); !ok || id == "" {
		t.Error("no request id in a successful answer's metadata")
	}
}

// The raw wire format: a signed form POST in, an XML envelope in the ELB
// namespace out; errors as <ErrorResponse>.
func TestWireFormat(t *testing.T) {
	t.Parallel()
	e := setup(t, fastGroup("tg-wire"))
	post := func(form url.Values, signed bool) (int, []byte) {
		rec := httptest.NewRecorder()
		e.sim.ServeHTTP(rec, awsquery.NewRequest(form, signed))
		return rec.Code, rec.Body.Bytes()
	}
	type errorResponse struct {
		XMLName   xml.Name
		Error     struct{ Type, Code, Message string }
		RequestId string
	}

	code, body := post(url.Values{"Action": {"DescribeTargetGroupAttributes"}, "Version": {elbsim.APIVersion}, "TargetGroupArn": {arnOf(e, "tg-wire")}}, true)
	var ok struct {
		XMLName xml.Name
		Result  struct {
			XMLName    xml.Name
			Attributes []struct{ Key, Value string } `xml:"Attributes>member"`
		} `xml:"DescribeTargetGroupAttributesResult"`
		RequestId string `xml:"ResponseMetadata>RequestId"`
	}
	if err := xml.Unmarshal(body, &ok); code != 200 || err != nil {
		t.Fatalf("%d %v: %s", code, err, body)
	}
	if ok.XMLName.Local != "DescribeTargetGroupAttributesResponse" || ok.XMLName.Space != elbsim.Namespace || ok.RequestId == "" || len(ok.Result.Attributes) == 0 {
		t.Errorf("envelope %+v, want DescribeTargetGroupAttributesResponse in %s with a RequestId and the attributes: %s", ok, elbsim.Namespace, body)
	}

	for _, c := range []struct {
		form   url.Values
		signed bool
		status int
		code   string
	}{
		{url.Values{"Action": {"CreateLoadBalancer"}, "Version": {elbsim.APIVersion}}, true, 400, "InvalidAction"},
		{url.Values{"Action": {"DescribeTargetGroups"}, "Version": {"2012-06-01"}}, true, 400, "InvalidAction"},
		{url.Values{"Action": {"DescribeTargetGroups"}, "Version": {elbsim.APIVersion}}, false, 403, "MissingAuthenticationToken"},
		{url.Values{"Version": {elbsim.APIVersion}}, true, 400, "MissingAction"},
		{url.Values{"Action": {"DescribeTargetHealth"}, "Version": {elbsim.APIVersion}}, true, 400, "ValidationError"},
		{url.Values{"Action": {"RegisterTargets"}, "Version": {elbsim.APIVersion}, "TargetGroupArn": {arnOf(e, "tg-wire")}, "Targets.member.1.Id": {idA}, "Targets.member.1.Port": {"70000"}}, true, 400, "ValidationError"},
	} {
		status, body := post(c.form, c.signed)
		var er errorResponse
		if err := xml.Unmarshal(body, &er); err != nil || status != c.status || er.XMLName.Local != "ErrorResponse" || er.Error.Type != "Sender" || er.Error.Code != c.code || er.Error.Message == "" || er.RequestId == "" {
			t.Errorf("%v: %d %s, want %d and an ErrorResponse with Type Sender, Code %s, a message and a RequestId", c.form, status, body, c.status, c.code)
		}
	}
}

// New refuses configurations ELB would refuse, saying what is wrong.
func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what string
		edit func(*elbsim.TargetGroup)
		want string
	}{
		{"no name", func(g *elbsim.TargetGroup) { g.Name = "" }, "name"},
		{"no port", func(g *elbsim.TargetGroup) { g.Port = 0 }, "port 0"},
		{"HTTPS", func(g *elbsim.TargetGroup) { g.Protocol = "HTTPS" }, "protocol"},
		{"timeout not below interval", func(g *elbsim.TargetGroup) { g.HealthCheckTimeout = g.HealthCheckInterval }, "shorter than the interval"},
		{"health-check port", func(g *elbsim.TargetGroup) { g.HealthCheckPort = "http" }, "health-check port"},
		{"matcher", func(g *elbsim.TargetGroup) { g.Matcher = "2xx" }, "matcher"},
		{"path", func(g *elbsim.TargetGroup) { g.HealthCheckPath = "health" }, "path"},
		{"negative delay", func(g *elbsim.TargetGroup) { g.DeregistrationDelay = -time.Second }, "deregistration delay"},
	} {
		g := fastGroup("tg-bad")
		c.edit(&g)
		if _, err := elbsim.New(elbsim.Options{TargetGroups: []elbsim.TargetGroup{g}}); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", c.what, err, c.want)
		}
	}
	if _, err := elbsim.New(elbsim.Options{TargetGroups: []elbsim.TargetGroup{fastGroup("tg-dup"), fastGroup("tg-dup")}}); err == nil || !strings.Contains(err.Error(), "already used") {
		t.Errorf("duplicate names: %v, want an error", err)
	}
}
