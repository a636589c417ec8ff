package healthcheck

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Defaults for HTTPOptions.
const (
	DefaultTimeout  = 10 * time.Second // curl -m 10 in the tutorial
	DefaultMaxBody  = 64 << 10
	maxRedirects    = 5
	maxReasonLength = 300
)

// Status is the verdict of one probe attempt.
type Status int

// The verdicts.
const (
	Success Status = iota
	Failure
)

func (s Status) String() string {
	switch s {
	case Success:
		return "success"
	case Failure:
		return "failure"
	default:
		return fmt.Sprintf("Status(%d)", int(s))
	}
}

// Result is the outcome of one probe attempt.
type Result struct {
	Status Status
	// Code is the HTTP status received, 0 when none was received.
	Code int
	// Reason says why the attempt failed, short and specific ("status 500",
	// "timeout after 10s (waiting for response)"). It never contains the
	// response body. Empty on success.
	Reason string
	// Latency is how long the attempt took.
	Latency time.Duration
	// Refused: the connection was refused (nothing listens on the port yet,
	// as while the app starts). Such an attempt costs next to nothing.
	Refused bool
}

// Prober runs one probe attempt. It returns an error only when the probe could
// not run at all (bad configuration); a transport error, a bad status or a
// timeout is a Result with Status Failure.
type Prober interface {
	Probe(ctx context.Context) (Result, error)
}

// StatusRange is an inclusive range of accepted HTTP status codes.
type StatusRange struct{ Min, Max int }

// HTTPOptions configures an HTTP probe. The zero value of each field but URL
// means its default.
type HTTPOptions struct {
	// URL to GET, http:// or https://.
	URL string
	// Timeout per attempt, covering the whole request including the body
	// (default 10s, the tutorial's curl -m 10).
	Timeout time.Duration
	// Insecure skips TLS certificate verification (curl -k).
	Insecure bool
	// CAFile is a PEM bundle to verify the server with, instead of the system
	// roots (ignored when Insecure). It is read by NewHTTP.
	CAFile string
	// Host overrides the Host header and the TLS server name (SNI and
	// verification), for a certificate issued for the public name while the
	// probe dials the URL's host, e.g. localhost. It may carry a port, which
	// only the Host header keeps.
	Host string
	// UserAgent is sent as is; "" sends no User-Agent header at all
	// (curl -A "").
	UserAgent string
	// ExpectStatus lists the accepted status codes (default 200-299).
	ExpectStatus []StatusRange
	// ExpectBody is a substring the body (its first MaxBody bytes) must
	// contain ("" requires nothing).
	ExpectBody string
	// FollowRedirects follows up to 5 redirects (http or https only, never
	// from https down to http). When false (the default), a 3xx response is a
	// failure naming the status and its Location, unless ExpectStatus
	// accepts it.
	FollowRedirects bool
	// MaxBody is the most bytes read from the body (default 64 KiB).
	MaxBody int64
}

// HTTP probes a URL with GET. Build it with NewHTTP.
type HTTP struct {
	url        *url.URL
	timeout    time.Duration
	host       string
	userAgent  string
	expect     []StatusRange
	expectBody []byte
	follow     bool
	maxBody    int64
	client     *http.Client
}

var _ Prober = (*HTTP)(nil)

// DefaultExpectStatus is what ExpectStatus empty means: any 2xx.
var DefaultExpectStatus = []StatusRange{{200, 299}}

// Problem is an option of HTTPOptions that cannot be used, named in
// snake_case as in a config file (url, timeout, expect_status[i], ...).
type Problem struct{ Key, Msg string }

func (p Problem) Error() string { return p.Key + ": " + p.Msg }

// Check returns every problem of o, without reading CAFile: the one check
// of a probe's options (a config's validation reports them under its own
// keys; NewHTTP refuses options that have any).
func (o HTTPOptions) Check() []Problem {
	var ps []Problem
	bad := func(key, format string, args ...any) { ps = append(ps, Problem{key, fmt.Sprintf(format, args...)}) }
	u, err := url.Parse(o.URL)
	switch {
	case o.URL == "":
		bad("url", "empty")
	case err != nil:
		bad("url", "%v", err)
	case u.Scheme != "http" && u.Scheme != "https":
		bad("url", "%q: scheme must be http or https", u.Redacted())
	case u.Host == "" || u.Hostname() == "":
		bad("url", "%q has no host", u.Redacted())
	}
	if o.Timeout < 0 {
		bad("timeout", "%s must be positive", o.Timeout)
	}
	maxBody := o.MaxBody
	if maxBody == 0 {
		maxBody = DefaultMaxBody
	} else if maxBody < 0 {
		bad("max_body", "%d must be positive", maxBody)
	}
	if o.ExpectBody != "" && int64(len(o.ExpectBody)) > maxBody {
		bad("expect_body", "%d bytes, longer than max_body %d", len(o.ExpectBody), maxBody)
	}
	for i, r := range o.ExpectStatus {
		if r.Min < 100 || r.Max > 599 || r.Min > r.Max {
			bad(fmt.Sprintf("expect_status[%d]", i), "%d-%d: want 100 <= min <= max <= 599", r.Min, r.Max)
		}
	}
	if o.Host != "" && strings.ContainsAny(o.Host, " \t\r\n/?#@\\") {
		bad("host", "%q is not a host[:port]", o.Host)
	}
	return ps
}

// NewHTTP checks o (Check), reads o.CAFile, and builds the probe's client:
// no proxy (whatever the environment says), no keep-alive, its own dialer,
// and TLS configured from o. Every problem is reported.
func NewHTTP(o HTTPOptions) (*HTTP, error) {
	var errs []error
	for _, p := range o.Check() {
		errs = append(errs, p)
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.MaxBody == 0 {
		o.MaxBody = DefaultMaxBody
	}
	if len(o.ExpectStatus) == 0 {
		o.ExpectStatus = DefaultExpectStatus
	}
	u, _ := url.Parse(o.URL)
	serverName := ""
	if o.Host != "" {
		serverName = hostOnly(o.Host)
	}
	tlsConf := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: o.Insecure, //nolint:gosec // curl -k, on request only
		ServerName:         serverName,
	}
	if o.CAFile != "" {
		pool, err := LoadCAFile(o.CAFile)
		if err != nil {
			errs = append(errs, fmt.Errorf("ca_file: %w", err))
		}
		tlsConf.RootCAs = pool
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("health-check options: %w", err)
	}

	h := &HTTP{
		url:        u,
		timeout:    o.Timeout,
		host:       o.Host,
		userAgent:  o.UserAgent,
		expect:     append([]StatusRange(nil), o.ExpectStatus...),
		expectBody: []byte(o.ExpectBody),
		follow:     o.FollowRedirects,
		maxBody:    o.MaxBody,
	}
	dialer := &net.Dialer{Timeout: o.Timeout, KeepAlive: -1}
	tr := &http.Transport{
		Proxy:                  nil, // never from the environment
		DialContext:            dialer.DialContext,
		TLSClientConfig:        tlsConf,
		DisableKeepAlives:      true,
		DisableCompression:     true,
		MaxResponseHeaderBytes: 64 << 10,
	}
	h.client = &http.Client{Transport: tr, CheckRedirect: h.checkRedirect}
	return h, nil
}

// LoadCAFile reads the PEM bundle at path as NewHTTP does for CAFile.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading CA bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: no PEM certificate found", path)
	}
	return pool, nil
}

// hostOnly strips the port and IPv6 brackets from host[:port].
func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
}

// String returns the URL (without any password), for messages.
func (h *HTTP) String() string { return h.url.Redacted() }

func (h *HTTP) checkRedirect(req *http.Request, via []*http.Request) error {
	if !h.follow {
		return http.ErrUseLastResponse
	}
	if len(via) >= maxRedirects {
		return fmt.Errorf("stopped after %d redirects", maxRedirects)
	}
	prev := via[len(via)-1]
	if prev.URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing redirect from https to %s", req.URL.Scheme)
	}
	if h.host != "" {
		// The TLS server name is fixed to the Host override, so stay on the
		// dialled host, where the override still applies.
		if req.URL.Host != h.url.Host {
			return fmt.Errorf("refusing redirect to another host %q with a Host override", req.URL.Host)
		}
		req.Host = h.host
	}
	h.setUserAgent(req)
	return nil
}

func (h *HTTP) setUserAgent(req *http.Request) {
	if h.userAgent == "" {
		req.Header["User-Agent"] = nil // present but empty: net/http sends none
		return
	}
	req.Header.Set("User-Agent", h.userAgent)
}

// Probe sends one GET and judges the answer. The attempt is bounded by the
// probe's Timeout and by ctx. It returns an error only if the request cannot be
// built.
func (h *HTTP) Probe(ctx context.Context) (Result, error) {
	start := time.Now()
	budget := h.timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < budget {
		budget = max(time.Until(dl), 0)
	}
	actx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()

	ph := &phase{name: "connecting"}
	actx = httptrace.WithClientTrace(actx, ph.trace())
	req, err := http.NewRequestWithContext(actx, http.MethodGet, h.url.String(), nil)
	if err != nil {
		return Result{}, fmt.Errorf("building request for %s: %w", h, err)
	}
	if h.host != "" {
		req.Host = h.host
	}
	h.setUserAgent(req)

	fail := func(code int, err error) (Result, error) {
		return Result{Status: Failure, Code: code, Reason: h.reason(ctx, actx, err, budget, ph.get()), Latency: time.Since(start),
			Refused: errors.Is(err, syscall.ECONNREFUSED)}, nil
	}
	resp, err := h.client.Do(req)
	if err != nil {
		code := 0
		if resp != nil { // a redirect policy error comes with the last response
			code = resp.StatusCode
		}
		return fail(code, err)
	}
	defer resp.Body.Close()
	ph.set("reading body")
	body, err := io.ReadAll(io.LimitReader(resp.Body, h.maxBody))
	if err != nil {
		return fail(resp.StatusCode, err)
	}
	res := Result{Status: Failure, Code: resp.StatusCode, Latency: time.Since(start)}
	switch {
	case !h.accepts(resp.StatusCode):
		res.Reason = statusReason(resp)
	case len(h.expectBody) > 0 && !bytes.Contains(body, h.expectBody):
		res.Reason = fmt.Sprintf("body lacks %q", h.expectBody)
		if int64(len(body)) == h.maxBody {
			res.Reason += fmt.Sprintf(" in its first %d bytes", h.maxBody)
		}
	default:
		res.Status = Success
	}
	return res, nil
}

func (h *HTTP) accepts(code int) bool {
	for _, r := range h.expect {
		if code >= r.Min && code <= r.Max {
			return true
		}
	}
	return false
}

func statusReason(resp *http.Response) string {
	s := fmt.Sprintf("status %d", resp.StatusCode)
	loc := resp.Header.Get("Location")
	if resp.StatusCode < 300 || resp.StatusCode > 399 || loc == "" {
		return s
	}
	// The query may carry a token: name only where it points.
	if u, err := url.Parse(loc); err == nil {
		u.RawQuery, u.Fragment, u.ForceQuery = "", "", false
		loc = u.Redacted()
	} else {
		loc = "(unparsable)"
	}
	return truncate(fmt.Sprintf("%s (redirects not followed; Location %s)", s, loc))
}

// reason turns a transport error into a short, body-free Reason.
func (h *HTTP) reason(parent, attempt context.Context, err error, budget time.Duration, phase string) string {
	switch {
	case parent.Err() != nil && !errors.Is(parent.Err(), context.DeadlineExceeded):
		return fmt.Sprintf("%v (%s)", parent.Err(), phase)
	case errors.Is(attempt.Err(), context.DeadlineExceeded) || isTimeout(err):
		return fmt.Sprintf("timeout after %s (%s)", roundDuration(budget), phase)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && cve.Err != nil {
		err = cve.Err // "x509: certificate signed by unknown authority"
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Sprintf("connection closed by server (%s): %v", phase, err)
	}
	msg := err.Error()
	// net/http quotes the bytes it could not parse, which may be body data.
	if i := strings.Index(msg, "malformed HTTP"); i >= 0 {
		if j := strings.IndexByte(msg[i:], '"'); j > 0 {
			msg = strings.TrimSpace(msg[:i+j])
		}
	}
	return truncate(msg)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

func truncate(s string) string {
	if len(s) <= maxReasonLength {
		return s
	}
	return s[:maxReasonLength] + "..."
}

// roundDuration keeps messages readable: ms below 1s, 10ms below 1m,
// whole seconds above.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(10 * time.Millisecond)
	default:
		return d.Round(time.Second)
	}
}

// phase records how far an attempt got, to say where a timeout struck.
type phase struct {
	mu   sync.Mutex
	name string
}

func (p *phase) set(name string) {
	p.mu.Lock()
	p.name = name
	p.mu.Unlock()
}

func (p *phase) get() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.name
}

func (p *phase) trace() *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		ConnectStart:         func(string, string) { p.set("connecting") },
		TLSHandshakeStart:    func() { p.set("TLS handshake") },
		WroteRequest:         func(httptrace.WroteRequestInfo) { p.set("waiting for response") },
		GotFirstResponseByte: func() { p.set("reading response headers") },
	}
}
