package sandbox

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"time"
)

// ProbeOptions configure Probe.
type ProbeOptions struct {
	// Interval between the starts of two attempts of one family (default
	// 20ms). An attempt that takes longer delays the next one.
	Interval time.Duration
	// V6 also probes over IPv6 (IPv4 is always probed).
	V6 bool
	// Timeout bounds one attempt, connect and answer (default 1s).
	Timeout time.Duration
	// Path is the request path (default "/health-check").
	Path string
	// TLS, if set, makes the attempts HTTPS with this client config (e.g.
	// trusting the cert of WriteTLSCert).
	TLS *tls.Config
}

// Attempt is one probe: a new TCP connection from the client netns and, if
// it connects, one GET. Exactly one of Refused, Status != 0, Err != "" holds.
type Attempt struct {
	At        time.Time // when the connection attempt started
	V6        bool
	Refused   bool   // the connection was refused (RST to the SYN)
	Connected bool   // the TCP handshake completed
	Status    int    // the HTTP status of the answer; 0 if none
	Err       string // any other failure: timeout, reset, bad TLS, ...
}

// OK reports whether the attempt was answered 200.
func (a Attempt) OK() bool { return a.Status == http.StatusOK }

// Prober watches the app from outside: see Probe.
type Prober struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	attempts []Attempt
}

// Probe starts probing the app from the client netns, as a new outside
// client would: every Interval a new TCP connection plus GET Path (no
// keep-alive, redirects not followed), over IPv4 and, if o.V6, IPv6, until
// ctx ends or Stop is called. Each family runs its own sequential loop.
func (n *Node) Probe(ctx context.Context, o ProbeOptions) *Prober {
	if o.Interval <= 0 {
		o.Interval = 20 * time.Millisecond
	}
	if o.Timeout <= 0 {
		o.Timeout = time.Second
	}
	if o.Path == "" {
		o.Path = "/health-check"
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &Prober{cancel: cancel}
	fams := []bool{false}
	if o.V6 {
		fams = append(fams, true)
	}
	for _, v6 := range fams {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.loop(ctx, n, o, v6)
		}()
	}
	return p
}

func (p *Prober) loop(ctx context.Context, n *Node, o ProbeOptions, v6 bool) {
	url := n.URL(o.Path, v6)
	if o.TLS != nil {
		url = n.HTTPSURL(o.Path, v6)
	}
	t := time.NewTicker(o.Interval)
	defer t.Stop()
	for {
		a := n.attempt(ctx, url, v6, o)
		if ctx.Err() != nil {
			return // cut short by Stop: not a result
		}
		p.mu.Lock()
		p.attempts = append(p.attempts, a)
		p.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// attempt makes one probe with a transport of its own, so it always opens
// a new connection and knows whether it connected.
func (n *Node) attempt(ctx context.Context, url string, v6 bool, o ProbeOptions) Attempt {
	a := Attempt{At: time.Now(), V6: v6}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	tr := n.transport(v6, false)
	defer tr.CloseIdleConnections()
	tr.TLSClientConfig = o.TLS
	dial := tr.DialContext
	// The transport dials on a goroutine of its own, which may outlive Do.
	var mu sync.Mutex
	connected := false
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err == nil {
			mu.Lock()
			connected = true
			mu.Unlock()
		}
		return c, err
	}
	c := &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err == nil {
		var resp *http.Response
		if resp, err = c.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			a.Status = resp.StatusCode
		}
	}
	mu.Lock()
	a.Connected = connected
	mu.Unlock()
	switch {
	case err == nil:
	case errors.Is(err, syscall.ECONNREFUSED):
		a.Refused = true
	default:
		a.Err = err.Error()
	}
	return a
}

// Attempts returns the attempts recorded so far, ordered by At.
func (p *Prober) Attempts() []Attempt {
	p.mu.Lock()
	out := slices.Clone(p.attempts)
	p.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Attempt) int { return a.At.Compare(b.At) })
	return out
}

// Stop ends the probing, waits for the loops (at most one attempt's
// Timeout) and returns every completed attempt, ordered by At. Attempts cut
// short by Stop are not recorded. Stop may be called more than once.
func (p *Prober) Stop() []Attempt {
	p.cancel()
	p.wg.Wait()
	return p.Attempts()
}
