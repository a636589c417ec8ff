package elbsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Target states and reasons, as DescribeTargetHealth reports them.
const (
	stateInitial   = "initial"
	stateHealthy   = "healthy"
	stateUnhealthy = "unhealthy"
	stateDraining  = "draining"
	stateUnused    = "unused"

	reasonRegistrationInProgress   = "Elb.RegistrationInProgress"
	reasonDeregistrationInProgress = "Target.DeregistrationInProgress"
	reasonNotRegistered            = "Target.NotRegistered"
	reasonFailedHealthChecks       = "Target.FailedHealthChecks"
	reasonResponseCodeMismatch     = "Target.ResponseCodeMismatch"
	reasonTimeout                  = "Target.Timeout"
)

// register adds p to g, or takes a draining registration back to initial.
// Call with s.mu held and s not closed.
func (s *Server) register(g *group, p targetParam) {
	t := g.targets[p.key]
	if t != nil && t.state != stateDraining {
		return // already registered: RegisterTargets is idempotent
	}
	if t == nil {
		t = &target{key: p.key, zone: s.defaultZone}
		if p.zone != "" {
			t.zone, t.zoneGiven = p.zone, true
		}
		t.life, t.end = context.WithCancel(s.ctx)
		g.targets[p.key] = t
	} else if t.drainTimer != nil {
		t.drainTimer.Stop()
		t.drainTimer = nil
	}
	t.state, t.reason, t.desc = stateInitial, reasonRegistrationInProgress, "Target registration is in progress"
	t.passes, t.fails = 0, 0
	t.gen++
	ctx, stop := context.WithCancel(t.life)
	t.stopChecks = stop
	s.wg.Add(1)
	go s.checkLoop(ctx, g, t, t.gen)
}

// deregister stops t's health checks and starts its draining; the routers
// stop sending it requests at once. Call with s.mu held.
func (s *Server) deregister(g *group, t *target) {
	t.gen++
	t.stopChecks()
	t.state, t.reason, t.desc = stateDraining, reasonDeregistrationInProgress, "Target deregistration is in progress"
	if g.cfg.DeregistrationDelay <= 0 {
		s.remove(g, t)
		return
	}
	gen := t.gen
	t.drainTimer = time.AfterFunc(g.cfg.DeregistrationDelay, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if g.targets[t.key] == t && t.gen == gen {
			s.remove(g, t)
		}
	})
}

// remove ends t's registration: it is gone from DescribeTargetHealth and its
// in-flight routed requests are cut, as ELB closes them when the delay ends.
// Call with s.mu held.
func (s *Server) remove(g *group, t *target) {
	delete(g.targets, t.key)
	t.end()
}

// probeResult is one health check's outcome: passed, or why not.
type probeResult struct {
	ok           bool
	reason, desc string
}

// checkLoop checks t every interval, the first time at once, until ctx ends.
func (s *Server) checkLoop(ctx context.Context, g *group, t *target, gen uint64) {
	defer s.wg.Done()
	tick := time.NewTicker(g.cfg.HealthCheckInterval)
	defer tick.Stop()
	for {
		res := s.probe(ctx, g, t.key)
		if ctx.Err() != nil {
			return
		}
		s.record(g, t, gen, res)
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// probe GETs the health-check path of key on its health-check port, as ELB
// does: User-Agent ELB-HealthChecker/2.0, a fresh connection, the group's
// timeout over the whole exchange, only the matcher's codes passing.
func (s *Server) probe(ctx context.Context, g *group, key Target) probeResult {
	failed := probeResult{reason: reasonFailedHealthChecks, desc: "Health checks failed"}
	addr, err := s.resolve(key.ID, g.healthCheckPort(key))
	if err != nil {
		return failed
	}
	ctx, cancel := context.WithTimeout(ctx, g.cfg.HealthCheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+g.cfg.HealthCheckPath, nil)
	if err != nil {
		return failed
	}
	req.Header.Set("User-Agent", "ELB-HealthChecker/2.0")
	resp, err := s.checker.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	if err != nil {
		var ne net.Error
		if errors.Is(ctx.Err(), context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
			return probeResult{reason: reasonTimeout, desc: "Request timed out"}
		}
		return failed
	}
	if !g.accepts(resp.StatusCode) {
		return probeResult{reason: reasonResponseCodeMismatch, desc: fmt.Sprintf("Health checks failed with these codes: [%d]", resp.StatusCode)}
	}
	return probeResult{ok: true}
}

// record applies one check result to t, unless t was deregistered or
// registered again since the check began.
func (s *Server) record(g *group, t *target, gen uint64, r probeResult) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t.gen != gen || g.targets[t.key] != t {
		return
	}
	if r.ok {
		t.fails = 0
		t.passes++
		if t.state != stateHealthy && t.passes >= g.cfg.HealthyThreshold {
			t.state, t.reason, t.desc = stateHealthy, "", ""
		}
		return
	}
	t.passes = 0
	t.fails++
	if t.state == stateUnhealthy || t.fails >= g.cfg.UnhealthyThreshold {
		t.state, t.reason, t.desc = stateUnhealthy, r.reason, r.desc
	}
}
