package awsquery_test

import (
	"encoding/xml"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

const (
	version   = "2020-01-01"
	namespace = "http://example.amazonaws.com/doc/2020-01-01/"
	signature = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/example/aws4_request, SignedHeaders=host, Signature=00"
)

// describeResult is what the test service's Describe answers.
type describeResult struct {
	Name  string
	Items struct {
		Member []string `xml:"member"`
	}
}

// ec2DescribeResult is what the EC2 test service's Describe answers.
type ec2DescribeResult struct {
	Name  string   `xml:"name"`
	Items []string `xml:"itemSet>item"`
}

// oddResult encodes with an attribute, which an EC2 result cannot have.
type oddResult struct {
	ID string `xml:"id,attr"`
}

// service is an API whose dispatch records what it is called with.
type service struct {
	api *awsquery.API

	mu  sync.Mutex
	got []string // actions dispatched, in order
}

// newService serves Describe (a result: Name and the list Items), Update (no
// result element), Refuse (a ValidationError), Down (ServiceUnavailable) and
// Odd (a result with an attribute), in the query protocol or, if ec2, in
// EC2's (where Describe's list is Item.N and answers ec2DescribeResult).
func newService(ec2 bool) *service {
	s := &service{}
	s.api = &awsquery.API{
		Version:   version,
		Namespace: namespace,
		EC2:       ec2,
		Actions:   []string{"Describe", "Update", "Refuse", "Down", "Odd"},
		Dispatch: func(action string, form url.Values) (any, *awsquery.Error) {
			s.mu.Lock()
			s.got = append(s.got, action)
			s.mu.Unlock()
			switch action {
			case "Describe":
				if ec2 {
					return ec2DescribeResult{Name: form.Get("Name"), Items: awsquery.ListEC2(form, "Item")}, nil
				}
				var res describeResult
				res.Name = form.Get("Name")
				res.Items.Member = awsquery.List(form, "Items")
				return res, nil
			case "Odd":
				return oddResult{ID: "x"}, nil
			case "Update":
				return nil, nil
			case "Refuse":
				return nil, awsquery.Validation("Value %q at '%s' is refused", form.Get("Name"), "name")
			default:
				return nil, awsquery.Unavailable()
			}
		},
	}
	return s
}

func (s *service) dispatched() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

// answer is one response as the test reads it.
type answer struct {
	status int
	header http.Header
	body   string
}

// do sends form, signed or not, as the body of a POST (awsquery.NewRequest)
// or, with another method, in the query, and returns the answer.
func (s *service) do(t *testing.T, method string, form url.Values, signed bool) answer {
	t.Helper()
	r := awsquery.NewRequest(form, signed)
	if method != http.MethodPost {
		r = httptest.NewRequest(method, "/?"+form.Encode(), nil)
		if signed {
			r.Header.Set("Authorization", signature)
		}
	}
	w := httptest.NewRecorder()
	s.api.ServeHTTP(w, r)
	return answer{w.Code, w.Header(), w.Body.String()}
}

func (s *service) post(t *testing.T, form url.Values) answer {
	t.Helper()
	return s.do(t, http.MethodPost, form, true)
}

// call returns the form of a signed call of action at the right version.
func call(action string, kv ...string) url.Values {
	f := url.Values{"Action": {action}, "Version": {version}}
	for i := 0; i+1 < len(kv); i += 2 {
		f.Add(kv[i], kv[i+1])
	}
	return f
}

// errorResponse is <ErrorResponse> as a client decodes it.
type errorResponse struct {
	XMLName   xml.Name
	Error     struct{ Type, Code, Message string }
	RequestId string
}

var uuid = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// wantError checks that a is an <ErrorResponse> in the namespace with status,
// Type typ and code, and the request id of its header; it returns the
// message.
func wantError(t *testing.T, a answer, status int, typ, code string) string {
	t.Helper()
	var er errorResponse
	if err := xml.Unmarshal([]byte(a.body), &er); err != nil {
		t.Fatalf("%d %s: not XML: %v", a.status, a.body, err)
	}
	id := a.header.Get("X-Amzn-Requestid")
	if a.status != status || er.XMLName != (xml.Name{Space: namespace, Local: "ErrorResponse"}) || er.Error.Type != typ || er.Error.Code != code || er.Error.Message == "" {
		t.Errorf("%d %s, want %d and an ErrorResponse in %s with Type %s, Code %s and a message", a.status, a.body, status, namespace, typ, code)
	}
	if !uuid.MatchString(id) || er.RequestId != id {
		t.Errorf("request id %q in the header, %q in the body; want the same UUID", id, er.RequestId)
	}
	if ct := a.header.Get("Content-Type"); ct != "text/xml" {
		t.Errorf("Content-Type %q, want text/xml", ct)
	}
	return er.Error.Message
}

// Requests the protocol refuses never reach Dispatch, but are counted.
func TestRefusedRequests(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		what    string
		method  string
		form    url.Values
		signed  bool
		status  int
		code    string
		message string
	}{
		{"missing Action", http.MethodPost, url.Values{"Version": {version}}, true, 400, "MissingAction", "Request is missing Action"},
		{"unsigned", http.MethodPost, call("Describe"), false, 403, "MissingAuthenticationToken", "Request is missing Authentication Token"},
		{"wrong version", http.MethodPost, url.Values{"Action": {"Describe"}, "Version": {"2012-06-01"}}, true, 400, "InvalidAction", "Could not find operation Describe for version 2012-06-01"},
		{"no version", http.MethodPost, url.Values{"Action": {"Describe"}}, true, 400, "InvalidAction", "Could not find operation Describe for version "},
		{"unknown action", http.MethodPost, call("Create"), true, 400, "InvalidAction", "Could not find operation Create for version " + version},
		{"method", http.MethodPut, call("Describe"), true, 405, "InvalidHttpRequest", "Method PUT is not allowed; send POST"},
	} {
		s := newService(false)
		msg := wantError(t, s.do(t, c.method, c.form, c.signed), c.status, "Sender", c.code)
		if msg != c.message {
			t.Errorf("%s: message %q, want %q", c.what, msg, c.message)
		}
		if got := s.dispatched(); len(got) != 0 {
			t.Errorf("%s: dispatched %v, want nothing", c.what, got)
		}
		wantCalls := 1
		if c.method == http.MethodPut {
			wantCalls = 0 // refused before the form is read
		}
		if n := s.api.Calls(c.form.Get("Action")); n != wantCalls {
			t.Errorf("%s: Calls(%q) = %d, want %d", c.what, c.form.Get("Action"), n, wantCalls)
		}
	}
}

// A body over 1 MiB is refused as malformed.
func TestBodyLimit(t *testing.T) {
	t.Parallel()
	s := newService(false)
	a := s.post(t, call("Describe", "Name", strings.Repeat("x", 1<<20)))
	if msg := wantError(t, a, 400, "Sender", "MalformedQueryString"); !strings.Contains(msg, "too large") {
		t.Errorf("message %q, want it to say the body is too large", msg)
	}
	if got := s.dispatched(); len(got) != 0 {
		t.Errorf("dispatched %v, want nothing", got)
	}
}

// A result is <XxxResponse><XxxResult>…</XxxResult><ResponseMetadata> in the
// namespace, whether the parameters come in a POST body or a GET query.
func TestResult(t *testing.T) {
	t.Parallel()
	s := newService(false)
	for _, method := range []string{http.MethodPost, http.MethodGet} {
		a := s.do(t, method, call("Describe", "Name", "web", "Items.member.1", "a", "Items.member.2", "b", "Items.member.4", "d"), true)
		var resp struct {
			XMLName   xml.Name
			Result    *describeResult `xml:"DescribeResult"`
			RequestId string          `xml:"ResponseMetadata>RequestId"`
		}
		if err := xml.Unmarshal([]byte(a.body), &resp); err != nil || a.status != 200 {
			t.Fatalf("%s: %d %s: %v", method, a.status, a.body, err)
		}
		if resp.XMLName != (xml.Name{Space: namespace, Local: "DescribeResponse"}) {
			t.Errorf("%s: root %v, want DescribeResponse in %s", method, resp.XMLName, namespace)
		}
		if resp.Result == nil || resp.Result.Name != "web" || !reflect.DeepEqual(resp.Result.Items.Member, []string{"a", "b"}) {
			t.Errorf("%s: result %+v, want Name web and Items a, b (the list ends at the first missing index): %s", method, resp.Result, a.body)
		}
		if id := a.header.Get("X-Amzn-Requestid"); !uuid.MatchString(id) || resp.RequestId != id {
			t.Errorf("%s: request id %q in the header, %q in the body; want the same UUID", method, id, resp.RequestId)
		}
	}
	if got := s.dispatched(); !reflect.DeepEqual(got, []string{"Describe", "Describe"}) {
		t.Errorf("dispatched %v, want Describe twice", got)
	}
	if n := s.api.Calls("Describe"); n != 2 {
		t.Errorf("Calls = %d, want 2", n)
	}
}

// A nil result has no result element, only the metadata.
func TestNilResult(t *testing.T) {
	t.Parallel()
	s := newService(false)
	a := s.post(t, call("Update"))
	if a.status != 200 || strings.Contains(a.body, "UpdateResult") {
		t.Fatalf("%d %s, want 200 without an UpdateResult element", a.status, a.body)
	}
	want := `<UpdateResponse xmlns="` + namespace + `"><ResponseMetadata><RequestId>` + a.header.Get("X-Amzn-Requestid") + `</RequestId></ResponseMetadata></UpdateResponse>`
	if a.body != want {
		t.Errorf("body %s, want %s", a.body, want)
	}
}

// Dispatch's errors are answered as they are: a 4xx is Type Sender, a 5xx
// Type Receiver.
func TestDispatchErrors(t *testing.T) {
	t.Parallel()
	s := newService(false)
	if msg := wantError(t, s.post(t, call("Refuse", "Name", "x")), 400, "Sender", "ValidationError"); msg != `Value "x" at 'name' is refused` {
		t.Errorf("message %q, want Validation's formatting", msg)
	}
	if msg := wantError(t, s.post(t, call("Down")), 503, "Receiver", "ServiceUnavailable"); msg != "The simulated service is closed" {
		t.Errorf("message %q", msg)
	}
}

// FailNext queues faults per action, answered in order before Dispatch is
// reached again; every call counts.
func TestFailNext(t *testing.T) {
	t.Parallel()
	s := newService(false)
	boom := awsquery.Error{Status: 500, Code: "InternalFailure", Message: "boom"}
	for _, f := range []struct {
		n int
		e awsquery.Error
	}{{2, awsquery.Throttling}, {1, awsquery.AccessDenied}, {1, boom}} {
		if err := s.api.FailNext("Describe", f.n, f.e); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range []struct {
		status  int
		typ     string
		code    string
		message string
	}{
		{400, "Sender", "Throttling", "Rate exceeded"},
		{400, "Sender", "Throttling", "Rate exceeded"},
		{403, "Sender", "AccessDenied", awsquery.AccessDenied.Message},
		{500, "Receiver", "InternalFailure", "boom"},
	} {
		if msg := wantError(t, s.post(t, call("Describe")), w.status, w.typ, w.code); msg != w.message {
			t.Errorf("call %d: message %q, want %q", i+1, msg, w.message)
		}
		if got := s.dispatched(); len(got) != 0 {
			t.Fatalf("call %d: dispatched %v while faults were queued", i+1, got)
		}
	}
	// Other actions are not affected, and the queue is now empty.
	if a := s.post(t, call("Update")); a.status != 200 {
		t.Errorf("Update: %d %s, want 200", a.status, a.body)
	}
	if a := s.post(t, call("Describe")); a.status != 200 {
		t.Errorf("Describe after the faults: %d %s, want 200", a.status, a.body)
	}
	if got := s.dispatched(); !reflect.DeepEqual(got, []string{"Update", "Describe"}) {
		t.Errorf("dispatched %v, want Update, Describe", got)
	}
	if n := s.api.Calls("Describe"); n != 5 {
		t.Errorf("Calls(Describe) = %d, want 5: four failed, one passed", n)
	}
	if n := s.api.Calls("Update"); n != 1 {
		t.Errorf("Calls(Update) = %d, want 1", n)
	}
	if n := s.api.Calls("Refuse"); n != 0 {
		t.Errorf("Calls(Refuse) = %d, want 0", n)
	}
}

// FailNext refuses what it could not answer.
func TestFailNextRefuses(t *testing.T) {
	t.Parallel()
	s := newService(false)
	for _, c := range []struct {
		what   string
		action string
		n      int
		e      awsquery.Error
	}{
		{"unknown action", "Create", 1, awsquery.Throttling},
		{"n = 0", "Describe", 0, awsquery.Throttling},
		{"2xx status", "Describe", 1, awsquery.Error{Status: 200, Code: "OK", Message: "fine"}},
		{"status above 5xx", "Describe", 1, awsquery.Error{Status: 600, Code: "Odd"}},
		{"no code", "Describe", 1, awsquery.Error{Status: 400, Message: "no code"}},
	} {
		if err := s.api.FailNext(c.action, c.n, c.e); err == nil {
			t.Errorf("%s: accepted", c.what)
		}
	}
	if a := s.post(t, call("Describe")); a.status != 200 {
		t.Errorf("Describe after refused FailNexts: %d %s, want 200: nothing was queued", a.status, a.body)
	}
}

func TestHelpers(t *testing.T) {
	t.Parallel()
	if got := awsquery.Null("targetGroupArn"); *got != (awsquery.Error{Status: 400, Code: "ValidationError", Message: "1 validation error detected: Value null at 'targetGroupArn' failed to satisfy constraint: Member must not be null"}) {
		t.Errorf("Null: %+v", *got)
	}
	if got := awsquery.Unavailable(); got.Status != 503 || got.Code != "ServiceUnavailable" {
		t.Errorf("Unavailable: %+v", *got)
	}
	var err error = awsquery.Throttling
	if err.Error() != "Throttling: Rate exceeded" {
		t.Errorf("Error() = %q", err.Error())
	}
	if got := awsquery.List(url.Values{"Names.member.2": {"b"}}, "Names"); got != nil {
		t.Errorf("List without member 1: %v, want nil", got)
	}
	if got := awsquery.List(url.Values{"Names.member.1": {"a", "ignored"}, "Names.member.2": {""}, "Other.member.3": {"x"}}, "Names"); !reflect.DeepEqual(got, []string{"a", ""}) {
		t.Errorf("List: %q, want [a, \"\"]", got)
	}
	if got := awsquery.ListEC2(url.Values{"InstanceId.1": {"i-1"}, "InstanceId.2": {"i-2"}, "InstanceId.member.3": {"x"}, "InstanceId.4": {"i-4"}}, "InstanceId"); !reflect.DeepEqual(got, []string{"i-1", "i-2"}) {
		t.Errorf("ListEC2: %q, want [i-1, i-2]", got)
	}
	if got := awsquery.ListEC2(url.Values{"InstanceId.member.1": {"i-1"}}, "InstanceId"); got != nil {
		t.Errorf("ListEC2 of a query-protocol list: %q, want nil", got)
	}
	a, b := awsquery.RequestID(), awsquery.RequestID()
	if !uuid.MatchString(a) || !uuid.MatchString(b) || a == b {
		t.Errorf("RequestID: %q, %q; want two different UUIDs", a, b)
	}
}
