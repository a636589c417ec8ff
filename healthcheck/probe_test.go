package healthcheck

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// newProbe builds an HTTP probe or fails the test.
func newProbe(t *testing.T, o HTTPOptions) *HTTP {
	t.Helper()
	h, err := NewHTTP(o)
	if err != nil {
		t.Fatalf("NewHTTP(%+v): %v", o, err)
	}
	return h
}

func probeOnce(t *testing.T, p Prober) Result {
	t.Helper()
	r, err := p.Probe(t.Context())
	if err != nil {
		t.Fatalf("Probe: unexpected error: %v", err)
	}
	return r
}

// closedAddr returns a loopback address nobody listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// writePEM writes cert as PEM into a temp file and returns its path.
func writePEM(t *testing.T, cert *x509.Certificate) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ca.pem")
	data := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSigned makes a self-signed certificate valid only for dnsName.
func selfSigned(t *testing.T, dnsName string) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: dnsName},
		DNSNames:              []string{dnsName},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, leaf
}

// discardLog silences the TLS handshake errors httptest servers log when a
// probe rejects their certificate on purpose.
func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

func TestStatusString(t *testing.T) {
	for s, want := range map[Status]string{Success: "success", Failure: "failure", Status(7): "Status(7)"} {
		if got := s.String(); got != want {
			t.Errorf("Status(%d).String() = %q, want %q", int(s), got, want)
		}
	}
}

func TestNewHTTPRejectsBadOptionsNamingThem(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    HTTPOptions
		wantErr []string // substrings; nil means valid
	}{
		{name: "defaults are valid", opts: HTTPOptions{URL: "http://localhost:443/health-check"}},
		{name: "https with everything", opts: HTTPOptions{URL: "https://127.0.0.1:8443/h", Host: "app.example:443", ExpectStatus: []StatusRange{{200, 200}, {301, 302}}, MaxBody: 10, ExpectBody: "ok"}},
		{name: "empty URL", opts: HTTPOptions{}, wantErr: []string{"url: empty"}},
		{name: "relative URL", opts: HTTPOptions{URL: "/health-check"}, wantErr: []string{"url", "scheme"}},
		{name: "ftp scheme", opts: HTTPOptions{URL: "ftp://localhost/"}, wantErr: []string{"url", "scheme must be http or https"}},
		{name: "no host", opts: HTTPOptions{URL: "http:///x"}, wantErr: []string{"url", "no host"}},
		{name: "unparsable URL", opts: HTTPOptions{URL: "http://[::1"}, wantErr: []string{"url"}},
		{name: "negative timeout", opts: HTTPOptions{URL: "http://l/", Timeout: -time.Second}, wantErr: []string{"timeout: -1s"}},
		{name: "negative max body", opts: HTTPOptions{URL: "http://l/", MaxBody: -1}, wantErr: []string{"max_body"}},
		{name: "expected body longer than max body", opts: HTTPOptions{URL: "http://l/", MaxBody: 2, ExpectBody: "abc"}, wantErr: []string{"expect_body"}},
		{name: "status below 100", opts: HTTPOptions{URL: "http://l/", ExpectStatus: []StatusRange{{99, 200}}}, wantErr: []string{"expect_status[0]: 99-200"}},
		{name: "status above 599", opts: HTTPOptions{URL: "http://l/", ExpectStatus: []StatusRange{{200, 299}, {500, 600}}}, wantErr: []string{"expect_status[1]"}},
		{name: "status range reversed", opts: HTTPOptions{URL: "http://l/", ExpectStatus: []StatusRange{{299, 200}}}, wantErr: []string{"expect_status[0]: 299-200"}},
		{name: "host with a path", opts: HTTPOptions{URL: "http://l/", Host: "app.example/x"}, wantErr: []string{"host"}},
		{name: "missing CA file", opts: HTTPOptions{URL: "https://l/", CAFile: "/nonexistent/ca.pem"}, wantErr: []string{"ca_file", "/nonexistent/ca.pem"}},
		{name: "CA file without PEM", opts: HTTPOptions{URL: "https://l/", CAFile: notPEM}, wantErr: []string{"ca_file", "no PEM certificate"}},
		{name: "every problem reported", opts: HTTPOptions{URL: "gopher://x/", Timeout: -1, MaxBody: -1}, wantErr: []string{"url", "timeout", "max_body"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := NewHTTP(tt.opts)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("NewHTTP: unexpected error: %v", err)
				}
				if h.String() != tt.opts.URL {
					t.Errorf("String() = %q, want %q", h.String(), tt.opts.URL)
				}
				return
			}
			if err == nil {
				t.Fatal("NewHTTP: no error")
			}
			for _, want := range tt.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q lacks %q", err, want)
				}
			}
		})
	}
}

func TestHTTPStringHidesPassword(t *testing.T) {
	h := newProbe(t, HTTPOptions{URL: "http://user:s3cret@localhost/h"})
	if strings.Contains(h.String(), "s3cret") {
		t.Errorf("String() = %q shows the password", h.String())
	}
}

func TestHTTPProbeJudgesResponses(t *testing.T) {
	tests := []struct {
		name       string
		handler    http.HandlerFunc
		opts       HTTPOptions // URL is filled in
		wantStatus Status
		wantCode   int
		wantReason string // substring; "" means empty
		notReason  string // must not appear in the reason
	}{
		{
			name:       "200 is healthy",
			handler:    func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") },
			wantStatus: Success, wantCode: 200,
		},
		{
			name:       "204 is healthy",
			handler:    func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) },
			wantStatus: Success, wantCode: 204,
		},
		{
			name:       "500 is a failure naming the status, not the body",
			handler:    func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "db password=hunter2", 500) },
			wantStatus: Failure, wantCode: 500, wantReason: "status 500", notReason: "hunter2",
		},
		{
			name: "302 is a failure naming the location without its query",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/login?token=SECRET", http.StatusFound)
			},
			wantStatus: Failure, wantCode: 302,
			wantReason: "status 302 (redirects not followed; Location /login)", notReason: "SECRET",
		},
		{
			name: "302 accepted when the expected statuses list it",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "/login", http.StatusFound)
			},
			opts:       HTTPOptions{ExpectStatus: []StatusRange{{200, 299}, {302, 302}}},
			wantStatus: Success, wantCode: 302,
		},
		{
			name: "redirect followed when asked",
			handler: func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/health-check" {
					http.Redirect(w, r, "/health-check/", http.StatusMovedPermanently)
					return
				}
				fmt.Fprint(w, "ok")
			},
			opts:       HTTPOptions{FollowRedirects: true, ExpectBody: "ok"},
			wantStatus: Success, wantCode: 200,
		},
		{
			name: "redirect loop stops after 5 hops",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, r.URL.Path+"x", http.StatusFound)
			},
			opts:       HTTPOptions{FollowRedirects: true},
			wantStatus: Failure, wantCode: 302, wantReason: "stopped after 5 redirects",
		},
		{
			name: "redirect to another host refused under a Host override",
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, "http://192.0.2.1/", http.StatusFound)
			},
			opts:       HTTPOptions{FollowRedirects: true, Host: "app.example"},
			wantStatus: Failure, wantCode: 302, wantReason: "refusing redirect to another host",
		},
		{
			name:       "expected status range honoured",
			handler:    func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) },
			opts:       HTTPOptions{ExpectStatus: []StatusRange{{503, 503}}},
			wantStatus: Success, wantCode: 503,
		},
		{
			name:       "2xx outside the expected range fails",
			handler:    func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, "ok") },
			opts:       HTTPOptions{ExpectStatus: []StatusRange{{204, 204}}},
			wantStatus: Failure, wantCode: 200, wantReason: "status 200",
		},
		{
			name:       "body with the expected substring",
			handler:    func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, `{"status":"ok"}`) },
			opts:       HTTPOptions{ExpectBody: `"ok"`},
			wantStatus: Success, wantCode: 200,
		},
		{
			name:       "body without the expected substring fails without quoting the body",
			handler:    func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, `{"status":"degraded","token":"SECRET"}`) },
			opts:       HTTPOptions{ExpectBody: `"ok"`},
			wantStatus: Failure, wantCode: 200, wantReason: `body lacks "\"ok\""`, notReason: "SECRET",
		},
		{
			name: "substring beyond the body cap is not seen",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprint(w, strings.Repeat("x", 2048)+"ok")
			},
			opts:       HTTPOptions{ExpectBody: "ok", MaxBody: 1024},
			wantStatus: Failure, wantCode: 200, wantReason: `body lacks "ok" in its first 1024 bytes`,
		},
		{
			name: "gzip is not requested, so the substring is checked on the bytes sent",
			handler: func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "[%s]ok", r.Header.Get("Accept-Encoding"))
			},
			opts:       HTTPOptions{ExpectBody: "[]ok"},
			wantStatus: Success, wantCode: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			t.Cleanup(srv.Close)
			tt.opts.URL = srv.URL + "/health-check"
			r := probeOnce(t, newProbe(t, tt.opts))
			if r.Status != tt.wantStatus || r.Code != tt.wantCode || r.Refused {
				t.Errorf("got %+v, want %v code %d, not refused", r, tt.wantStatus, tt.wantCode)
			}
			if tt.wantReason == "" && r.Reason != "" {
				t.Errorf("Reason = %q, want empty", r.Reason)
			}
			if !strings.Contains(r.Reason, tt.wantReason) {
				t.Errorf("Reason = %q, want it to contain %q", r.Reason, tt.wantReason)
			}
			if tt.notReason != "" && strings.Contains(r.Reason, tt.notReason) {
				t.Errorf("Reason = %q leaks %q", r.Reason, tt.notReason)
			}
			if r.Latency <= 0 {
				t.Errorf("Latency = %v, want > 0", r.Latency)
			}
		})
	}
}

func TestHTTPProbeReadsOnlyTheBodyCap(t *testing.T) {
	const huge = 100 << 20
	var written atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(huge))
		chunk := []byte("ok" + strings.Repeat("x", 32<<10-2))
		for written.Load() < huge {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	h := newProbe(t, HTTPOptions{URL: srv.URL, ExpectBody: "ok", Timeout: 5 * time.Second})
	r := probeOnce(t, h)
	if r.Status != Success {
		t.Fatalf("got %v (%q), want success", r.Status, r.Reason)
	}
	srv.Close() // waits for the handler, which stops when the probe hangs up
	if n := written.Load(); n >= huge {
		t.Errorf("server wrote the whole %d-byte body; the probe should hang up after %d", n, DefaultMaxBody)
	}
}

func TestHTTPProbeSendsUserAgentOnlyWhenSet(t *testing.T) {
	tests := []struct {
		name      string
		userAgent string
		follow    bool
		want      []string // the User-Agent values received, per request
	}{
		{name: "empty sends no header at all", userAgent: "", want: nil},
		{name: "empty sends no header after a redirect either", userAgent: "", follow: true, want: nil},
		{name: "set is sent as is", userAgent: "patchagent/1.0", want: []string{"patchagent/1.0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var mu sync.Mutex
			var seen [][]string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				seen = append(seen, r.Header.Values("User-Agent"))
				mu.Unlock()
				if r.URL.Path == "/a" {
					http.Redirect(w, r, "/b", http.StatusFound)
				}
			}))
			t.Cleanup(srv.Close)
			r := probeOnce(t, newProbe(t, HTTPOptions{URL: srv.URL + "/a", UserAgent: tt.userAgent, FollowRedirects: tt.follow}))
			if tt.follow && r.Status != Success {
				t.Fatalf("got %v (%q), want success", r.Status, r.Reason)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := map[bool]int{false: 1, true: 2}[tt.follow]; len(seen) != want {
				t.Fatalf("the server saw %d requests, want %d", len(seen), want)
			}
			for i, got := range seen {
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("request %d: User-Agent %q, want %q", i, got, tt.want)
				}
			}
		})
	}
}

func TestHTTPProbeSendsHostOverride(t *testing.T) {
	var gotHost atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		gotHost.Store(r.Host)
	}))
	t.Cleanup(srv.Close)
	r := probeOnce(t, newProbe(t, HTTPOptions{URL: srv.URL, Host: "app.example:443"}))
	if r.Status != Success {
		t.Fatalf("got %v (%q), want success", r.Status, r.Reason)
	}
	if got := gotHost.Load(); got != "app.example:443" {
		t.Errorf("server saw Host %q, want app.example:443", got)
	}
}

func TestHTTPProbeIgnoresProxyEnvironment(t *testing.T) {
	var proxied atomic.Bool
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		proxied.Store(true)
		w.WriteHeader(http.StatusBadGateway)
	}))
	t.Cleanup(proxy.Close)
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"} {
		t.Setenv(k, proxy.URL)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)

	h := newProbe(t, HTTPOptions{URL: srv.URL})
	if r := probeOnce(t, h); r.Status != Success || proxied.Load() {
		t.Errorf("got %v (%q), proxied=%v; want a direct success", r.Status, r.Reason, proxied.Load())
	}
	// net/http never proxies loopback, so also check the transport itself:
	// with a non-nil Proxy a public host would go through the environment.
	if tr := h.client.Transport.(*http.Transport); tr.Proxy != nil || !tr.DisableKeepAlives {
		t.Errorf("transport Proxy set=%v DisableKeepAlives=%v; want no proxy and no keep-alive", tr.Proxy != nil, tr.DisableKeepAlives)
	}
}

func TestHTTPProbeOpensAFreshConnectionEachAttempt(t *testing.T) {
	var mu sync.Mutex
	remotes := map[string]bool{}
	var closed atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr] = true
		mu.Unlock()
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closed.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	h := newProbe(t, HTTPOptions{URL: srv.URL})
	const attempts = 3
	for range attempts {
		if r := probeOnce(t, h); r.Status != Success {
			t.Fatalf("got %v (%q), want success", r.Status, r.Reason)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(remotes) != attempts {
		t.Errorf("server saw %d distinct client addresses over %d attempts, want %d: %v", len(remotes), attempts, attempts, remotes)
	}
	deadline := time.Now().Add(time.Second)
	for closed.Load() < attempts && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := closed.Load(); n < attempts {
		t.Errorf("server saw %d connections closed, want %d", n, attempts)
	}
}

// hang is a handler that never answers: it returns when the client goes
// away or release is closed.
func hang(release <-chan struct{}) http.HandlerFunc {
	return func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}
}

func TestHTTPProbeTimesOutAtItsTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tests := []struct {
		name       string
		start      func(t *testing.T, release <-chan struct{}) string // returns the URL
		wantReason string
	}{
		{
			name: "handler never answers",
			start: func(t *testing.T, release <-chan struct{}) string {
				srv := httptest.NewServer(hang(release))
				t.Cleanup(srv.Close)
				return srv.URL
			},
			wantReason: "timeout after 300ms (waiting for response)",
		},
		{
			name: "body never ends",
			start: func(t *testing.T, release <-chan struct{}) string {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("Content-Length", "100")
					fmt.Fprint(w, "o")
					w.(http.Flusher).Flush()
					hang(release)(w, r)
				}))
				t.Cleanup(srv.Close)
				return srv.URL
			},
			wantReason: "timeout after 300ms (reading body)",
		},
		{
			name: "listener accepts but never speaks TLS",
			start: func(t *testing.T, release <-chan struct{}) string {
				l, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				var wg sync.WaitGroup
				t.Cleanup(func() { l.Close(); wg.Wait() })
				wg.Go(func() {
					for {
						c, err := l.Accept()
						if err != nil {
							return
						}
						wg.Go(func() { <-release; c.Close() })
					}
				})
				return "https://" + l.Addr().String() + "/health-check"
			},
			wantReason: "timeout after 300ms (TLS handshake)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			release := make(chan struct{})
			url := tt.start(t, release)
			t.Cleanup(func() { close(release) }) // runs before the server's cleanup
			r := probeOnce(t, newProbe(t, HTTPOptions{URL: url, Timeout: timeout, Insecure: true}))
			if r.Status != Failure || !strings.Contains(r.Reason, tt.wantReason) || r.Refused {
				t.Errorf("got %+v, want failure with %q, not refused", r, tt.wantReason)
			}
			if r.Latency < timeout || r.Latency > timeout+200*time.Millisecond {
				t.Errorf("Latency = %v, want within [%v, %v]", r.Latency, timeout, timeout+200*time.Millisecond)
			}
		})
	}
}

func TestHTTPProbeTLSVerification(t *testing.T) {
	appCert, appLeaf := selfSigned(t, "app.example")
	tests := []struct {
		name       string
		appCert    bool // serve the app.example certificate instead of httptest's
		opts       HTTPOptions
		useCA      bool // CAFile = the served certificate
		wantReason string
		wantHost   string // Host seen by the handler on success
	}{
		{name: "insecure skips verification", opts: HTTPOptions{Insecure: true}},
		{name: "system roots reject a self-signed certificate", wantReason: "x509: certificate signed by unknown authority"},
		{name: "pinned CA verifies", useCA: true},
		{name: "cert for the public name verifies with Host override and CA", appCert: true, useCA: true, opts: HTTPOptions{Host: "app.example"}, wantHost: "app.example"},
		{name: "Host override with a port still verifies the name", appCert: true, useCA: true, opts: HTTPOptions{Host: "app.example:443"}, wantHost: "app.example:443"},
		{name: "cert for the public name fails without Host override", appCert: true, useCA: true, wantReason: "x509: cannot validate certificate for 127.0.0.1 because it doesn't contain any IP SANs"},
		{name: "cert for the public name fails without CA", appCert: true, opts: HTTPOptions{Host: "app.example"}, wantReason: "x509: certificate signed by unknown authority"},
		{name: "Host override for another name fails", appCert: true, useCA: true, opts: HTTPOptions{Host: "other.example"}, wantReason: "x509: certificate is valid for app.example, not other.example"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotHost atomic.Value
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
				gotHost.Store(r.Host)
			}))
			srv.Config.ErrorLog = discardLog()
			if tt.appCert {
				srv.TLS = &tls.Config{Certificates: []tls.Certificate{appCert}}
			}
			srv.StartTLS()
			t.Cleanup(srv.Close)
			if tt.useCA {
				ca := appLeaf
				if !tt.appCert {
					ca = srv.Certificate()
				}
				tt.opts.CAFile = writePEM(t, ca)
			}
			tt.opts.URL = srv.URL + "/health-check"
			r := probeOnce(t, newProbe(t, tt.opts))
			if tt.wantReason != "" {
				if r.Status != Failure || r.Reason != tt.wantReason {
					t.Errorf("got %v (%q), want failure %q", r.Status, r.Reason, tt.wantReason)
				}
				return
			}
			if r.Status != Success {
				t.Fatalf("got %v (%q), want success", r.Status, r.Reason)
			}
			if tt.wantHost != "" && gotHost.Load() != tt.wantHost {
				t.Errorf("server saw Host %q, want %q", gotHost.Load(), tt.wantHost)
			}
		})
	}
}

func TestHTTPProbeConnectionRefusedFailsFast(t *testing.T) {
	addr := closedAddr(t)
	r := probeOnce(t, newProbe(t, HTTPOptions{URL: "http://" + addr + "/health-check"}))
	want := "dial tcp " + addr + ": connect: connection refused"
	if r.Status != Failure || r.Code != 0 || r.Reason != want || !r.Refused {
		t.Errorf("got %+v, want a refused failure %q", r, want)
	}
	if r.Latency > time.Second {
		t.Errorf("Latency = %v, want fast", r.Latency)
	}
}

func TestHTTPProbeMalformedResponseDoesNotLeakIt(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil {
					return
				}
				req.Body.Close()
				_, _ = io.WriteString(c, "password=SECRET\r\n\r\n")
			})
		}
	})
	r := probeOnce(t, newProbe(t, HTTPOptions{URL: "http://" + l.Addr().String() + "/"}))
	t.Logf("reason: %q", r.Reason)
	if r.Status != Failure || !strings.Contains(r.Reason, "malformed HTTP") || strings.Contains(r.Reason, "SECRET") {
		t.Errorf("got %v (%q), want a failure naming a malformed response without its bytes", r.Status, r.Reason)
	}
}

func TestHTTPProbeCancelledContext(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	r, err := newProbe(t, HTTPOptions{URL: srv.URL}).Probe(ctx)
	if err != nil || r.Status != Failure || !strings.Contains(r.Reason, "context canceled") {
		t.Errorf("got %v (%q), err %v; want failure naming the cancellation", r.Status, r.Reason, err)
	}
}
