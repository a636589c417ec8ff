package asgsim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// APIVersion is the Auto Scaling API version the server speaks; requests
// naming another are refused, as AWS does.
const APIVersion = "2011-01-01"

// Namespace is the XML namespace of every response.
const Namespace = "http://autoscaling.amazonaws.com/doc/2011-01-01/"

// Lifecycle states of an instance, as the API reports them.
const (
	InService       = "InService"
	EnteringStandby = "EnteringStandby"
	Standby         = "Standby"
	Pending         = "Pending"
)

// Health statuses of an instance, as DescribeAutoScalingGroups reports them
// (DescribeAutoScalingInstances upper-cases them).
const (
	Healthy   = "Healthy"
	Unhealthy = "Unhealthy"
)

// Health-check types of a group.
const (
	HealthCheckEC2 = "EC2"
	HealthCheckELB = "ELB"
)

// Defaults for zero configuration fields.
const (
	DefaultZone         = "us-east-1a"
	DefaultInstanceType = "t3.micro"
	// DefaultWaitTimeout bounds WaitLifecycle when its context has no
	// deadline.
	DefaultWaitTimeout = 10 * time.Second
	// CloseTimeout bounds how long Close waits for transitions in flight
	// (that is, for OnTransition hooks to return once their context ends).
	CloseTimeout = 5 * time.Second
)

// Instance configures one instance of a group.
type Instance struct {
	// ID is the EC2 instance id (required, unique across the server).
	ID string
	// AvailabilityZone is the instance's zone (default "us-east-1a").
	AvailabilityZone string
	// InstanceType is reported by the Describe actions (default "t3.micro").
	InstanceType string
	// LifecycleState is the initial state: InService (the default) or
	// Standby, for a test that starts with an instance already on standby.
	LifecycleState string
	// HealthStatus is Healthy (the default) or Unhealthy.
	HealthStatus string
}

// Group configures one Auto Scaling group.
type Group struct {
	// Name is the group's name (required, at most 255 characters, unique).
	Name string
	// ARN identifies the group. Empty derives one from Name, in account
	// 123456789012 and region us-east-1.
	ARN string
	// MinSize, MaxSize and DesiredCapacity are the group's sizes; New
	// requires 0 ≤ MinSize ≤ DesiredCapacity ≤ MaxSize.
	MinSize, MaxSize, DesiredCapacity int32
	// HealthCheckType is HealthCheckEC2 (the default) or HealthCheckELB.
	HealthCheckType string
	// TargetGroupARNs are the ELBv2 target groups attached to the group; they
	// are reported by DescribeAutoScalingGroups and passed to OnTransition.
	TargetGroupARNs []string
	// Instances are the group's instances.
	Instances []Instance
	// OnTransition, if not nil, is called at each lifecycle change of one of
	// the group's instances caused by EnterStandby or ExitStandby:
	// InService → EnteringStandby, EnteringStandby → Standby,
	// Standby → Pending and Pending → InService, in that order for an
	// instance. It runs on a goroutine of its own, without any lock held (it
	// may call the API), after the new state is visible. The intermediate
	// state's delay starts only when the hook for entering it returns, so a
	// hook that deregisters the instance from its target groups and waits
	// for the draining keeps it EnteringStandby meanwhile, as a real group
	// does. ctx ends at Close; the hook must then return promptly.
	OnTransition func(ctx context.Context, t Transition)
}

// Transition is one lifecycle change of an instance, as OnTransition sees it.
type Transition struct {
	Group, GroupARN  string
	TargetGroupARNs  []string
	InstanceID       string
	AvailabilityZone string
	From, To         string
	// ActivityID is the scaling activity that caused the change.
	ActivityID string
}

// Options configures a Server.
type Options struct {
	// Groups are the groups the service knows; there is no
	// CreateAutoScalingGroup.
	Groups []Group
	// TransitionDelay is how long an instance stays EnteringStandby or
	// Pending (after the OnTransition hook for that state returns). Zero
	// moves it on at once; the intermediate state is still visible between
	// the call and the move.
	TransitionDelay time.Duration
}

// InstanceState is a snapshot of one instance.
type InstanceState struct {
	ID, Group, AvailabilityZone, InstanceType string
	LifecycleState, HealthStatus              string
}

// GroupState is a snapshot of one group.
type GroupState struct {
	Name, ARN                         string
	MinSize, MaxSize, DesiredCapacity int32
	HealthCheckType                   string
	// Launched counts the replacements the group would have launched for
	// instances put on standby without decrementing the desired capacity.
	Launched  int
	Instances []InstanceState
}

// Server simulates the Auto Scaling service. It is the http.Handler of the
// API (see ServeHTTP). Close it to stop the transitions in flight.
type Server struct {
	delay     time.Duration
	created   time.Time
	groups    map[string]*group    // by name; the set is fixed after New
	order     []*group             // as configured
	instances map[string]*instance // by id; the set is fixed after New

	ctx    context.Context // ends at Close; given to hooks
	cancel context.CancelFunc
	wg     sync.WaitGroup // transition goroutines

	api *awsquery.API // the query protocol, FailNext and Calls; dispatches to actions

	mu         sync.Mutex // guards everything below and the mutable state of groups and instances
	closed     bool
	changed    chan struct{} // closed and replaced at every state change
	activities []*activity   // oldest first
}

type group struct {
	name, arn string
	tgARNs    []string // immutable
	hook      func(context.Context, Transition)

	min, max, desired int32
	healthCheckType   string
	launched          int
	instances         []*instance // as configured
}

type instance struct {
	id, zone, itype string
	group           *group

	state, health string
}

type activity struct {
	id                          string
	group                       *group
	description, cause, details string
	start, end                  time.Time
	status                      string
	progress                    int32
}

// New returns a server for opts. It starts nothing.
func New(opts Options) (*Server, error) {
	if opts.TransitionDelay < 0 {
		return nil, fmt.Errorf("asgsim: transition delay %s must not be negative", opts.TransitionDelay)
	}
	s := &Server{
		delay:     opts.TransitionDelay,
		created:   time.Now().UTC().Truncate(time.Millisecond),
		groups:    map[string]*group{},
		instances: map[string]*instance{},
		changed:   make(chan struct{}),
	}
	s.api = &awsquery.API{
		Version:   APIVersion,
		Namespace: Namespace,
		Actions:   slices.Sorted(maps.Keys(actions)),
		Dispatch:  s.dispatch,
	}
	arns := map[string]bool{}
	for i, cfg := range opts.Groups {
		g, err := newGroup(cfg)
		if err != nil {
			return nil, fmt.Errorf("asgsim: group %d (%q): %w", i, cfg.Name, err)
		}
		if s.groups[g.name] != nil || arns[g.arn] {
			return nil, fmt.Errorf("asgsim: group %d: name %q or ARN %q is already used", i, g.name, g.arn)
		}
		for _, in := range g.instances {
			if s.instances[in.id] != nil {
				return nil, fmt.Errorf("asgsim: group %d (%q): instance %q is already in group %q", i, g.name, in.id, s.instances[in.id].group.name)
			}
			s.instances[in.id] = in
		}
		s.groups[g.name] = g
		arns[g.arn] = true
		s.order = append(s.order, g)
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s, nil
}

// newGroup validates cfg and fills in its defaults.
func newGroup(cfg Group) (*group, error) {
	var errs []error
	if cfg.Name == "" || len(cfg.Name) > 255 {
		errs = append(errs, fmt.Errorf("name %q must have 1 to 255 characters", cfg.Name))
	}
	if cfg.MinSize < 0 || cfg.MinSize > cfg.DesiredCapacity || cfg.DesiredCapacity > cfg.MaxSize {
		errs = append(errs, fmt.Errorf("sizes min %d, desired %d, max %d must satisfy 0 ≤ min ≤ desired ≤ max", cfg.MinSize, cfg.DesiredCapacity, cfg.MaxSize))
	}
	if cfg.HealthCheckType == "" {
		cfg.HealthCheckType = HealthCheckEC2
	}
	if cfg.HealthCheckType != HealthCheckEC2 && cfg.HealthCheckType != HealthCheckELB {
		errs = append(errs, fmt.Errorf("health-check type %q is neither %s nor %s", cfg.HealthCheckType, HealthCheckEC2, HealthCheckELB))
	}
	if cfg.ARN == "" {
		h := fnv.New128a()
		h.Write([]byte(cfg.Name))
		b := h.Sum(nil)
		cfg.ARN = fmt.Sprintf("arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:%x-%x-%x-%x-%x:autoScalingGroupName/%s", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16], cfg.Name)
	}
	g := &group{
		name:            cfg.Name,
		arn:             cfg.ARN,
		tgARNs:          slices.Clone(cfg.TargetGroupARNs),
		hook:            cfg.OnTransition,
		min:             cfg.MinSize,
		max:             cfg.MaxSize,
		desired:         cfg.DesiredCapacity,
		healthCheckType: cfg.HealthCheckType,
	}
	ids := map[string]bool{}
	for j, ic := range cfg.Instances {
		in := &instance{id: ic.ID, zone: ic.AvailabilityZone, itype: ic.InstanceType, group: g, state: ic.LifecycleState, health: ic.HealthStatus}
		if in.id == "" || len(in.id) > 19 || ids[in.id] {
			errs = append(errs, fmt.Errorf("instance %d: id %q must have 1 to 19 characters and be unique", j, in.id))
		}
		ids[in.id] = true
		if in.zone == "" {
			in.zone = DefaultZone
		}
		if in.itype == "" {
			in.itype = DefaultInstanceType
		}
		if in.state == "" {
			in.state = InService
		}
		if in.state != InService && in.state != Standby {
			errs = append(errs, fmt.Errorf("instance %q: initial lifecycle state %q is neither %s nor %s", in.id, in.state, InService, Standby))
		}
		if in.health == "" {
			in.health = Healthy
		}
		if in.health != Healthy && in.health != Unhealthy {
			errs = append(errs, fmt.Errorf("instance %q: health status %q is neither %s nor %s", in.id, in.health, Healthy, Unhealthy))
		}
		g.instances = append(g.instances, in)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return g, nil
}

// Close stops the transitions in flight, where they are: their hooks' context
// ends and no further state change happens. It waits for the transition
// goroutines for at most CloseTimeout and says so if some are still running
// (a hook that ignores its context). The API answers ServiceUnavailable
// afterwards.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	t := time.NewTimer(CloseTimeout)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		return fmt.Errorf("asgsim: transitions still running %s after Close: an OnTransition hook ignores its context", CloseTimeout)
	}
}

// GroupARN returns the ARN of the group called name (derived by New when the
// configuration gave none), or "" if there is no such group.
func (s *Server) GroupARN(name string) string {
	if g := s.groups[name]; g != nil {
		return g.arn
	}
	return ""
}

// Group returns a snapshot of the group called name.
func (s *Server) Group(name string) (GroupState, bool) {
	g := s.groups[name]
	if g == nil {
		return GroupState{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	st := GroupState{
		Name: g.name, ARN: g.arn,
		MinSize: g.min, MaxSize: g.max, DesiredCapacity: g.desired,
		HealthCheckType: g.healthCheckType,
		Launched:        g.launched,
	}
	for _, in := range g.instances {
		st.Instances = append(st.Instances, in.snapshot())
	}
	return st, true
}

// Instance returns a snapshot of the instance id.
func (s *Server) Instance(id string) (InstanceState, bool) {
	in := s.instances[id]
	if in == nil {
		return InstanceState{}, false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return in.snapshot(), true
}

// Call with s.mu held.
func (in *instance) snapshot() InstanceState {
	return InstanceState{ID: in.id, Group: in.group.name, AvailabilityZone: in.zone, InstanceType: in.itype, LifecycleState: in.state, HealthStatus: in.health}
}

// SetHealth sets the health status of instance id to Healthy or Unhealthy, as
// a health check would. Nothing else follows from it.
func (s *Server) SetHealth(id, status string) error {
	in := s.instances[id]
	if in == nil {
		return fmt.Errorf("asgsim: no instance %q", id)
	}
	if status != Healthy && status != Unhealthy {
		return fmt.Errorf("asgsim: health status %q is neither %s nor %s", status, Healthy, Unhealthy)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	in.health = status
	s.notify()
	return nil
}

// WaitLifecycle waits until instance id is in lifecycle state want. It gives
// up when ctx ends or, if ctx has no deadline, after DefaultWaitTimeout, and
// then says which state the instance is in.
func (s *Server) WaitLifecycle(ctx context.Context, id, want string) error {
	in := s.instances[id]
	if in == nil {
		return fmt.Errorf("asgsim: no instance %q", id)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultWaitTimeout)
		defer cancel()
	}
	for {
		s.mu.Lock()
		got, ch := in.state, s.changed
		s.mu.Unlock()
		if got == want {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("asgsim: instance %s is still %s, not %s: %w", id, got, want, ctx.Err())
		}
	}
}

// notify wakes every WaitLifecycle. Call with s.mu held.
func (s *Server) notify() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// startTransition moves in from its current state mid (already set) to
// final after the hook and the delay, on a goroutine of its own. from is the
// state before mid. Call with s.mu held and s.closed false.
func (s *Server) startTransition(in *instance, from, mid, final string, act *activity) {
	g := in.group
	t := Transition{
		Group: g.name, GroupARN: g.arn, TargetGroupARNs: slices.Clone(g.tgARNs),
		InstanceID: in.id, AvailabilityZone: in.zone, ActivityID: act.id,
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.callHook(g, t, from, mid)
		if s.delay > 0 {
			timer := time.NewTimer(s.delay)
			select {
			case <-timer.C:
			case <-s.ctx.Done():
				timer.Stop()
				return
			}
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		in.state = final
		act.status, act.progress, act.end = "Successful", 100, time.Now().UTC()
		s.notify()
		s.mu.Unlock()
		s.callHook(g, t, mid, final)
	}()
}

func (s *Server) callHook(g *group, t Transition, from, to string) {
	if g.hook == nil || s.ctx.Err() != nil {
		return
	}
	t.From, t.To = from, to
	t.TargetGroupARNs = slices.Clone(t.TargetGroupARNs)
	g.hook(s.ctx, t)
}

// FailNext makes the next n calls of action (e.g. "EnterStandby") answer e
// (for example awsquery.Throttling) instead of acting, after any faults
// already queued for it. The calls still count in Calls.
func (s *Server) FailNext(action string, n int, e awsquery.Error) error {
	return s.api.FailNext(action, n, e)
}

// Calls returns how many requests named action so far, failed ones included:
// with FailNext it shows how often the SDK retried.
func (s *Server) Calls(action string) int { return s.api.Calls(action) }
