package asgsim_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/aws/smithy-go"

	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// Instance ids of the tests' groups.
const (
	idA     = "i-0aaaaaaaaaaaaaaa1"
	idB     = "i-0bbbbbbbbbbbbbbb2"
	idC     = "i-0ccccccccccccccc3"
	idGhost = "i-0fffffffffffffff9" // in no group
)

// tgWeb is the target group attached to the "web" groups.
const tgWeb = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/50dc6c495c0c9188"

// delay is the tests' TransitionDelay: short, but long enough to be measured.
const delay = 30 * time.Millisecond

// webGroup is a group of idA (us-east-1a) and idB (us-east-1b) behind tgWeb,
// with the given sizes.
func webGroup(minSize, desired, maxSize int32) asgsim.Group {
	return asgsim.Group{
		Name:            "web",
		MinSize:         minSize,
		DesiredCapacity: desired,
		MaxSize:         maxSize,
		HealthCheckType: asgsim.HealthCheckELB,
		TargetGroupARNs: []string{tgWeb},
		Instances: []asgsim.Instance{
			{ID: idA, AvailabilityZone: "us-east-1a"},
			{ID: idB, AvailabilityZone: "us-east-1b"},
		},
	}
}

// env is a simulated Auto Scaling service with an SDK client pointed at it.
type env struct {
	sim *asgsim.Server
	api *httptest.Server
	c   *autoscaling.Client
}

// setup starts the service for groups with the tests' delay.
func setup(t *testing.T, groups ...asgsim.Group) *env {
	t.Helper()
	return setupOpts(t, asgsim.Options{Groups: groups, TransitionDelay: delay})
}

func setupOpts(t *testing.T, opts asgsim.Options) *env {
	t.Helper()
	sim, err := asgsim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{sim: sim, api: httptest.NewServer(sim)}
	t.Cleanup(func() {
		if err := sim.Close(); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(e.api.Close)
	e.c = newClient(e.api.URL, 3)
	return e
}

// newClient is the SDK client as patchagent builds it, with a fast backoff
// so that retries take milliseconds instead of seconds.
func newClient(url string, attempts int) *autoscaling.Client {
	return autoscaling.NewFromConfig(awsquery.ClientConfig(attempts), func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(url) })
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return c
}

func (e *env) enter(t *testing.T, group string, decrement bool, ids ...string) *autoscaling.EnterStandbyOutput {
	t.Helper()
	out, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String(group), InstanceIds: ids, ShouldDecrementDesiredCapacity: aws.Bool(decrement)})
	if err != nil {
		t.Fatalf("EnterStandby %v: %v", ids, err)
	}
	return out
}

func (e *env) exit(t *testing.T, group string, ids ...string) *autoscaling.ExitStandbyOutput {
	t.Helper()
	out, err := e.c.ExitStandby(ctx(t), &autoscaling.ExitStandbyInput{AutoScalingGroupName: aws.String(group), InstanceIds: ids})
	if err != nil {
		t.Fatalf("ExitStandby %v: %v", ids, err)
	}
	return out
}

// state returns the lifecycle state of id as DescribeAutoScalingInstances
// reports it ("absent" if it is not listed).
func (e *env) state(t *testing.T, id string) string {
	t.Helper()
	out, err := e.c.DescribeAutoScalingInstances(ctx(t), &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{id}})
	if err != nil {
		t.Fatalf("DescribeAutoScalingInstances: %v", err)
	}
	if len(out.AutoScalingInstances) != 1 {
		return "absent"
	}
	return aws.ToString(out.AutoScalingInstances[0].LifecycleState)
}

// group returns DescribeAutoScalingGroups' answer for name.
func (e *env) group(t *testing.T, name string) types.AutoScalingGroup {
	t.Helper()
	out, err := e.c.DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}})
	if err != nil {
		t.Fatalf("DescribeAutoScalingGroups: %v", err)
	}
	if len(out.AutoScalingGroups) != 1 {
		t.Fatalf("DescribeAutoScalingGroups %s: %d groups, want 1", name, len(out.AutoScalingGroups))
	}
	return out.AutoScalingGroups[0]
}

// sizes returns min, desired and max of group name as the API reports them.
func (e *env) sizes(t *testing.T, name string) [3]int32 {
	t.Helper()
	g := e.group(t, name)
	return [3]int32{aws.ToInt32(g.MinSize), aws.ToInt32(g.DesiredCapacity), aws.ToInt32(g.MaxSize)}
}

func (e *env) wait(t *testing.T, id, want string) {
	t.Helper()
	if err := e.sim.WaitLifecycle(ctx(t), id, want); err != nil {
		t.Fatal(err)
	}
}

// activity returns the scaling activity id as DescribeScalingActivities
// reports it.
func (e *env) activity(t *testing.T, id string) types.Activity {
	t.Helper()
	out, err := e.c.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{ActivityIds: []string{id}})
	if err != nil {
		t.Fatalf("DescribeScalingActivities: %v", err)
	}
	if len(out.Activities) != 1 {
		t.Fatalf("DescribeScalingActivities %s: %d activities, want 1", id, len(out.Activities))
	}
	return out.Activities[0]
}

// apiError returns err's code and message if it is a smithy.APIError.
func apiError(t *testing.T, err error) (string, string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) {
		t.Fatalf("%v (%T), want a smithy.APIError", err, err)
	}
	return ae.ErrorCode(), ae.ErrorMessage()
}

// wantValidation checks that err is AWS's ValidationError saying msg.
func wantValidation(t *testing.T, err error, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want ValidationError %q", msg)
	}
	code, got := apiError(t, err)
	if code != "ValidationError" || got != msg {
		t.Fatalf("%s %q, want ValidationError %q", code, got, msg)
	}
}

// seen is a transition as the recorder saw it.
type seen struct {
	asgsim.Transition
	stateInHook string // the instance's state per the server while the hook ran
	at          time.Time
}

// recorder is an OnTransition hook that records what it is called with and
// can hold a transition until the test releases it.
type recorder struct {
	sim atomic.Pointer[asgsim.Server]

	mu      sync.Mutex
	got     []seen
	gates   map[string]chan struct{} // by "From>To": the hook waits until it is closed
	entered chan string              // receives "id From>To" when a hook starts, if not nil
}

func newRecorder() *recorder { return &recorder{gates: map[string]chan struct{}{}} }

// hold makes the hooks for from → to wait until the returned func is called.
func (r *recorder) hold(from, to string) (release func()) {
	ch := make(chan struct{})
	r.mu.Lock()
	r.gates[from+">"+to] = ch
	r.mu.Unlock()
	var once sync.Once
	return func() { once.Do(func() { close(ch) }) }
}

func (r *recorder) hook(ctx context.Context, tr asgsim.Transition) {
	st := "unknown"
	if sim := r.sim.Load(); sim != nil {
		if in, ok := sim.Instance(tr.InstanceID); ok {
			st = in.LifecycleState
		}
	}
	r.mu.Lock()
	r.got = append(r.got, seen{Transition: tr, stateInHook: st, at: time.Now()})
	gate, entered := r.gates[tr.From+">"+tr.To], r.entered
	r.mu.Unlock()
	if entered != nil {
		select {
		case entered <- tr.InstanceID + " " + tr.From + ">" + tr.To:
		case <-ctx.Done():
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
		}
	}
}

// of returns the transitions seen for instance id, in order.
func (r *recorder) of(id string) []seen {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []seen
	for _, s := range r.got {
		if s.InstanceID == id {
			out = append(out, s)
		}
	}
	return slices.Clip(out)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// waitCount waits until the recorder has seen n transitions.
func (r *recorder) waitCount(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d transitions seen after 5s, want %d", r.count(), n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
