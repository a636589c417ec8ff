package agent

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// startMetricsServer serves NewMetricsServer with mt on 127.0.0.1:0 and
// returns its address.
func startMetricsServer(t *testing.T, mt MetricsTimeouts) string {
	t.Helper()
	reg, _ := NewTextfileRegistry("test")
	hs := NewMetricsServer(reg, mt)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = hs.Serve(ln) }()
	t.Cleanup(func() { _ = hs.Close() })
	return ln.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitClosed reads r (from c) until the server closes the connection, and
// fails the test if it is still open after within. It returns what was
// read.
func waitClosed(t *testing.T, c net.Conn, r io.Reader, within time.Duration) string {
	t.Helper()
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(within)); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s", within)
	}
	// io.ReadAll's nil is EOF; a reset is a close too.
	t.Logf("closed after %s (%v)", time.Since(start).Round(time.Millisecond), err)
	return string(b)
}

// TestMetricsServerTimeouts checks against real TCP connections that a
// client can hold the metrics server's connections no longer than its
// timeouts. Each case makes one timeout short and the others a minute: the
// client's 5s wait fails if that timeout is not applied.
func TestMetricsServerTimeouts(t *testing.T) {
	const short, long, wait = 200 * time.Millisecond, time.Minute, 5 * time.Second

	t.Run("stalled header line is dropped after ReadHeader", func(t *testing.T) {
		addr := startMetricsServer(t, MetricsTimeouts{ReadHeader: short, Read: long, Write: long, Idle: long})
		c := dial(t, addr)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Ag"); err != nil {
			t.Fatal(err)
		}
		// net/http may answer 400 before it hangs up: only the close matters.
		if got := waitClosed(t, c, c, wait); strings.Contains(got, " 200 ") {
			t.Errorf("the server answered a half-sent header with %q", got)
		}
	})

	t.Run("idle keep-alive is closed after Idle", func(t *testing.T) {
		addr := startMetricsServer(t, MetricsTimeouts{ReadHeader: long, Read: long, Write: long, Idle: short})
		c := dial(t, addr)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "patchagent_build_info") || resp.Close {
			t.Fatalf("response %s (close %v), body %.80q; want a 200 with the metrics, kept alive", resp.Status, resp.Close, body)
		}
		if got := waitClosed(t, c, br, wait); got != "" {
			t.Errorf("the server wrote %q on an idle connection", got)
		}
	})

	t.Run("oversized headers are refused", func(t *testing.T) {
		addr := startMetricsServer(t, MetricsTimeouts{ReadHeader: long, Read: long, Write: long, Idle: long})
		c := dial(t, addr)
		// net/http allows MaxHeaderBytes plus 4096 bytes of slack.
		big := strings.Repeat("a", metricsMaxHeaderBytes+8192)
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "+big+"\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		if got := waitClosed(t, c, c, wait); !strings.HasPrefix(got, "HTTP/1.1 431 ") {
			t.Errorf("response %.40q, want 431 Request Header Fields Too Large", got)
		}
	})
}

// TestMetricsServerDefaults checks the limits the daemon serves with.
func TestMetricsServerDefaults(t *testing.T) {
	reg, _ := NewTextfileRegistry("test")
	hs := NewMetricsServer(reg, MetricsTimeouts{})
	got := MetricsTimeouts{ReadHeader: hs.ReadHeaderTimeout, Read: hs.ReadTimeout, Write: hs.WriteTimeout, Idle: hs.IdleTimeout}
	want := MetricsTimeouts{ReadHeader: 5 * time.Second, Read: 10 * time.Second, Write: 15 * time.Second, Idle: 90 * time.Second}
	if got != want {
		t.Errorf("timeouts = %+v, want %+v", got, want)
	}
	// Prometheus gives up on a scrape after its 10s default scrape_timeout:
	// we must not give up first.
	if hs.WriteTimeout <= 10*time.Second {
		t.Errorf("WriteTimeout %s would cut scrapes Prometheus still waits for", hs.WriteTimeout)
	}
	if hs.MaxHeaderBytes != metricsMaxHeaderBytes {
		t.Errorf("MaxHeaderBytes = %d, want %d", hs.MaxHeaderBytes, metricsMaxHeaderBytes)
	}
}
