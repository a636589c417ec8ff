package elbsim_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
)

// Instance ids the tests register; all of them live on 127.0.0.1.
const (
	idA     = "i-0aaaaaaaaaaaaaaa1"
	idB     = "i-0bbbbbbbbbbbbbbb2"
	idC     = "i-0ccccccccccccccc3"
	idD     = "i-0ddddddddddddddd4"
	idE     = "i-0eeeeeeeeeeeeeee5"
	idGhost = "i-0fffffffffffffff9" // no such instance: the resolver does not know it
)

// Health-check timing of the tests' groups: short, so that tests are fast,
// with a timeout generous enough for a loaded machine.
const (
	interval = 100 * time.Millisecond
	timeout  = 80 * time.Millisecond
	drain    = 300 * time.Millisecond
)

// fastGroup is a target group whose checks GET /health every interval.
func fastGroup(name string) elbsim.TargetGroup {
	return elbsim.TargetGroup{
		Name:                name,
		Port:                80, // nothing listens there: tests register their apps' ports
		HealthCheckPath:     "/health",
		HealthCheckInterval: interval,
		HealthCheckTimeout:  timeout,
		HealthyThreshold:    2,
		UnhealthyThreshold:  2,
		DeregistrationDelay: drain,
	}
}

// app is a target: an HTTP server answering status on every path with its
// name as the body. Its health-check answer can be switched and delayed.
type app struct {
	name   string
	srv    *httptest.Server
	port   int32
	status atomic.Int64
	delay  atomic.Int64 // nanoseconds the health check waits before answering
	checks atomic.Int64 // GET /health seen
	other  atomic.Int64 // requests to other paths
	ua     atomic.Pointer[string]
}

func newApp(t *testing.T, name string, status int) *app {
	t.Helper()
	a := &app{name: name}
	a.status.Store(int64(status))
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			a.checks.Add(1)
			ua := r.UserAgent()
			a.ua.Store(&ua)
			if d := time.Duration(a.delay.Load()); d > 0 {
				select {
				case <-time.After(d):
				case <-r.Context().Done():
					return
				}
			}
		} else {
			a.other.Add(1)
		}
		w.Header().Set("X-Seen-Host", r.Host)
		w.Header().Set("X-Seen-Forwarded-For", r.Header.Get("X-Forwarded-For"))
		w.WriteHeader(int(a.status.Load()))
		io.WriteString(w, a.name)
	}))
	t.Cleanup(a.srv.Close)
	a.port = int32(a.srv.Listener.Addr().(*net.TCPAddr).Port)
	return a
}

// env is a simulated ELB service with an SDK client pointed at it.
type env struct {
	sim   *elbsim.Server
	api   *httptest.Server
	c     *elbv2.Client
	dials atomic.Int64 // connections opened through Options.Dial
}

// setup starts the service with groups. Create the apps first: cleanups run
// last-first, so the service stops checking before the apps go away.
func setup(t *testing.T, groups ...elbsim.TargetGroup) *env {
	t.Helper()
	e := &env{}
	hosts := map[string]string{}
	for _, id := range []string{idA, idB, idC, idD, idE} {
		hosts[id] = "127.0.0.1"
	}
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: groups,
		Resolve:      elbsim.StaticResolver(hosts),
		Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			e.dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.sim = sim
	e.api = httptest.NewServer(sim)
	t.Cleanup(sim.Close)
	t.Cleanup(e.api.Close)
	e.c = newClient(e.api.URL, 3)
	return e
}

// newClient is the SDK client as patchagent builds it, with a fast backoff
// so that retries take milliseconds instead of seconds.
func newClient(url string, attempts int) *elbv2.Client {
	return elbv2.NewFromConfig(awsquery.ClientConfig(attempts), func(o *elbv2.Options) { o.BaseEndpoint = aws.String(url) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func td(id string, port int32) types.TargetDescription {
	d := types.TargetDescription{Id: aws.String(id)}
	if port != 0 {
		d.Port = aws.Int32(port)
	}
	return d
}

func (e *env) register(t *testing.T, arn string, ts ...types.TargetDescription) {
	t.Helper()
	if _, err := e.c.RegisterTargets(ctx(t), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: ts}); err != nil {
		t.Fatalf("RegisterTargets: %v", err)
	}
}

func (e *env) deregister(t *testing.T, arn string, ts ...types.TargetDescription) {
	t.Helper()
	if _, err := e.c.DeregisterTargets(ctx(t), &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: ts}); err != nil {
		t.Fatalf("DeregisterTargets: %v", err)
	}
}

// health returns DescribeTargetHealth's answer keyed "id:port".
func (e *env) health(t *testing.T, arn string, ts ...types.TargetDescription) map[string]types.TargetHealthDescription {
	t.Helper()
	out, err := e.c.DescribeTargetHealth(ctx(t), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn), Targets: ts})
	if err != nil {
		t.Fatalf("DescribeTargetHealth: %v", err)
	}
	m := map[string]types.TargetHealthDescription{}
	for _, d := range out.TargetHealthDescriptions {
		m[key(aws.ToString(d.Target.Id), aws.ToInt32(d.Target.Port))] = d
	}
	return m
}

func key(id string, port int32) string { return id + ":" + strconv.Itoa(int(port)) }

// state returns the state and reason of id:port, "absent" if not listed.
func (e *env) state(t *testing.T, arn, id string, port int32) (types.TargetHealthStateEnum, types.TargetHealthReasonEnum) {
	t.Helper()
	d, ok := e.health(t, arn)[key(id, port)]
	if !ok {
		return "absent", ""
	}
	return d.TargetHealth.State, d.TargetHealth.Reason
}

// waitState polls until id:port is in state want, for at most 5s.
func (e *env) waitState(t *testing.T, arn, id string, port int32, want types.TargetHealthStateEnum) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, reason := e.state(t, arn, id, port)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:%d still %s (%s), not %s, after 5s", id, port, got, reason, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// router serves the listener of group arn (in zone, if not empty).
func (e *env) router(t *testing.T, arn, zone string) *httptest.Server {
	t.Helper()
	h, err := e.sim.RouterInZone(arn, zone)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// get sends one request through a router and returns status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: reading the body: %v", url, err)
	}
	return resp.StatusCode, string(b)
}

func (e *env) stats(t *testing.T, arn string) elbsim.Stats {
	t.Helper()
	st, err := e.sim.Stats(arn)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func arnOf(e *env, name string) string {
	arn := e.sim.TargetGroupARN(name)
	if arn == "" {
		panic(fmt.Sprintf("no group %q", name))
	}
	return arn
}
