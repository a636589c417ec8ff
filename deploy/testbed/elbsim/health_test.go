package elbsim_test

import (
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
	"github.com/aws/smithy-go"
)

// A registration starts initial and turns healthy through the server's own
// checks: GET /health with ELB's user agent, through the caller's dialer.
func TestRegisterBecomesHealthyThroughOwnChecks(t *testing.T) {
	t.Parallel()
	a := newApp(t, "a", 200)
	g := fastGroup("tg-register")
	g.HealthyThreshold = 3 // initial lasts at least two intervals: long enough to see
	e := setup(t, g)
	arn := arnOf(e, "tg-register")

	e.register(t, arn, td(idA, a.port))
	d := e.health(t, arn)[key(idA, a.port)]
	if d.TargetHealth == nil || d.TargetHealth.State != types.TargetHealthStateEnumInitial || d.TargetHealth.Reason != types.TargetHealthReasonEnumRegistrationInProgress {
		t.Fatalf("just registered: %+v, want initial / Elb.RegistrationInProgress", d.TargetHealth)
	}
	if got := aws.ToString(d.HealthCheckPort); got != strconv.Itoa(int(a.port)) {
		t.Errorf("HealthCheckPort %q, want the traffic port %d", got, a.port)
	}

	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)
	if _, reason := e.state(t, arn, idA, a.port); reason != "" {
		t.Errorf("healthy with reason %q, want none", reason)
	}
	if n := a.checks.Load(); n < 3 {
		t.Errorf("healthy after %d checks, want at least the threshold 3", n)
	}
	if ua := a.ua.Load(); ua == nil || *ua != "ELB-HealthChecker/2.0" {
		t.Errorf("health check User-Agent %v, want ELB-HealthChecker/2.0", ua)
	}
	if n := a.other.Load(); n != 0 {
		t.Errorf("%d requests to paths other than /health; checks must GET only the configured path", n)
	}
	if e.dials.Load() == 0 {
		t.Error("no connection went through Options.Dial")
	}

	// Registering again is a no-op, as in AWS: it stays healthy.
	e.register(t, arn, td(idA, a.port))
	if st, _ := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumHealthy {
		t.Errorf("registered again while healthy: %s, want healthy", st)
	}
}

// The SDK's own waiters, unmodified, see the target come into service and
// then go away after its draining.
func TestSDKWaiters(t *testing.T) {
	t.Parallel()
	a := newApp(t, "a", 200)
	e := setup(t, fastGroup("tg-waiter"))
	arn := arnOf(e, "tg-waiter")
	in := &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn), Targets: []types.TargetDescription{td(idA, a.port)}}

	e.register(t, arn, td(idA, a.port))
	w := elbv2.NewTargetInServiceWaiter(e.c, func(o *elbv2.TargetInServiceWaiterOptions) {
		o.MinDelay, o.MaxDelay = 20*time.Millisecond, 100*time.Millisecond
	})
	if err := w.Wait(ctx(t), in, 5*time.Second); err != nil {
		t.Fatalf("TargetInServiceWaiter: %v", err)
	}
	if st, _ := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumHealthy {
		t.Fatalf("after TargetInServiceWaiter: %s, want healthy", st)
	}

	e.deregister(t, arn, td(idA, a.port))
	start := time.Now()
	dw := elbv2.NewTargetDeregisteredWaiter(e.c, func(o *elbv2.TargetDeregisteredWaiterOptions) {
		o.MinDelay, o.MaxDelay = 20*time.Millisecond, 100*time.Millisecond
	})
	if err := dw.Wait(ctx(t), in, 5*time.Second); err != nil {
		t.Fatalf("TargetDeregisteredWaiter: %v", err)
	}
	if el := time.Since(start); el < drain-50*time.Millisecond {
		t.Errorf("TargetDeregisteredWaiter returned after %s, before the %s deregistration delay", el, drain)
	}
}

// Deregistration drains for the delay, stops the health checks, then the
// target is gone and unused.
func TestDeregisterDrainsThenGone(t *testing.T) {
	t.Parallel()
	a, b := newApp(t, "a", 200), newApp(t, "b", 200)
	e := setup(t, fastGroup("tg-drain"))
	arn := arnOf(e, "tg-drain")
	e.register(t, arn, td(idA, a.port), td(idB, b.port))
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)

	e.deregister(t, arn, td(idA, a.port))
	deregistered := time.Now()
	checks := a.checks.Load()
	st, reason := e.state(t, arn, idA, a.port)
	if st != types.TargetHealthStateEnumDraining || reason != types.TargetHealthReasonEnumDeregistrationInProgress {
		t.Fatalf("just deregistered: %s / %s, want draining / Target.DeregistrationInProgress", st, reason)
	}
	e.waitState(t, arn, idA, a.port, "absent")
	if el := time.Since(deregistered); el < drain-50*time.Millisecond {
		t.Errorf("gone after %s, before the %s delay", el, drain)
	}
	if n := a.checks.Load(); n > checks+1 { // one may have been in flight
		t.Errorf("%d health checks while draining, want none", n-checks)
	}
	d := e.health(t, arn, td(idA, a.port))[key(idA, a.port)]
	if d.TargetHealth.State != types.TargetHealthStateEnumUnused || d.TargetHealth.Reason != types.TargetHealthReasonEnumNotRegistered {
		t.Errorf("asked for explicitly once gone: %s / %s, want unused / Target.NotRegistered", d.TargetHealth.State, d.TargetHealth.Reason)
	}
	if all := e.health(t, arn); len(all) != 1 || all[key(idB, b.port)].TargetHealth == nil {
		t.Errorf("all targets once A is gone: %v, want only B", keys(all))
	}
}

// A target registered again while draining goes back to initial, then
// healthy, and the old draining's end does not remove it.
func TestReregisterWhileDraining(t *testing.T) {
	t.Parallel()
	a := newApp(t, "a", 200)
	e := setup(t, fastGroup("tg-rereg"))
	arn := arnOf(e, "tg-rereg")
	e.register(t, arn, td(idA, a.port))
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)
	e.deregister(t, arn, td(idA, a.port))
	e.register(t, arn, td(idA, a.port))
	if st, reason := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumInitial || reason != types.TargetHealthReasonEnumRegistrationInProgress {
		t.Fatalf("registered again while draining: %s / %s, want initial / Elb.RegistrationInProgress", st, reason)
	}
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)
	time.Sleep(drain + interval)
	if st, _ := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumHealthy {
		t.Errorf("after the first deregistration's delay: %s, want still healthy", st)
	}
}

// ELB keys registrations by id AND port: deregistering with the group's
// default port leaves a target registered on another port in place.
func TestDeregisterNeedsTheRegisteredPort(t *testing.T) {
	t.Parallel()
	a := newApp(t, "a", 200)
	e := setup(t, fastGroup("tg-ports"))
	arn := arnOf(e, "tg-ports")
	e.register(t, arn, td(idA, a.port)) // port override; the group's is 80
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)

	e.deregister(t, arn, td(idA, 0))  // no port: the group's 80
	e.deregister(t, arn, td(idA, 80)) // the same, explicitly
	if st, _ := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumHealthy {
		t.Fatalf("after deregistering %s:80: %s, want still healthy (a silent no-op)", idA, st)
	}
	d := e.health(t, arn, td(idA, 80))[key(idA, 80)]
	if d.TargetHealth.State != types.TargetHealthStateEnumUnused {
		t.Errorf("%s:80 is %s, want unused: it was never registered", idA, d.TargetHealth.State)
	}

	e.deregister(t, arn, td(idA, a.port))
	if st, _ := e.state(t, arn, idA, a.port); st != types.TargetHealthStateEnumDraining {
		t.Errorf("after deregistering the recorded port: %s, want draining", st)
	}
}

// Targets asked for explicitly but not registered are unused; ids that do not
// exist are InvalidTarget, for DescribeTargetHealth and RegisterTargets alike.
func TestUnregisteredAndInvalidTargets(t *testing.T) {
	t.Parallel()
	e := setup(t, fastGroup("tg-unused"))
	arn := arnOf(e, "tg-unused")

	m := e.health(t, arn, td(idB, 8080), td(idC, 0))
	for _, k := range []string{key(idB, 8080), key(idC, 80)} {
		d, ok := m[k]
		if !ok {
			t.Errorf("no description of %s in %v", k, keys(m))
			continue
		}
		if d.TargetHealth.State != types.TargetHealthStateEnumUnused || d.TargetHealth.Reason != types.TargetHealthReasonEnumNotRegistered || aws.ToString(d.TargetHealth.Description) == "" {
			t.Errorf("%s: %s / %s / %q, want unused / Target.NotRegistered with a description", k, d.TargetHealth.State, d.TargetHealth.Reason, aws.ToString(d.TargetHealth.Description))
		}
	}

	var invalid *types.InvalidTargetException
	_, err := e.c.DescribeTargetHealth(ctx(t), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn), Targets: []types.TargetDescription{td(idGhost, 0)}})
	if !errors.As(err, &invalid) || !strings.Contains(invalid.ErrorMessage(), idGhost) {
		t.Errorf("DescribeTargetHealth of an id that does not exist: %v, want *types.InvalidTargetException naming it", err)
	}
	_, err = e.c.RegisterTargets(ctx(t), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: []types.TargetDescription{td(idB, 8080), td(idGhost, 0)}})
	if !errors.As(err, &invalid) {
		t.Errorf("RegisterTargets of an id that does not exist: %v, want *types.InvalidTargetException", err)
	}
	if all := e.health(t, arn); len(all) != 0 {
		t.Errorf("a refused RegisterTargets registered %v; want nothing", keys(all))
	}
}

// Failing checks make a target unhealthy with ELB's reason for the failure,
// and passing ones bring it back.
func TestUnhealthyReasons(t *testing.T) {
	t.Parallel()
	bad := newApp(t, "bad", 500)
	slow := newApp(t, "slow", 200)
	slow.delay.Store(int64(time.Second))
	sw := newApp(t, "switch", 200)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedPort := int32(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	e := setup(t, fastGroup("tg-unhealthy"))
	arn := arnOf(e, "tg-unhealthy")
	e.register(t, arn, td(idA, bad.port), td(idB, slow.port), td(idC, closedPort), td(idD, sw.port))
	for _, c := range []struct {
		id     string
		port   int32
		reason types.TargetHealthReasonEnum
		desc   string
	}{
		{idA, bad.port, types.TargetHealthReasonEnumResponseCodeMismatch, "[500]"},
		{idB, slow.port, types.TargetHealthReasonEnumTimeout, ""},
		{idC, closedPort, types.TargetHealthReasonEnumFailedHealthChecks, ""},
	} {
		e.waitState(t, arn, c.id, c.port, types.TargetHealthStateEnumUnhealthy)
		d := e.health(t, arn, td(c.id, c.port))[key(c.id, c.port)]
		if d.TargetHealth.Reason != c.reason || !strings.Contains(aws.ToString(d.TargetHealth.Description), c.desc) {
			t.Errorf("%s: reason %s, description %q; want %s and a description containing %q", c.id, d.TargetHealth.Reason, aws.ToString(d.TargetHealth.Description), c.reason, c.desc)
		}
	}

	e.waitState(t, arn, idD, sw.port, types.TargetHealthStateEnumHealthy)
	sw.status.Store(503)
	e.waitState(t, arn, idD, sw.port, types.TargetHealthStateEnumUnhealthy)
	d := e.health(t, arn, td(idD, sw.port))[key(idD, sw.port)]
	if d.TargetHealth.Reason != types.TargetHealthReasonEnumResponseCodeMismatch || !strings.Contains(aws.ToString(d.TargetHealth.Description), "[503]") {
		t.Errorf("switched to 503: %s / %q, want Target.ResponseCodeMismatch naming 503", d.TargetHealth.Reason, aws.ToString(d.TargetHealth.Description))
	}
	sw.status.Store(200)
	e.waitState(t, arn, idD, sw.port, types.TargetHealthStateEnumHealthy)
}

// A numbered health-check port is checked instead of the traffic port, and
// the matcher decides which codes pass.
func TestHealthCheckPortAndMatcher(t *testing.T) {
	t.Parallel()
	checked := newApp(t, "checked", 204) // fails the default matcher "200"
	traffic := newApp(t, "traffic", 500)
	g := fastGroup("tg-hcport")
	g.HealthCheckPort = strconv.Itoa(int(checked.port))
	g.Matcher = "200-299"
	strict := fastGroup("tg-strict") // the default matcher
	e := setup(t, g, strict)
	arn := arnOf(e, "tg-hcport")

	e.register(t, arn, td(idA, traffic.port))
	e.waitState(t, arn, idA, traffic.port, types.TargetHealthStateEnumHealthy)
	d := e.health(t, arn)[key(idA, traffic.port)]
	if got := aws.ToString(d.HealthCheckPort); got != g.HealthCheckPort {
		t.Errorf("HealthCheckPort %q, want %q", got, g.HealthCheckPort)
	}
	if traffic.checks.Load() != 0 {
		t.Errorf("the traffic port got %d health checks, want none", traffic.checks.Load())
	}

	e.register(t, arnOf(e, "tg-strict"), td(idA, checked.port))
	e.waitState(t, arnOf(e, "tg-strict"), idA, checked.port, types.TargetHealthStateEnumUnhealthy)
	if _, reason := e.state(t, arnOf(e, "tg-strict"), idA, checked.port); reason != types.TargetHealthReasonEnumResponseCodeMismatch {
		t.Errorf("204 against matcher 200: reason %s, want Target.ResponseCodeMismatch", reason)
	}
}

// Close stops the health checks, and the API then refuses changes.
func TestCloseStopsHealthChecks(t *testing.T) {
	t.Parallel()
	a := newApp(t, "a", 200)
	e := setup(t, fastGroup("tg-close"))
	arn := arnOf(e, "tg-close")
	e.register(t, arn, td(idA, a.port))
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)

	e.sim.Close()
	n := a.checks.Load()
	time.Sleep(3 * interval)
	if m := a.checks.Load(); m != n {
		t.Errorf("%d health checks after Close, want none", m-n)
	}
	_, err := e.c.RegisterTargets(ctx(t), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: []types.TargetDescription{td(idB, a.port)}})
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode() != "ServiceUnavailable" {
		t.Errorf("RegisterTargets after Close: %v, want ServiceUnavailable", err)
	}
	e.sim.Close() // idempotent
}

func keys(m map[string]types.TargetHealthDescription) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
