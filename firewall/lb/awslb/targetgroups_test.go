package awslb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
	"github.com/patchagent/patchagent/firewall/lb"
)

const (
	self  = "i-0aaaaaaaaaaaaaaa1" // this instance
	other = "i-0bbbbbbbbbbbbbbb2" // the rest of the fleet
)

// tgEnv is the simulated ELB with two target groups; this instance is
// registered in both, in "api" on a port override, and the other
// instance in "web" only.
type tgEnv struct {
	sim      *elbsim.Server
	web, api string // the groups' ARNs
	app      *httptest.Server
	port     int32
	healthy  atomic.Bool
	client   *elbv2.Client
}

// newTGEnv's groups have a deregistration delay of 30 s, or of delay if
// given.
func newTGEnv(t *testing.T, delay ...time.Duration) *tgEnv {
	t.Helper()
	e := &tgEnv{}
	e.healthy.Store(true)
	e.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !e.healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	t.Cleanup(e.app.Close)
	e.port = int32(e.app.Listener.Addr().(*net.TCPAddr).Port)
	drain := 30 * time.Second
	if len(delay) > 0 {
		drain = delay[0]
	}
	group := func(name string, port int32) elbsim.TargetGroup {
		return elbsim.TargetGroup{Name: name, Port: port, HealthCheckPath: "/health", HealthCheckInterval: 50 * time.Millisecond,
			HealthCheckTimeout: 40 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2, DeregistrationDelay: drain, CrossZone: true}
	}
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{group("web", e.port), group("api", 1)},
		Resolve:      elbsim.StaticResolver(map[string]string{self: "127.0.0.1", other: "127.0.0.1"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.sim = sim
	srv := httptest.NewServer(sim)
	t.Cleanup(sim.Close)
	t.Cleanup(srv.Close)
	e.web, e.api = sim.TargetGroupARN("web"), sim.TargetGroupARN("api")
	e.client = elbv2.NewFromConfig(awsquery.ClientConfig(3), func(o *elbv2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	ctx := context.Background()
	reg := func(arn, id string, port int32) {
		if _, err := e.client.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: target(Registration{arn, id, port})}); err != nil {
			t.Fatal(err)
		}
	}
	reg(e.web, self, e.port)
	reg(e.api, self, e.port) // the port override: the group's own port is 1
	reg(e.web, other, e.port)
	return e
}

func (e *tgEnv) backend() *TargetGroups {
	return &TargetGroups{
		ARNs:    []string{e.web, e.api},
		Connect: func(context.Context) (Clients, error) { return Clients{InstanceID: self, ELBv2: e.client}, nil },
		Poll:    20 * time.Millisecond,
	}
}

// state is the target's state in arn as the simulated ELB says.
func (e *tgEnv) state(t *testing.T, arn, id string, port int32) string {
	t.Helper()
	out, err := e.client.DescribeTargetHealth(context.Background(), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn), Targets: target(Registration{arn, id, port})})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := health(out)
	return string(st)
}

// TestTargetGroupsOutAndBack: Record finds both of this instance's
// registrations (the port override included) and not the other
// instance's; TakeOut deregisters exactly those and returns once both
// groups say draining; PutBack, from a Restore of the journal into a fresh
// backend (exit after a reboot), registers the same id and port and
// returns once both say healthy.
func TestTargetGroupsOutAndBack(t *testing.T) {
	e := newTGEnv(t)
	ctx := context.Background()
	b := e.backend()
	if _, err := b.TakeOut(ctx, time.Second); err == nil {
		t.Fatal("TakeOut before Record: no error")
	}
	rec, err := b.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(rec)
	regs := r.Registrations
	if err != nil || len(regs) != 2 || regs[0] != (Registration{e.web, self, e.port}) || regs[1] != (Registration{e.api, self, e.port}) || r.Standby != nil {
		t.Fatalf("recorded %s (%v)", rec, err)
	}
	w, err := b.TakeOut(ctx, 10*time.Second)
	if err != nil || w.By != "2 target group registration(s) draining" {
		t.Fatalf("take out: %+v %v", w, err)
	}
	for _, arn := range []string{e.web, e.api} {
		if st := e.state(t, arn, self, e.port); st != "draining" {
			t.Fatalf("%s: %s after TakeOut", shortARN(arn), st)
		}
	}
	if st := e.state(t, e.web, other, e.port); st == "draining" || st == "unused" {
		t.Fatalf("the other instance: %s", st)
	}
	// exit, from the journal.
	back := e.backend()
	if err := back.Restore(rec); err != nil {
		t.Fatal(err)
	}
	w, err = back.PutBack(ctx, 10*time.Second)
	if err != nil || w.By != "2 target group registration(s) healthy" {
		t.Fatalf("put back: %+v %v", w, err)
	}
	for _, arn := range []string{e.web, e.api} {
		if st := e.state(t, arn, self, e.port); st != "healthy" {
			t.Fatalf("%s: %s after PutBack", shortARN(arn), st)
		}
	}
	// Put back, the record is spent: an exit with no cycle open (SetOut
	// false) registers nothing, even if the operator removed the target
	// since.
	regs0 := e.sim.Calls("RegisterTargets")
	back.SetOut(false)
	if n := e.sim.Calls("RegisterTargets") - regs0; n != 0 {
		t.Fatalf("SetOut(false) after the put back registered %d time(s)", n)
	}
}

// TestTargetGroupsRecordCarriesTheLastCycle: a registration the last
// cycle could not put back joins the new record (once), one in a target
// group no longer configured, or of another instance, does not; PutBack
// registers it.
func TestTargetGroupsRecordCarriesTheLastCycle(t *testing.T) {
	e := newTGEnv(t)
	ctx := context.Background()
	b := e.backend()
	b.ARNs = []string{e.web}
	lost := Registration{e.web, self, e.port + 1} // refused at the last exit: not registered now
	// carried in the list form the first versions journaled
	carried, _ := json.Marshal([]Registration{lost, {e.web, self, e.port}, {e.api, self, e.port}, {e.web, other, e.port}})
	rec, err := b.Record(ctx, carried)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(rec)
	regs := r.Registrations
	if err != nil || len(regs) != 2 || regs[0] != (Registration{e.web, self, e.port}) || regs[1] != lost {
		t.Fatalf("recorded %s (%v)", rec, err)
	}
	if _, err := b.Record(ctx, json.RawMessage(`{`)); err == nil {
		t.Fatal("an unreadable carried record was taken")
	}
	b2 := e.backend()
	if err := b2.Restore(rec); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.TakeOut(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	regs0 := e.sim.Calls("RegisterTargets")
	_, _ = b2.PutBack(ctx, 300*time.Millisecond) // the lost port has no server: it never gets healthy
	if n := e.sim.Calls("RegisterTargets") - regs0; n != 2 {
		t.Fatalf("PutBack made %d RegisterTargets calls, want 2", n)
	}
	if st := e.state(t, e.web, self, e.port+1); st == "unused" {
		t.Fatal("the carried registration was not put back")
	}
}

// TestTargetGroupsPutBackNamesWhyNotHealthy: an app that fails ELB's
// checks: PutBack gives up at its deadline naming each registration and
// ELB's reason.
func TestTargetGroupsPutBackNamesWhyNotHealthy(t *testing.T) {
	e := newTGEnv(t)
	ctx := context.Background()
	b := e.backend()
	if _, err := b.Record(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TakeOut(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	e.healthy.Store(false)
	start := time.Now()
	_, err := b.PutBack(ctx, 600*time.Millisecond)
	if !errors.Is(err, lb.ErrNotConfirmed) || !strings.Contains(err.Error(), "web/") || !strings.Contains(err.Error(), "Target.ResponseCodeMismatch") || time.Since(start) > 5*time.Second {
		t.Fatalf("an unhealthy app: %v after %s", err, time.Since(start))
	}
}

// TestTargetGroupsAPIErrors: throttling is retried by the SDK; AccessDenied
// and an unknown target group fail Record and TakeOut with the API's words
// and the group named.
func TestTargetGroupsAPIErrors(t *testing.T) {
	e := newTGEnv(t)
	ctx := context.Background()
	b := e.backend()
	if err := e.sim.FailNext("DescribeTargetHealth", 2, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Record(ctx, nil); err != nil {
		t.Fatalf("throttled twice: %v", err)
	}
	if err := e.sim.FailNext("DeregisterTargets", 1, awsquery.AccessDenied); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TakeOut(ctx, 5*time.Second); err == nil || !strings.Contains(err.Error(), "deregistering web/") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("access denied: %v", err)
	}
	gone := &TargetGroups{ARNs: []string{strings.Replace(e.web, "/web/", "/gone/", 1)}, Connect: b.Connect}
	if _, err := gone.Record(ctx, nil); err == nil || !strings.Contains(err.Error(), "reading target group gone/") || !strings.Contains(err.Error(), "TargetGroupNotFound") {
		t.Fatalf("an unknown group: %v", err)
	}
	failing := &TargetGroups{ARNs: []string{e.web}, Connect: func(context.Context) (Clients, error) { return Clients{}, errors.New("no IMDS here") }}
	if _, err := failing.Record(ctx, nil); err == nil || !strings.Contains(err.Error(), "no IMDS here") {
		t.Fatalf("no identity: %v", err)
	}
}

// TestTargetGroupsCapacityGate: with the other instance unhealthy,
// leaving would leave "web" no healthy target: Record refuses with the
// counts and nothing is deregistered; a percent floor of the registered
// targets; and two nodes racing the gate: the other one leaves right
// after this one's Record, so TakeOut's re-check finds the floor broken
// and this instance steps back in.
func TestTargetGroupsCapacityGate(t *testing.T) {
	e := newTGEnv(t)
	ctx := context.Background()
	// The other instance, also on a port whose server fails ELB's checks.
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(500) }))
	defer bad.Close()
	badPort := int32(bad.Listener.Addr().(*net.TCPAddr).Port)
	if _, err := e.client.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(e.web), Targets: target(Registration{e.web, other, e.port})}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(e.web), Targets: target(Registration{e.web, other, badPort})}); err != nil {
		t.Fatal(err)
	}
	waitState := func(id string, port int32, want string) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); e.state(t, e.web, id, port) != want; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s:%d never %s", id, port, want)
			}
		}
	}
	waitState(other, badPort, "unhealthy")
	b := e.backend()
	b.ARNs = []string{e.web} // "api" has this instance alone
	b.MinHealthy = MinHealthy{Count: 1}
	deregs := e.sim.Calls("DeregisterTargets")
	_, err := b.Record(ctx, nil)
	// The other instance's old registration still drains: it counts.
	if !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), "would leave 0 healthy target(s) of 3 registered (1 of them draining), fewer than lb.aws.min_healthy 1 (1)") {
		t.Fatalf("the last healthy target: %v", err)
	}
	if e.sim.Calls("DeregisterTargets") != deregs || e.state(t, e.web, self, e.port) != "healthy" {
		t.Fatal("the refused gate changed something")
	}
	// 50% of 3 listed is 2 healthy others: still refused.
	b.MinHealthy = MinHealthy{Percent: 50}
	if _, err := b.Record(ctx, nil); !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), "lb.aws.min_healthy 50% (2)") {
		t.Fatalf("50%%: %v", err)
	}

	// The other instance healthy again: the gate passes; then it leaves
	// between this one's Record and TakeOut (it passed the gate too).
	if _, err := e.client.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(e.web), Targets: target(Registration{e.web, other, e.port})}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(e.web), Targets: target(Registration{e.web, other, badPort})}); err != nil {
		t.Fatal(err)
	}
	waitState(other, e.port, "healthy")
	b.MinHealthy = MinHealthy{Count: 1}
	if _, err := b.Record(ctx, nil); err != nil {
		t.Fatalf("one healthy other: %v", err)
	}
	if _, err := e.client.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(e.web), Targets: target(Registration{e.web, other, e.port})}); err != nil {
		t.Fatal(err)
	}
	_, err = b.TakeOut(ctx, 10*time.Second)
	if !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), "another node left at the same time") || !strings.Contains(err.Error(), "stepped back in") {
		t.Fatalf("the race: %v", err)
	}
	if st := e.state(t, e.web, self, e.port); st != "initial" && st != "healthy" {
		t.Fatalf("after stepping back in: %s", st)
	}
}

// typedELB is an ELBv2 whose target groups named in types have that target
// type (the simulator's are all instance).
type typedELB struct {
	ELBv2
	types map[string]types.TargetTypeEnum
}

func (f typedELB) DescribeTargetGroups(ctx context.Context, in *elbv2.DescribeTargetGroupsInput, opts ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupsOutput, error) {
	out, err := f.ELBv2.DescribeTargetGroups(ctx, in, opts...)
	if err == nil {
		for i, g := range out.TargetGroups {
			if tt, ok := f.types[aws.ToString(g.TargetGroupArn)]; ok {
				out.TargetGroups[i].TargetType = tt
			}
		}
	}
	return out, err
}

// TestTargetGroupsRefusesOtherTargetTypes: a group whose targets are IP
// addresses (here this node's own, 127.0.0.1, healthy) never lists this
// instance's id: Record used to find nothing there, so pre only warned,
// then blocked the node while the LB kept routing to its address (and the
// gate counted that address as another healthy target). Record now
// refuses it, naming the group, and keeps no record: TakeOut has nothing
// to change.
func TestTargetGroupsRefusesOtherTargetTypes(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer app.Close()
	port := int32(app.Listener.Addr().(*net.TCPAddr).Port)
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{
			{Name: "web", Port: port, HealthCheckInterval: 50 * time.Millisecond, HealthCheckTimeout: 40 * time.Millisecond, HealthyThreshold: 2, CrossZone: true},
			{Name: "byip", Port: port, HealthCheckInterval: 50 * time.Millisecond, HealthCheckTimeout: 40 * time.Millisecond, HealthyThreshold: 2, CrossZone: true},
		},
		Resolve: elbsim.StaticResolver(map[string]string{self: "127.0.0.1", "127.0.0.1": "127.0.0.1"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	defer sim.Close()
	defer srv.Close()
	client := elbv2.NewFromConfig(awsquery.ClientConfig(3), func(o *elbv2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	web, byIP := sim.TargetGroupARN("web"), sim.TargetGroupARN("byip")
	ctx := context.Background()
	for arn, id := range map[string]string{web: self, byIP: "127.0.0.1"} {
		if _, err := client.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: target(Registration{arn, id, port})}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []types.TargetTypeEnum{types.TargetTypeEnumIp, types.TargetTypeEnumLambda, types.TargetTypeEnumAlb} {
		b := &TargetGroups{
			ARNs: []string{web, byIP},
			Connect: func(context.Context) (Clients, error) {
				return Clients{InstanceID: self, ELBv2: typedELB{client, map[string]types.TargetTypeEnum{byIP: tt}}}, nil
			},
			Poll: 20 * time.Millisecond,
		}
		_, err := b.Record(ctx, nil)
		if !errors.Is(err, ErrNotInstanceTargets) || !strings.Contains(err.Error(), "target group "+shortARN(byIP)+` has target type "`+string(tt)+`"`) ||
			!strings.Contains(err.Error(), "patchagent registers instance targets only") {
			t.Fatalf("%s: Record: %v", tt, err)
		}
		if _, err := b.TakeOut(ctx, time.Second); err == nil || !strings.Contains(err.Error(), "no record") {
			t.Fatalf("%s: TakeOut after the refused Record: %v", tt, err)
		}
	}
	if n := sim.Calls("DeregisterTargets"); n != 0 {
		t.Fatalf("%d DeregisterTargets", n)
	}
}

// TestPercentGateCountsDrainingTargets: 10 nodes at min_healthy 50% leave
// one after another, each still draining when the next asks (the
// deregistration delay): the first 5 leave, the 6th would leave 4 healthy
// of 10 and is refused, and so is each after it. Counting only the targets not draining, the floor
// shrank with each leaver and the 6th to the 9th passed too.
func TestPercentGateCountsDrainingTargets(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer app.Close()
	port := int32(app.Listener.Addr().(*net.TCPAddr).Port)
	var ids []string
	resolve := map[string]string{}
	for i := range 10 {
		id := fmt.Sprintf("i-0%016d", i)
		ids = append(ids, id)
		resolve[id] = "127.0.0.1"
	}
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{{Name: "web", Port: port, HealthCheckInterval: 50 * time.Millisecond, HealthCheckTimeout: 40 * time.Millisecond,
			HealthyThreshold: 2, DeregistrationDelay: time.Minute, CrossZone: true}},
		Resolve: elbsim.StaticResolver(resolve),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	defer sim.Close()
	defer srv.Close()
	client := elbv2.NewFromConfig(awsquery.ClientConfig(3), func(o *elbv2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	web := sim.TargetGroupARN("web")
	ctx := context.Background()
	var all []types.TargetDescription
	for _, id := range ids {
		all = append(all, target(Registration{web, id, port})...)
	}
	if _, err := client.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(web), Targets: all}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := client.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(web)})
		if err != nil {
			t.Fatal(err)
		}
		healthy := 0
		for _, d := range out.TargetHealthDescriptions {
			if d.TargetHealth.State == types.TargetHealthStateEnumHealthy {
				healthy++
			}
		}
		if healthy == 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 10 targets healthy", healthy)
		}
	}
	for i, id := range ids {
		b := &TargetGroups{
			ARNs:       []string{web},
			Connect:    func(context.Context) (Clients, error) { return Clients{InstanceID: id, ELBv2: client}, nil },
			MinHealthy: MinHealthy{Percent: 50},
			Poll:       20 * time.Millisecond,
		}
		_, err := b.Record(ctx, nil)
		if i < 5 {
			if err != nil {
				t.Fatalf("leaver %d: %v", i+1, err)
			}
			if _, err := b.TakeOut(ctx, 5*time.Second); err != nil {
				t.Fatalf("leaver %d: %v", i+1, err)
			}
			continue
		}
		// The refused stay in: 4 healthy others for each of them.
		want := "would leave 4 healthy target(s) of 10 registered (5 of them draining), fewer than lb.aws.min_healthy 50% (5)"
		if !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), want) {
			t.Fatalf("leaver %d: %v, want %q", i+1, err, want)
		}
	}
}
