package ec2sim_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/ec2sim"
)

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// DescribeInstances by id reports each instance named once, in configuration
// order, with its zone, type, state and launch time; the answer carries a
// request id.
func TestDescribeByID(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	out, err := e.c.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{InstanceIds: []string{id3, id1, id3}})
	if err != nil {
		t.Fatal(err)
	}
	got := instances(t, out)
	if len(got) != 2 {
		t.Fatalf("%d instances %v, want %s and %s", len(got), ids(got), id1, id3)
	}
	a, c := got[0], got[1]
	for what, v := range map[string][2]any{
		"1 id":         {aws.ToString(a.InstanceId), id1},
		"1 zone":       {aws.ToString(a.Placement.AvailabilityZone), ec2sim.DefaultZone},
		"1 tenancy":    {a.Placement.Tenancy, types.TenancyDefault},
		"1 type":       {a.InstanceType, types.InstanceType(ec2sim.DefaultInstanceType)},
		"1 state":      {a.State.Name, types.InstanceStateNameRunning},
		"1 state code": {aws.ToInt32(a.State.Code), int32(16)},
		"3 id":         {aws.ToString(c.InstanceId), id3},
		"3 zone":       {aws.ToString(c.Placement.AvailabilityZone), "us-east-1c"},
		"3 type":       {c.InstanceType, types.InstanceTypeM5Large},
		"3 state":      {c.State.Name, types.InstanceStateNameStopped},
		"3 state code": {aws.ToInt32(c.State.Code), int32(80)},
		"next token":   {aws.ToString(out.NextToken), ""},
	} {
		if v[0] != v[1] {
			t.Errorf("%s: %v, want %v", what, v[0], v[1])
		}
	}
	if lt := aws.ToTime(a.LaunchTime); time.Since(lt) > time.Minute || time.Since(lt) < -time.Second {
		t.Errorf("LaunchTime %v, want about now", lt)
	}
	if id, ok := awsmiddleware.GetRequestIDMetadata(out.ResultMetadata); !ok || !uuid.MatchString(id) {
		t.Errorf("request id %q in the metadata, want a UUID", id)
	}
}

// Without ids nor filters every instance is reported, in configuration
// order, in one page; an empty fleet answers no reservation.
func TestDescribeAll(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	if got, want := ids(e.describe(t, &ec2.DescribeInstancesInput{})), []string{id1, id2, id3, id4, id5, id6, id7}; !slices.Equal(got, want) {
		t.Errorf("all instances: %v, want %v", got, want)
	}
	empty := start(t, ec2sim.Options{})
	if got := empty.describe(t, nil); len(got) != 0 {
		t.Errorf("no instance configured: %v, want none", ids(got))
	}
}

// Filters narrow the answer: a filter's values are OR'ed, filters AND'ed,
// with ids too, and values take EC2's wildcards.
func TestFilters(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	filter := func(name string, values ...string) types.Filter {
		return types.Filter{Name: aws.String(name), Values: values}
	}
	for _, c := range []struct {
		what string
		in   ec2.DescribeInstancesInput
		want []string
	}{
		{"zone", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", "us-east-1b")}}, []string{id2, id5}},
		{"zones OR'ed", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", "us-east-1c", "us-west-2a")}}, []string{id3, id6, id7}},
		{"zone AND state", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", "us-east-1c"), filter("instance-state-name", ec2sim.Running)}}, []string{id6}},
		{"stopped", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("instance-state-name", ec2sim.Stopped, ec2sim.Stopping)}}, []string{id3}},
		{"instance-id", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("instance-id", id4, idGhost)}}, []string{id4}},
		{"ids AND zone", ec2.DescribeInstancesInput{InstanceIds: []string{id1, id2, id4}, Filters: []types.Filter{filter("availability-zone", "us-east-1a")}}, []string{id1, id4}},
		{"wildcard *", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", "us-west-*")}}, []string{id7}},
		{"wildcard ?", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("instance-id", "i-0a0000000000000a?")}}, []string{id1, id4, id7}},
		{"escaped", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", `us-east-1\*`)}}, nil},
		{"no match", ec2.DescribeInstancesInput{Filters: []types.Filter{filter("availability-zone", "eu-west-1a")}}, nil},
	} {
		if got := ids(e.describe(t, &c.in)); !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, want %v", c.what, got, c.want)
		}
	}
}

// An id no instance has is InvalidInstanceID.NotFound naming it (all of them
// when several are missing), one not of the form i-… is
// InvalidInstanceID.Malformed, as AWS answers: HTTP 400 with a request id,
// not retried.
func TestUnknownID(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	for i, c := range []struct {
		ids        []string
		code, want string
	}{
		{[]string{idGhost}, "InvalidInstanceID.NotFound", "The instance ID '" + idGhost + "' does not exist"},
		{[]string{"i-0dead", id1, idGhost}, "InvalidInstanceID.NotFound", "The instance IDs 'i-0dead, " + idGhost + "' do not exist"},
		{[]string{id1, "web-1"}, "InvalidInstanceID.Malformed", `Invalid id: "web-1"`},
		{[]string{"i-0123456789abcdef01"}, "InvalidInstanceID.Malformed", `Invalid id: "i-0123456789abcdef01"`},
	} {
		_, err := e.c.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{InstanceIds: c.ids})
		if msg := wantCode(t, err, c.code); msg != c.want {
			t.Errorf("%v: message %q, want %q", c.ids, msg, c.want)
		}
		var re *awshttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != http.StatusBadRequest || !uuid.MatchString(re.ServiceRequestID()) {
			t.Errorf("%v: %v, want HTTP 400 with the request id of the body", c.ids, err)
		}
		if n := e.sim.Calls("DescribeInstances"); n != i+1 {
			t.Errorf("%v: %d calls in all, want %d: the error is not retried", c.ids, n, i+1)
		}
	}
}

// A filter or a parameter that is not simulated is refused, saying so,
// rather than ignored.
func TestNotSimulatedRefused(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	for _, c := range []struct {
		what string
		in   ec2.DescribeInstancesInput
		want string
	}{
		{"tag filter", ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("availability-zone"), Values: []string{"us-east-1a"}}, {Name: aws.String("tag:Name"), Values: []string{"web"}}}},
			`ec2sim: filter "tag:Name" of DescribeInstances is not simulated; only availability-zone, instance-id, instance-state-name are`},
		{"filter without a value", ec2.DescribeInstancesInput{Filters: []types.Filter{{Name: aws.String("instance-id")}}}, "ec2sim: filter instance-id without a value of DescribeInstances is not simulated"},
		{"DryRun", ec2.DescribeInstancesInput{DryRun: aws.Bool(true)}, "ec2sim: parameter DryRun of DescribeInstances is not simulated"},
	} {
		_, err := e.c.DescribeInstances(t.Context(), &c.in)
		if msg := wantCode(t, err, "ValidationError"); msg != c.want {
			t.Errorf("%s: %q, want %q", c.what, msg, c.want)
		}
	}
}

// The SDK's paginator pages through every instance, MaxResults at a time;
// MaxResults must be 5 to 1000 and not come with ids, and a NextToken must
// be one the server gave, as AWS requires.
func TestPaginator(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	var got []string
	var sizes []int
	p := ec2.NewDescribeInstancesPaginator(e.c, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5)})
	for p.HasMorePages() {
		page, err := p.NextPage(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ins := instances(t, page)
		sizes = append(sizes, len(ins))
		got = append(got, ids(ins)...)
	}
	if want := []string{id1, id2, id3, id4, id5, id6, id7}; !slices.Equal(got, want) || !slices.Equal(sizes, []int{5, 2}) {
		t.Errorf("paged through %v in pages of %v, want %v in pages of 5 and 2", got, sizes, want)
	}
	if n := e.sim.Calls("DescribeInstances"); n != 2 {
		t.Errorf("%d calls, want 2", n)
	}

	// Filters apply before paging.
	p = ec2.NewDescribeInstancesPaginator(e.c, &ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), Filters: []types.Filter{{Name: aws.String("instance-state-name"), Values: []string{ec2sim.Running}}}})
	page, err := p.NextPage(t.Context())
	if err != nil || len(page.Reservations) != 5 || !p.HasMorePages() {
		t.Fatalf("running, first page: %v, %d reservations, more %v; want 5 and more", err, len(page.Reservations), p.HasMorePages())
	}
	if page, err = p.NextPage(t.Context()); err != nil || !slices.Equal(ids(instances(t, page)), []string{id7}) || p.HasMorePages() {
		t.Errorf("running, second page: %v, %v; want %s alone, the last page", err, page, id7)
	}

	for _, c := range []struct {
		what       string
		in         ec2.DescribeInstancesInput
		code, want string
	}{
		{"MaxResults 4", ec2.DescribeInstancesInput{MaxResults: aws.Int32(4)}, "InvalidParameterValue", "Value ( 4 ) for parameter maxResults is invalid. Expecting a value greater than 5."},
		{"MaxResults 1001", ec2.DescribeInstancesInput{MaxResults: aws.Int32(1001)}, "InvalidParameterValue", "Value ( 1001 ) for parameter maxResults is invalid. Expecting a value less than 1000."},
		{"MaxResults with ids", ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), InstanceIds: []string{id1}}, "InvalidParameterCombination", "The parameter instancesSet cannot be used with the parameter maxResults"},
		{"bad token", ec2.DescribeInstancesInput{MaxResults: aws.Int32(5), NextToken: aws.String("bogus")}, "InvalidParameterValue", "Value ( bogus ) for parameter NextToken is invalid. The token is invalid."},
	} {
		_, err := e.c.DescribeInstances(t.Context(), &c.in)
		if msg := wantCode(t, err, c.code); msg != c.want {
			t.Errorf("%s: %q, want %q", c.what, msg, c.want)
		}
	}
}

// Injected faults reach the SDK as EC2 sends them: throttling (awsquery's
// or EC2's own) is retried until it passes or the client's 3 attempts run
// out, a refusal (awsquery's AccessDenied or EC2's UnauthorizedOperation) is
// not retried; the caller gets the code, message and status.
func TestFaults(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		fault  awsquery.Error
		queued int
		calls  int // the SDK's attempts
		passes bool
	}{
		{awsquery.Throttling, 2, 3, true},
		{ec2sim.RequestLimitExceeded, 3, 3, false},
		{awsquery.AccessDenied, 1, 1, false},
		{ec2sim.UnauthorizedOperation, 1, 1, false},
	} {
		e := start(t, ec2sim.Options{Instances: fleet()})
		if err := e.sim.FailNext("DescribeInstances", c.queued, c.fault); err != nil {
			t.Fatal(err)
		}
		out, err := e.c.DescribeInstances(t.Context(), &ec2.DescribeInstancesInput{InstanceIds: []string{id2}})
		if n := e.sim.Calls("DescribeInstances"); n != c.calls {
			t.Errorf("%s: %d calls, want %d", c.fault.Code, n, c.calls)
		}
		if c.passes {
			if err != nil || !slices.Equal(ids(instances(t, out)), []string{id2}) {
				t.Errorf("%s: %v, want %s once the faults are retried", c.fault.Code, err, id2)
			}
			continue
		}
		if msg := wantCode(t, err, c.fault.Code); msg != c.fault.Message {
			t.Errorf("%s: message %q, want %q", c.fault.Code, msg, c.fault.Message)
		}
		var re *awshttp.ResponseError
		if !errors.As(err, &re) || re.HTTPStatusCode() != c.fault.Status {
			t.Errorf("%s: %v, want HTTP %d", c.fault.Code, err, c.fault.Status)
		}
	}
	e := start(t, ec2sim.Options{})
	if err := e.sim.FailNext("RunInstances", 1, awsquery.Throttling); err == nil {
		t.Error("FailNext accepted an action the server does not implement")
	}
}

// The raw wire format: EC2's lower-camel element names and <item> lists
// (which the SDK's decoder, being case-insensitive, would not catch), no
// result element, and errors as <Response><Errors><Error>.
func TestWireFormat(t *testing.T) {
	t.Parallel()
	e := start(t, ec2sim.Options{Instances: fleet()})
	post := func(signed bool, kv ...string) (int, string) {
		form := url.Values{"Action": {"DescribeInstances"}, "Version": {ec2sim.APIVersion}}
		for i := 0; i+1 < len(kv); i += 2 {
			form.Set(kv[i], kv[i+1])
		}
		w := httptest.NewRecorder()
		e.sim.ServeHTTP(w, awsquery.NewRequest(form, signed))
		return w.Code, w.Body.String()
	}

	code, body := post(true, "InstanceId.1", id3, "Filter.1.Name", "availability-zone", "Filter.1.Value.1", "us-east-1c")
	for _, want := range []string{
		`<DescribeInstancesResponse xmlns="` + ec2sim.Namespace + `"><requestId>`,
		`</requestId><reservationSet><item><reservationId>r-0`,
		`</reservationId><ownerId>123456789012</ownerId><groupSet></groupSet><instancesSet><item><instanceId>` + id3 + `</instanceId>`,
		`<instanceState><code>80</code><name>stopped</name></instanceState><instanceType>m5.large</instanceType><launchTime>`,
		`<placement><availabilityZone>us-east-1c</availabilityZone><groupName></groupName><tenancy>default</tenancy></placement></item></instancesSet></item></reservationSet></DescribeInstancesResponse>`,
	} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("%d, answer lacks %s: %s", code, want, body)
		}
	}
	if strings.Contains(body, "Result") || strings.Contains(body, "ResponseMetadata") || strings.Contains(body, "nextToken") {
		t.Errorf("answer has a query-protocol element or a nextToken: %s", body)
	}
	if code, body = post(true, "MaxResults", "5"); code != 200 || !strings.Contains(body, "</reservationSet><nextToken>"+id6+"</nextToken></DescribeInstancesResponse>") {
		t.Errorf("first page: %d %s, want the nextToken after the reservations", code, body)
	}

	errorBody := regexp.MustCompile(`^<Response><Errors><Error><Code>([^<]+)</Code><Message>[^<]+</Message></Error></Errors><RequestID>[0-9a-f-]{36}</RequestID></Response>$`)
	for _, c := range []struct {
		signed bool
		kv     []string
		status int
		code   string
	}{
		{true, []string{"InstanceId.1", idGhost}, 400, "InvalidInstanceID.NotFound"},
		{true, []string{"InstanceIds.member.1", id1}, 400, "ValidationError"},
		{true, []string{"Version", "2015-12-01"}, 400, "InvalidAction"},
		{false, nil, 403, "MissingAuthenticationToken"},
	} {
		status, body := post(c.signed, c.kv...)
		if m := errorBody.FindStringSubmatch(body); status != c.status || m == nil || m[1] != c.code {
			t.Errorf("%v: %d %s, want %d and EC2's error envelope with %s", c.kv, status, body, c.status, c.code)
		}
	}
}

// New refuses instances EC2 could not have, saying what is wrong.
func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what string
		in   ec2sim.Instance
		want string
	}{
		{"no id", ec2sim.Instance{}, `id ""`},
		{"not i-", ec2sim.Instance{ID: "web-1"}, `id "web-1"`},
		{"prefix only", ec2sim.Instance{ID: "i-"}, `id "i-"`},
		{"too long", ec2sim.Instance{ID: "i-0123456789abcdef01"}, "17 more characters"},
		{"duplicate", ec2sim.Instance{ID: id1}, "unique"},
		{"state", ec2sim.Instance{ID: idGhost, State: "Running"}, `state "Running"`},
	} {
		_, err := ec2sim.New(ec2sim.Options{Instances: append(fleet(), c.in)})
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.HasPrefix(err.Error(), "ec2sim: ") {
			t.Errorf("%s: %v, want an ec2sim error about %q", c.what, err, c.want)
		}
	}
}
