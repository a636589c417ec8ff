package elbsim

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
)

// Stats is what a target group's routers did, for tests to read.
type Stats struct {
	// Routed counts the requests sent to each target, whatever it answered;
	// counts outlive the registration.
	Routed map[Target]int
	// ELB5xx counts the 5xx answers the routers made themselves: 503 with no
	// target to send to, 502 when the target could not be reached or its
	// draining ended mid-request, 504 when it did not answer in time.
	ELB5xx int
	// Target5xx counts the 5xx answers of targets, passed on to the client.
	Target5xx int
}

// Stats returns a copy of the counters of the routers of group arn.
func (s *Server) Stats(arn string) (Stats, error) {
	g := s.groups[arn]
	if g == nil {
		return Stats{}, fmt.Errorf("elbsim: no target group %q", arn)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Routed: maps.Clone(g.routed), ELB5xx: g.elb5xx, Target5xx: g.target5xx}, nil
}

// Router returns the listener of target group arn, as an ALB node that sees
// every zone: each request goes to the next healthy target in round-robin
// order. Draining, initial and unhealthy targets get none, unless no target
// is healthy: then it fails open to every registered target not draining, as
// ALB does. With no such target it answers 503. The client's Host header is
// kept, and X-Forwarded-For/-Host/-Proto are set.
func (s *Server) Router(arn string) (http.Handler, error) {
	return s.RouterInZone(arn, "")
}

// RouterInZone is Router for the ALB node in Availability Zone zone: when the
// group has cross-zone load balancing off, it considers only targets in that
// zone. An empty zone means every zone.
func (s *Server) RouterInZone(arn, zone string) (http.Handler, error) {
	g := s.groups[arn]
	if g == nil {
		return nil, fmt.Errorf("elbsim: no target group %q", arn)
	}
	return &router{s: s, g: g, zone: zone}, nil
}

type router struct {
	s    *Server
	g    *group
	zone string
}

// route is where one request goes; the proxy's hooks find it in the
// request's context.
type route struct {
	g      *group
	addr   string
	client context.Context // the client's own request context
}

type routeKey struct{}

func (rt *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s, g := rt.s, rt.g
	s.mu.Lock()
	var t *target
	if !s.closed {
		t = g.pick(rt.zone)
	}
	if t == nil {
		g.elb5xx++
		s.mu.Unlock()
		http.Error(w, "503 Service Temporarily Unavailable", http.StatusServiceUnavailable)
		return
	}
	g.routed[t.key]++
	key, life := t.key, t.life
	s.mu.Unlock()

	addr, err := s.resolve(key.ID, key.Port)
	if err != nil {
		s.count(func() { g.elb5xx++ })
		http.Error(w, "502 Bad Gateway", http.StatusBadGateway)
		return
	}
	// The request ends with the client's or when the target's draining does.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(life, cancel)
	defer stop()
	ctx = context.WithValue(ctx, routeKey{}, &route{g: g, addr: addr, client: r.Context()})
	s.proxy.ServeHTTP(w, r.WithContext(ctx))
}

// pick chooses the target for the next request, or nil. Call with s.mu held.
func (g *group) pick(zone string) *target {
	var healthy, open []*target
	for _, t := range g.sorted() {
		if t.state == stateDraining || (zone != "" && !g.cfg.CrossZone && t.zone != zone) {
			continue
		}
		open = append(open, t)
		if t.state == stateHealthy {
			healthy = append(healthy, t)
		}
	}
	c := healthy
	if len(c) == 0 {
		c = open // fail open
	}
	if len(c) == 0 {
		return nil
	}
	t := c[g.next%uint64(len(c))]
	g.next++
	return t
}

// count runs inc, which bumps a counter, under the lock.
func (s *Server) count(inc func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	inc()
}

// newProxy returns the reverse proxy behind every router.
func (s *Server) newProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			rt := pr.In.Context().Value(routeKey{}).(*route)
			pr.SetURL(&url.URL{Scheme: "http", Host: rt.addr})
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: s.proxyTr,
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode >= 500 {
				g := resp.Request.Context().Value(routeKey{}).(*route).g
				s.count(func() { g.target5xx++ })
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			rt := r.Context().Value(routeKey{}).(*route)
			if rt.client.Err() != nil {
				return // the client left; nobody reads an answer
			}
			status := http.StatusBadGateway
			var ne net.Error
			if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
				status = http.StatusGatewayTimeout
			}
			s.count(func() { rt.g.elb5xx++ })
			http.Error(w, fmt.Sprintf("%d %s", status, http.StatusText(status)), status)
		},
	}
}
