package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// TCP checks that an address accepts a TCP connection, which it then closes.
// Build it with NewTCP.
type TCP struct {
	Addr    string        // host:port
	Timeout time.Duration // per attempt (default 10s)
}

// NewTCP validates addr (host:port) and timeout (0 means 10s).
func NewTCP(addr string, timeout time.Duration) (*TCP, error) {
	var errs []error
	if _, port, err := net.SplitHostPort(addr); err != nil {
		errs = append(errs, fmt.Errorf("addr: %w", err))
	} else if port == "" {
		errs = append(errs, fmt.Errorf("addr: %q has no port", addr))
	}
	if timeout == 0 {
		timeout = DefaultTimeout
	} else if timeout < 0 {
		errs = append(errs, fmt.Errorf("timeout: %s must be positive", timeout))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("tcp health-check options: %w", err)
	}
	return &TCP{Addr: addr, Timeout: timeout}, nil
}

// String names the probe for messages: "tcp 127.0.0.1:443".
func (t *TCP) String() string { return "tcp " + t.Addr }

// Probe dials Addr once, bounded by Timeout and ctx.
func (t *TCP) Probe(ctx context.Context) (Result, error) {
	timeout := t.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	start := time.Now()
	budget := timeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < budget {
		budget = max(time.Until(dl), 0)
	}
	actx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(actx, "tcp", t.Addr)
	if err != nil {
		res := Result{Status: Failure, Latency: time.Since(start), Reason: truncate(err.Error()), Refused: errors.Is(err, syscall.ECONNREFUSED)}
		switch {
		case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
			res.Reason = ctx.Err().Error()
		case errors.Is(actx.Err(), context.DeadlineExceeded) || isTimeout(err):
			res.Reason = fmt.Sprintf("timeout after %s (connecting)", roundDuration(budget))
		}
		return res, nil
	}
	_ = conn.Close() // nothing was sent; the connection only proved the port open
	return Result{Status: Success, Latency: time.Since(start)}, nil
}
