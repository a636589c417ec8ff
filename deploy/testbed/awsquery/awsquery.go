package awsquery

import (
	"bytes"
	"crypto/rand"
	"encoding/xml"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

// Error is an error answer of the API: <ErrorResponse> with its code and
// message, Type Sender for a 4xx status, Receiver for a 5xx (in EC2's
// protocol, <Response><Errors><Error> with the code and message).
type Error struct {
	Status  int    // HTTP status, 4xx (Type Sender) or 5xx (Type Receiver)
	Code    string // the error code, e.g. "Throttling"
	Message string
}

// Error returns "Code: Message".
func (e Error) Error() string { return e.Code + ": " + e.Message }

// Faults as AWS returns them, for FailNext.
var (
	// Throttling is a service's answer to a caller over its API rate; the
	// SDK's standard retryer retries it.
	Throttling = Error{Status: http.StatusBadRequest, Code: "Throttling", Message: "Rate exceeded"}
	// AccessDenied is IAM refusing the action; the SDK does not retry it.
	AccessDenied = Error{Status: http.StatusForbidden, Code: "AccessDenied", Message: "User: arn:aws:iam::123456789012:user/sim is not authorized to perform this action"}
)

// Validation returns AWS's ValidationError (400) with the message format
// makes of args.
func Validation(format string, args ...any) *Error {
	return &Error{http.StatusBadRequest, "ValidationError", fmt.Sprintf(format, args...)}
}

// Null returns the ValidationError of a required parameter missing; param is
// its name in AWS's messages (lower camel case, e.g. "targetGroupArn").
func Null(param string) *Error {
	return Validation("1 validation error detected: Value null at '%s' failed to satisfy constraint: Member must not be null", param)
}

// Unavailable returns ServiceUnavailable (503), a simulator's answer once it
// is closed.
func Unavailable() *Error {
	return &Error{http.StatusServiceUnavailable, "ServiceUnavailable", "The simulated service is closed"}
}

// API serves one service's API. Set its fields before the first request and
// do not change them afterwards; the zero value of the rest is ready to use.
// An API must not be copied after first use.
type API struct {
	// Version is the API version requests must name (e.g. "2015-12-01").
	Version string
	// Namespace is the XML namespace of every answer (in EC2's protocol,
	// of every result; its errors have none).
	Namespace string
	// EC2 switches the envelopes to EC2's protocol (the SDK's ec2query),
	// whose requests are the query protocol's: a result is
	// <XxxResponse><requestId>…</requestId>…</XxxResponse>, the result's
	// elements directly in the response element, and an error is
	// <Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…</RequestID></Response>,
	// without a namespace or a Type.
	EC2 bool
	// Actions are the names of the actions the service implements; a
	// request naming another is InvalidAction, and FailNext refuses it.
	Actions []string
	// Dispatch answers a request for one of Actions, with the request's
	// parameters: a result struct that becomes <XxxResult> (nil: no result
	// element, for an action without output; with EC2, the struct's
	// elements follow requestId and it must have no attributes), or an
	// error. It is called with no lock held, concurrently for concurrent
	// requests.
	Dispatch func(action string, form url.Values) (any, *Error)

	mu     sync.Mutex
	faults map[string][]pendingFault // by action, oldest first
	calls  map[string]int            // by action, "" included
}

type pendingFault struct {
	e Error
	n int
}

// ServeHTTP answers one API request in the AWS query protocol (or EC2's).
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	id := RequestID()
	w.Header().Set("X-Amzn-Requestid", id)
	if r.Method != http.MethodPost && r.Method != http.MethodGet {
		a.writeError(w, id, &Error{http.StatusMethodNotAllowed, "InvalidHttpRequest", "Method " + r.Method + " is not allowed; send POST"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
	if err := r.ParseForm(); err != nil {
		a.writeError(w, id, &Error{http.StatusBadRequest, "MalformedQueryString", "Cannot parse the request: " + err.Error()})
		return
	}
	name := r.Form.Get("Action")
	a.mu.Lock()
	if a.calls == nil {
		a.calls = map[string]int{}
	}
	a.calls[name]++
	a.mu.Unlock()
	if name == "" {
		a.writeError(w, id, &Error{http.StatusBadRequest, "MissingAction", "Request is missing Action"})
		return
	}
	if !strings.HasPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ") {
		a.writeError(w, id, &Error{http.StatusForbidden, "MissingAuthenticationToken", "Request is missing Authentication Token"})
		return
	}
	if v := r.Form.Get("Version"); !slices.Contains(a.Actions, name) || v != a.Version {
		a.writeError(w, id, &Error{http.StatusBadRequest, "InvalidAction", fmt.Sprintf("Could not find operation %s for version %s", name, v)})
		return
	}
	if e := a.takeFault(name); e != nil {
		a.writeError(w, id, e)
		return
	}
	res, e := a.Dispatch(name, r.Form)
	if e != nil {
		a.writeError(w, id, e)
		return
	}
	a.writeResult(w, id, name, res)
}

// FailNext makes the next n calls of action answer e instead of reaching
// Dispatch, after any faults already queued for it. The calls still count in
// Calls.
func (a *API) FailNext(action string, n int, e Error) error {
	if !slices.Contains(a.Actions, action) {
		return fmt.Errorf("awsquery: cannot fail %q: not an action the server implements", action)
	}
	if n < 1 || e.Status < 400 || e.Status > 599 || e.Code == "" {
		return fmt.Errorf("awsquery: cannot fail %s %d times with status %d and code %q: need n ≥ 1, a 4xx or 5xx status and a code", action, n, e.Status, e.Code)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.faults == nil {
		a.faults = map[string][]pendingFault{}
	}
	a.faults[action] = append(a.faults[action], pendingFault{e: e, n: n})
	return nil
}

// takeFault returns the fault the next call of action must answer, if any.
func (a *API) takeFault(action string) *Error {
	a.mu.Lock()
	defer a.mu.Unlock()
	q := a.faults[action]
	if len(q) == 0 {
		return nil
	}
	e := q[0].e
	if q[0].n--; q[0].n == 0 {
		a.faults[action] = q[1:]
	}
	return &e
}

// Calls returns how many requests named action so far, failed ones included:
// with FailNext it shows how often the SDK retried.
func (a *API) Calls(action string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.calls[action]
}

// writeResult writes <XxxResponse><XxxResult>res</XxxResult><ResponseMetadata>,
// without the result element when res is nil (AWS's answer to an action
// without output); with EC2, <XxxResponse><requestId> and res's elements.
func (a *API) writeResult(w http.ResponseWriter, id, name string, res any) {
	var buf bytes.Buffer
	enc := xml.NewEncoder(&buf)
	start := xml.StartElement{Name: xml.Name{Local: name + "Response"}, Attr: []xml.Attr{{Name: xml.Name{Local: "xmlns"}, Value: a.Namespace}}}
	err := enc.EncodeToken(start)
	if a.EC2 {
		if err == nil {
			err = enc.EncodeElement(id, xml.StartElement{Name: xml.Name{Local: "requestId"}})
		}
		if err == nil && res != nil {
			err = encodeElements(enc, &buf, res)
		}
	} else {
		if err == nil && res != nil {
			err = enc.EncodeElement(res, xml.StartElement{Name: xml.Name{Local: name + "Result"}})
		}
		if err == nil {
			err = enc.EncodeElement(struct{ RequestId string }{id}, xml.StartElement{Name: xml.Name{Local: "ResponseMetadata"}})
		}
	}
	if err == nil {
		err = enc.EncodeToken(start.End())
	}
	if err == nil {
		err = enc.Flush()
	}
	if err != nil {
		a.writeError(w, id, &Error{http.StatusInternalServerError, "InternalFailure", "Cannot encode the result: " + err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/xml")
	w.Write(buf.Bytes())
}

// encodeElements writes what res encodes to inside its own element, but not
// that element, at the current position of enc, whose output is buf: the
// elements of an EC2 result, which has no wrapper.
func encodeElements(enc *xml.Encoder, buf *bytes.Buffer, res any) error {
	var b bytes.Buffer
	if err := xml.NewEncoder(&b).EncodeElement(res, xml.StartElement{Name: xml.Name{Local: "r"}}); err != nil {
		return err
	}
	inner, opened := bytes.CutPrefix(b.Bytes(), []byte("<r>"))
	inner, closed := bytes.CutSuffix(inner, []byte("</r>"))
	if !opened || !closed {
		return fmt.Errorf("an EC2 result must encode as an element without attributes, not %q", b.Bytes())
	}
	if err := enc.Flush(); err != nil {
		return err
	}
	buf.Write(inner)
	return nil
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

// ec2Error is <Response>, as EC2's errors are.
type ec2Error struct {
	XMLName   xml.Name `xml:"Response"`
	Code      string   `xml:"Errors>Error>Code"`
	Message   string   `xml:"Errors>Error>Message"`
	RequestID string
}

func (a *API) writeError(w http.ResponseWriter, id string, e *Error) {
	var x any
	if a.EC2 {
		x = ec2Error{Code: e.Code, Message: e.Message, RequestID: id}
	} else {
		var q xmlError
		q.Xmlns = a.Namespace
		q.Error.Type = "Sender"
		if e.Status >= 500 {
			q.Error.Type = "Receiver"
		}
		q.Error.Code, q.Error.Message, q.RequestId = e.Code, e.Message, id
		x = q
	}
	body, _ := xml.Marshal(x) // strings only: cannot fail
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.Status)
	w.Write(body)
}

// RequestID returns a random id in AWS's UUID form, as request ids (and
// other ids, such as Auto Scaling's activity ids) are.
func RequestID() string {
	var b [16]byte
	rand.Read(b[:])
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// List reads the query protocol's list name.member.1, name.member.2, … up to
// the first index missing; nil if there is none.
func List(form url.Values, name string) []string { return list(form, name+".member.") }

// ListEC2 reads EC2's list name.1, name.2, … (e.g. InstanceId.1) up to the
// first index missing; nil if there is none.
func ListEC2(form url.Values, name string) []string { return list(form, name+".") }

func list(form url.Values, prefix string) []string {
	var out []string
	for i := 1; ; i++ {
		v, ok := form[prefix+strconv.Itoa(i)]
		if !ok {
			return out
		}
		out = append(out, v[0])
	}
}

// NewRequest returns a POST of form to "/" as an SDK client sends it:
// form-encoded and, if signed, with a SigV4 Authorization header (whose
// signature API does not verify). It is for tests that look at a
// simulator's wire format through its ServeHTTP.
func NewRequest(form url.Values, signed bool) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if signed {
		r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/sim/aws4_request, SignedHeaders=host, Signature=00")
	}
	return r
}

// ClientConfig is the SDK configuration a test's client of a simulator
// uses: region us-east-1, static credentials (the simulators check that a
// request is signed, not by whom), a 5 s HTTP timeout, and the standard
// retryer with at most attempts attempts and a 5 ms backoff, so that
// retries take milliseconds. Give the client its BaseEndpoint.
func ClientConfig(attempts int) aws.Config {
	return aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""),
		HTTPClient:  &http.Client{Timeout: 5 * time.Second},
		Retryer: func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = attempts
				o.Backoff = retry.BackoffDelayerFunc(func(int, error) (time.Duration, error) { return 5 * time.Millisecond, nil })
			})
		},
	}
}
