package awsquery_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws/protocol/ec2query"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// An EC2 result is <XxxResponse><requestId> followed by the result's own
// elements, with no <XxxResult> and no <ResponseMetadata>; a nil result is
// the request id alone.
func TestEC2Result(t *testing.T) {
	t.Parallel()
	s := newService(true)
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		a := s.do(t, method, call("Describe", "Name", "web", "Item.1", "a", "Item.2", "b", "Item.4", "d", "Items.member.1", "x"), true)
		id := a.header.Get("X-Amzn-Requestid")
		want := `<DescribeResponse xmlns="` + namespace + `"><requestId>` + id + `</requestId><name>web</name><itemSet><item>a</item><item>b</item></itemSet></DescribeResponse>`
		if a.status != 200 || a.body != want || !uuid.MatchString(id) {
			t.Errorf("%s: %d %s, want 200 %s with a UUID (the list ends at the first missing index)", method, a.status, a.body, want)
		}
		if ct := a.header.Get("Content-Type"); ct != "text/xml" {
			t.Errorf("%s: Content-Type %q, want text/xml", method, ct)
		}
	}
	a := s.post(t, call("Update"))
	if want := `<UpdateResponse xmlns="` + namespace + `"><requestId>` + a.header.Get("X-Amzn-Requestid") + `</requestId></UpdateResponse>`; a.status != 200 || a.body != want {
		t.Errorf("nil result: %d %s, want 200 %s", a.status, a.body, want)
	}
	if n := s.api.Calls("Describe"); n != 2 {
		t.Errorf("Calls(Describe) = %d, want 2", n)
	}
}

// wantEC2Error checks that a is EC2's <Response><Errors><Error> with status,
// code and message, no namespace and the request id of its header, exactly
// as the SDK's ec2query decoder reads it.
func wantEC2Error(t *testing.T, what string, a answer, status int, code, message string) {
	t.Helper()
	id := a.header.Get("X-Amzn-Requestid")
	want := `<Response><Errors><Error><Code>` + code + `</Code><Message>` + message + `</Message></Error></Errors><RequestID>` + id + `</RequestID></Response>`
	if a.status != status || a.body != want || !uuid.MatchString(id) {
		t.Errorf("%s: %d %s, want %d %s with a UUID", what, a.status, a.body, status, want)
	}
	if ct := a.header.Get("Content-Type"); ct != "text/xml" {
		t.Errorf("%s: Content-Type %q, want text/xml", what, ct)
	}
	got, err := ec2query.GetErrorResponseComponents(strings.NewReader(a.body))
	if err != nil || got != (ec2query.ErrorComponents{Code: code, Message: message, RequestID: id}) {
		t.Errorf("%s: the SDK decodes %+v, %v; want code %s, message %q, request id %s", what, got, err, code, message, id)
	}
}

// With EC2, every error is <Response><Errors><Error>: the protocol's own
// refusals, Dispatch's errors, the faults of FailNext and a result that
// cannot be EC2's; the status stays the error's.
func TestEC2Errors(t *testing.T) {
	t.Parallel()
	s := newService(true)
	wantEC2Error(t, "missing Action", s.post(t, url.Values{"Version": {version}}), 400, "MissingAction", "Request is missing Action")
	wantEC2Error(t, "unsigned", s.do(t, http.MethodPost, call("Describe"), false), 403, "MissingAuthenticationToken", "Request is missing Authentication Token")
	wantEC2Error(t, "unknown action", s.post(t, call("Create")), 400, "InvalidAction", "Could not find operation Create for version "+version)
	wantEC2Error(t, "Down", s.post(t, call("Down")), 503, "ServiceUnavailable", "The simulated service is closed")
	for _, c := range []struct {
		action        string
		status        int
		code, message string
	}{
		{"Refuse", 400, "ValidationError", `Value "x" at 'name' is refused`},
		{"Odd", 500, "InternalFailure", `Cannot encode the result: an EC2 result must encode as an element without attributes, not "<r id=\"x\"></r>"`},
	} {
		a := s.post(t, call(c.action, "Name", "x"))
		got, err := ec2query.GetErrorResponseComponents(strings.NewReader(a.body))
		if a.status != c.status || err != nil || got != (ec2query.ErrorComponents{Code: c.code, Message: c.message, RequestID: a.header.Get("X-Amzn-Requestid")}) {
			t.Errorf("%s: %d %s: the SDK decodes %+v, %v; want %d %s %q and the request id", c.action, a.status, a.body, got, err, c.status, c.code, c.message)
		}
	}

	if err := s.api.FailNext("Describe", 1, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	wantEC2Error(t, "FailNext", s.post(t, call("Describe")), 400, "Throttling", "Rate exceeded")
	if got := s.dispatched(); strings.Join(got, ",") != "Down,Refuse,Odd" {
		t.Errorf("dispatched %v, want Down, Refuse, Odd: the refusals and the fault never reach Dispatch", got)
	}
}
