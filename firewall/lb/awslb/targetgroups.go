package awslb

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/firewall/lb"
)

// ELBv2 is what TargetGroups asks of the ELBv2 API (the SDK's client).
type ELBv2 interface {
	DescribeTargetGroups(context.Context, *elbv2.DescribeTargetGroupsInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupsOutput, error)
	DescribeTargetGroupAttributes(context.Context, *elbv2.DescribeTargetGroupAttributesInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupAttributesOutput, error)
	DescribeTargetHealth(context.Context, *elbv2.DescribeTargetHealthInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetHealthOutput, error)
	RegisterTargets(context.Context, *elbv2.RegisterTargetsInput, ...func(*elbv2.Options)) (*elbv2.RegisterTargetsOutput, error)
	DeregisterTargets(context.Context, *elbv2.DeregisterTargetsInput, ...func(*elbv2.Options)) (*elbv2.DeregisterTargetsOutput, error)
}

// Registration is one registration of this instance in a target group, as
// deregistration must name it again: a target registered with a port
// override is only removed by naming that port.
type Registration struct {
	TargetGroup string `json:"target_group"`
	ID          string `json:"id"`
	Port        int32  `json:"port"`
}

func (r Registration) String() string {
	return fmt.Sprintf("%s %s:%d", shortARN(r.TargetGroup), r.ID, r.Port)
}

// shortARN is a target group's name and id from its ARN, for messages.
func shortARN(arn string) string {
	if _, rest, ok := strings.Cut(arn, ":targetgroup/"); ok {
		return rest
	}
	return arn
}

// TargetGroups takes the instance out of ELBv2 target groups by
// deregistering every registration it has there, and back in by
// registering exactly those again; in an Auto Scaling group whose health
// check type is ELB it also puts the instance on Standby and back.
// Record says what TakeOut will change, for the state journal, before it
// changes anything; Restore gives it back to an agent that did not take
// the node out itself (a later exit, a restarted daemon, the break-glass).
type TargetGroups struct {
	// ARNs are the target groups to leave; empty with AutoTargetGroups:
	// those attached to the instance's Auto Scaling group.
	ARNs             []string
	AutoTargetGroups bool
	// Standby puts the instance on Standby in its Auto Scaling group, if
	// the group's health check type is ELB, with EnterStandby's
	// ShouldDecrementDesiredCapacity DecrementDesired.
	Standby, DecrementDesired bool
	// Connect returns this instance's id and the API clients; it is
	// called once, when first needed (never at start: the boot must not
	// depend on IMDS or the API).
	Connect func(ctx context.Context) (Clients, error)
	// Poll is how often target health is read while waiting (default 2s:
	// DescribeTargetHealth is rate limited per account).
	Poll time.Duration
	// MinHealthy is the capacity gate: the fewest healthy targets other
	// than this instance each group must keep when it leaves.
	MinHealthy MinHealthy
	// RecordTimeout bounds Record as a whole: its IMDS, Auto Scaling,
	// ELBv2 and EC2 reads, retries included (default 1m). pre holds the
	// phase lock meanwhile, and its context has no deadline of its own.
	RecordTimeout time.Duration

	mu       sync.Mutex
	clients  *Clients
	recorded Record
	known    bool            // recorded was set (by Record or Restore)
	zonal    map[string]bool // by target group ARN: cross-zone off (zonal's answer)
}

// Clients are this instance's id and zone and the APIs TargetGroups
// calls.
type Clients struct {
	InstanceID  string
	Zone        string // Availability Zone ("": the EC2 API's answer)
	ELBv2       ELBv2
	AutoScaling AutoScaling
	EC2         EC2 // the zones of instance targets, for a zonal capacity gate
	// Lifecycle is the instance's Auto Scaling lifecycle state from IMDS
	// (LifecycleState); nil asks the Auto Scaling API instead.
	Lifecycle func(ctx context.Context) (state string, inASG bool, err error)
}

// Record is what TakeOut changes and every put back undoes, as the state
// journal keeps it.
type Record struct {
	// TargetGroups are the groups left (the configured ones, or the Auto
	// Scaling group's), for the capacity gate's re-check.
	TargetGroups  []string       `json:"target_groups"`
	Registrations []Registration `json:"registrations"`
	Standby       *StandbyRecord `json:"standby,omitempty"`
}

// Connected returns a Connect for the instance of IMDS at endpoints.IMDS
// (IMDSv2) with ELBv2 and Auto Scaling clients at endpoints.ELBv2 and
// endpoints.AutoScaling (empty: AWS's).
func Connected(endpoints Endpoints) func(ctx context.Context) (Clients, error) {
	return func(ctx context.Context) (Clients, error) {
		metadata := NewIMDSClient(endpoints.IMDS)
		id, err := LookupIdentity(ctx, metadata)
		if err != nil {
			return Clients{}, err
		}
		cfg, err := LoadAWSConfig(ctx, id, endpoints)
		if err != nil {
			return Clients{}, err
		}
		return Clients{
			InstanceID:  id.InstanceID,
			Zone:        id.AvailabilityZone,
			ELBv2:       elbv2.NewFromConfig(cfg),
			AutoScaling: autoscaling.NewFromConfig(cfg),
			EC2:         ec2.NewFromConfig(cfg),
			Lifecycle:   func(ctx context.Context) (string, bool, error) { return LifecycleState(ctx, metadata) },
		}, nil
	}
}

func (t *TargetGroups) connect(ctx context.Context) (Clients, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.clients == nil {
		c, err := t.Connect(ctx)
		if err != nil {
			return Clients{}, err
		}
		t.clients = &c
	}
	return *t.clients, nil
}

// MinHealthy is a floor of healthy targets: Count of them, or Percent of
// the group's targets, rounded up. The targets are those ELB lists:
// registered, this one included, and draining ones too (out for patching
// or leaving), so that nodes leaving one after another do not shrink the
// floor as they go. A target past its deregistration delay is no longer
// listed and cannot be counted: nodes still out after their delay ended
// do shrink it (of 10 at 50%, a sixth node may leave once two of the
// first five have been out for longer than the delay). Count is the
// robust form.
type MinHealthy struct {
	Count, Percent int
}

// floor is the healthy targets a group of listed targets must keep.
func (m MinHealthy) floor(listed int) int {
	if m.Percent > 0 {
		return (m.Percent*listed + 99) / 100
	}
	return m.Count
}

func (m MinHealthy) String() string {
	if m.Percent > 0 {
		return fmt.Sprintf("%d%%", m.Percent)
	}
	return fmt.Sprint(m.Count)
}

// ErrCapacity means leaving would break the capacity gate.
var ErrCapacity = errors.New("capacity gate")

// gate checks that out (one group's targets) keeps its floor without
// this instance: its healthy targets other than this one, against the
// floor of all the targets listed, draining ones included (see
// MinHealthy), so the floor is the same before this instance leaves and
// after. Where the load balancer keeps requests in their zone (cross-zone
// off), only the targets in this instance's zone count.
func (t *TargetGroups) gate(ctx context.Context, c Clients, arn string, out *elbv2.DescribeTargetHealthOutput) error {
	inZone, where, err := t.zoneFilter(ctx, c, arn, out)
	if err != nil {
		return err
	}
	healthy, listed, draining := 0, 0, 0
	for _, d := range out.TargetHealthDescriptions {
		if d.TargetHealth == nil || d.Target == nil || !inZone(aws.ToString(d.Target.Id)) {
			continue
		}
		listed++
		switch d.TargetHealth.State {
		case types.TargetHealthStateEnumDraining:
			draining++
		case types.TargetHealthStateEnumHealthy:
			if aws.ToString(d.Target.Id) != c.InstanceID {
				healthy++
			}
		}
	}
	if draining > 0 {
		where += fmt.Sprintf(" (%d of them draining)", draining)
	}
	if floor := t.MinHealthy.floor(listed); healthy < floor {
		return fmt.Errorf("%w: taking this instance out of %s would leave %d healthy target(s) of %d registered%s, fewer than lb.aws.min_healthy %s (%d)",
			ErrCapacity, shortARN(arn), healthy, listed, where, t.MinHealthy, floor)
	}
	return nil
}

// zoneFilter says which targets of out the gate counts: all, or, where
// the group is zonal, those in this instance's zone (where names it, for
// the message). A gate of 0 asks nothing.
func (t *TargetGroups) zoneFilter(ctx context.Context, c Clients, arn string, out *elbv2.DescribeTargetHealthOutput) (func(id string) bool, string, error) {
	all := func(string) bool { return true }
	if t.MinHealthy == (MinHealthy{}) {
		return all, "", nil
	}
	t.mu.Lock()
	z, known := t.zonal[arn]
	t.mu.Unlock()
	if !known {
		var err error
		if z, err = zonal(ctx, c.ELBv2, arn); err != nil {
			return nil, "", err
		}
		t.mu.Lock()
		if t.zonal == nil {
			t.zonal = map[string]bool{}
		}
		t.zonal[arn] = z
		t.mu.Unlock()
	}
	if !z {
		return all, "", nil
	}
	zoneOf, err := zones(ctx, c.EC2, out)
	if err != nil {
		return nil, "", err
	}
	mine := c.Zone
	if mine == "" {
		mine = zoneOf[c.InstanceID]
	}
	if mine == "" {
		return nil, "", fmt.Errorf("%s keeps requests in their zone (cross-zone off), and this instance's zone is unknown", shortARN(arn))
	}
	return func(id string) bool { return zoneOf[id] == mine }, " in " + mine + " (cross-zone off)", nil
}

// Record finds every registration of this instance in the target groups
// and, in an Auto Scaling group, the Standby it will enter, and keeps them
// for TakeOut and PutBack; it returns them as JSON for the state journal.
// It changes nothing, and refuses a target group whose targets are not
// instances (ErrNotInstanceTargets), or when leaving would take a group
// below MinHealthy (ErrCapacity). carried is a record the last cycle
// could not put back (nil for none): its registrations in these groups
// and its Standby join the new record, so the end of this cycle puts them
// back (deregistering one that is not there is a no-op). It returns
// within RecordTimeout.
func (t *TargetGroups) Record(ctx context.Context, carried json.RawMessage) (json.RawMessage, error) {
	timeout := t.RecordTimeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rec, err := t.find(ctx, carried)
	if err != nil && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("gave up after %s: %w", timeout, err)
	}
	return rec, err
}

// find is Record's work, under its bound.
func (t *TargetGroups) find(ctx context.Context, carried json.RawMessage) (json.RawMessage, error) {
	var old Record
	if len(carried) > 0 {
		var err error
		if old, err = decodeRecord(carried); err != nil {
			return nil, fmt.Errorf("the last cycle's load balancer record: %w", err)
		}
	}
	c, err := t.connect(ctx)
	if err != nil {
		return nil, err
	}
	var asg *asgInstance
	if t.Standby || t.AutoTargetGroups {
		if asg, err = t.findGroup(ctx, c); err != nil {
			return nil, err
		}
	}
	rec := Record{TargetGroups: t.ARNs}
	if t.AutoTargetGroups {
		switch {
		case asg == nil:
			return nil, errors.New("lb.aws.target_groups is auto, but this instance is in no Auto Scaling group")
		case len(asg.targetGroupARNs) == 0:
			return nil, fmt.Errorf("lb.aws.target_groups is auto, but Auto Scaling group %s has no target group attached", asg.group)
		}
		rec.TargetGroups = slices.Clone(asg.targetGroupARNs)
	}
	for _, arn := range rec.TargetGroups {
		if err := instanceTargets(ctx, c.ELBv2, arn); err != nil {
			return nil, err
		}
	}
	for _, arn := range rec.TargetGroups {
		out, err := c.ELBv2.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
		if err != nil {
			return nil, fmt.Errorf("reading the targets of %s: %w", shortARN(arn), err)
		}
		if err := t.gate(ctx, c, arn, out); err != nil {
			return nil, err
		}
		for _, d := range out.TargetHealthDescriptions {
			if d.Target == nil || aws.ToString(d.Target.Id) != c.InstanceID {
				continue
			}
			if d.TargetHealth != nil && d.TargetHealth.State == types.TargetHealthStateEnumDraining {
				continue // already leaving: not ours to put back
			}
			rec.Registrations = append(rec.Registrations, Registration{TargetGroup: arn, ID: c.InstanceID, Port: aws.ToInt32(d.Target.Port)})
		}
	}
	for _, r := range old.Registrations {
		if r.ID == c.InstanceID && slices.Contains(rec.TargetGroups, r.TargetGroup) && !slices.Contains(rec.Registrations, r) {
			rec.Registrations = append(rec.Registrations, r)
		}
	}
	if rec.Standby, err = t.planStandby(asg); err != nil {
		return nil, fmt.Errorf("%w: nothing was changed", err)
	}
	if rec.Standby == nil && old.Standby != nil && asg != nil && asg.group == old.Standby.Group {
		rec.Standby = old.Standby // still on Standby, or its minimum size not restored, from the last cycle
	}
	t.mu.Lock()
	t.recorded, t.known = rec, true
	t.mu.Unlock()
	return json.Marshal(rec)
}

// ErrNotInstanceTargets means a target group registers its targets by IP
// address (or is a Lambda's or an ALB's): patchagent finds, deregisters
// and registers this instance by its id, so it would never find it there,
// and the load balancer would keep routing to the node through the block.
var ErrNotInstanceTargets = errors.New("not instance targets")

// instanceTargets refuses target group arn unless its target type is
// instance.
func instanceTargets(ctx context.Context, api ELBv2, arn string) error {
	out, err := api.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arn}})
	if err != nil {
		return fmt.Errorf("reading target group %s: %w", shortARN(arn), err)
	}
	if len(out.TargetGroups) == 0 {
		return fmt.Errorf("target group %s does not exist", shortARN(arn))
	}
	if tt := out.TargetGroups[0].TargetType; tt != types.TargetTypeEnumInstance {
		return fmt.Errorf("%w: target group %s has target type %q: patchagent registers instance targets only (it finds, deregisters and registers this instance by its id); "+
			"for a group of ip targets, point its health check at the readiness endpoint (lb.health_listen) instead of lb.aws", ErrNotInstanceTargets, shortARN(arn), tt)
	}
	return nil
}

// decodeRecord reads a Record, or the list of registrations the first
// versions journaled.
func decodeRecord(b json.RawMessage) (Record, error) {
	var rec Record
	if t := strings.TrimSpace(string(b)); strings.HasPrefix(t, "[") {
		err := json.Unmarshal(b, &rec.Registrations)
		for _, r := range rec.Registrations {
			if !slices.Contains(rec.TargetGroups, r.TargetGroup) {
				rec.TargetGroups = append(rec.TargetGroups, r.TargetGroup)
			}
		}
		return rec, err
	}
	err := json.Unmarshal(b, &rec)
	return rec, err
}

// Restore makes rec (from Record) what PutBack undoes.
func (t *TargetGroups) Restore(rec json.RawMessage) error {
	r, err := decodeRecord(rec)
	if err != nil {
		return fmt.Errorf("the recorded target group registrations: %w", err)
	}
	t.mu.Lock()
	t.recorded, t.known = r, true
	t.mu.Unlock()
	return nil
}

func (t *TargetGroups) record() (Record, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.known {
		return Record{}, errors.New("no record of this instance's target group registrations (Record before TakeOut; the state journal before PutBack)")
	}
	r := t.recorded
	r.Registrations = slices.Clone(r.Registrations)
	return r, nil
}

// TakeOut deregisters every recorded registration and waits, up to
// deadline, until each target group reports it draining (ELB sends it no
// new request from then on). It does not wait for the draining to end: an
// idle target shows draining for the whole deregistration delay; the
// agent's own drain sees the LB's connections end. Once the capacity gate
// still holds, it puts the instance on Standby if recorded.
func (t *TargetGroups) TakeOut(ctx context.Context, deadline time.Duration) (lb.Wait, error) {
	start := time.Now()
	rec, err := t.record()
	if err != nil {
		return lb.Wait{}, err
	}
	if len(rec.Registrations) == 0 && rec.Standby == nil {
		return lb.Wait{NotIn: true, By: fmt.Sprintf("not registered in any of %d target group(s): nothing to deregister", len(rec.TargetGroups))}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	c, err := t.connect(ctx)
	if err != nil {
		return lb.Wait{}, err
	}
	regs := rec.Registrations
	for _, r := range regs {
		if _, err := c.ELBv2.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(r.TargetGroup), Targets: target(r)}); err != nil {
			return lb.Wait{Took: time.Since(start)}, fmt.Errorf("deregistering %s: %w", r, err)
		}
	}
	err = t.wait(ctx, c.ELBv2, regs, deadline, "draining", func(s types.TargetHealthStateEnum) bool {
		return s == types.TargetHealthStateEnumDraining || s == types.TargetHealthStateEnumUnused
	})
	if err == nil {
		err = t.recheck(ctx, c, rec)
	}
	if err == nil && rec.Standby != nil {
		err = enterStandby(ctx, c, rec.Standby)
	}
	by := fmt.Sprintf("%d target group registration(s) draining", len(regs))
	if rec.Standby != nil {
		by += ", " + rec.Standby.String()
	}
	return lb.Wait{By: by, Took: time.Since(start)}, err
}

// recheck is the capacity gate again once this instance is out: another
// node that passed the gate at the same time may have left too. Then this
// one steps back in (registers again, not waited for) and says so.
func (t *TargetGroups) recheck(ctx context.Context, c Clients, rec Record) error {
	for _, arn := range rec.TargetGroups {
		out, err := c.ELBv2.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
		if err != nil {
			return fmt.Errorf("reading the targets of %s again after leaving: %w", shortARN(arn), err)
		}
		if err := t.gate(ctx, c, arn, out); err != nil {
			if rerr := register(ctx, c.ELBv2, rec.Registrations); rerr != nil {
				return fmt.Errorf("%w, and stepping back in failed: %w", err, rerr)
			}
			return fmt.Errorf("%w (another node left at the same time): this instance stepped back in", err)
		}
	}
	return nil
}

// PutBack takes the instance out of Standby if recorded, registers every
// recorded registration again and waits, up to deadline, until each
// target group reports it healthy (the LB routes to it) and the Auto
// Scaling group has it InService; then it restores the group's minimum
// size if pre lowered it.
func (t *TargetGroups) PutBack(ctx context.Context, deadline time.Duration) (lb.Wait, error) {
	start := time.Now()
	rec, err := t.record()
	if err != nil {
		return lb.Wait{}, err
	}
	if len(rec.Registrations) == 0 && rec.Standby == nil {
		return lb.Wait{NotIn: true, By: "no target group registration recorded: nothing to register"}, nil
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	c, err := t.connect(ctx)
	if err != nil {
		return lb.Wait{}, err
	}
	w := lb.Wait{By: fmt.Sprintf("%d target group registration(s) healthy", len(rec.Registrations))}
	if rec.Standby != nil {
		w.By += ", InService in Auto Scaling group " + rec.Standby.Group
		if err := exitStandby(ctx, c, rec.Standby, t.poll(), false); err != nil {
			w.Took = time.Since(start)
			return w, err
		}
	}
	if err := register(ctx, c.ELBv2, rec.Registrations); err != nil {
		w.Took = time.Since(start)
		return w, err
	}
	err = t.wait(ctx, c.ELBv2, rec.Registrations, deadline, "healthy", func(s types.TargetHealthStateEnum) bool { return s == types.TargetHealthStateEnumHealthy })
	if err == nil && rec.Standby != nil {
		if err = exitStandby(ctx, c, rec.Standby, t.poll(), true); err == nil {
			err = restoreMinSize(ctx, c, rec.Standby)
		}
	}
	if err == nil {
		t.forget() // put back: a later exit with no cycle open has nothing to register
	}
	w.Took = time.Since(start)
	return w, err
}

// forget drops the record once it is put back.
func (t *TargetGroups) forget() {
	t.mu.Lock()
	t.recorded, t.known = Record{}, false
	t.mu.Unlock()
}

func register(ctx context.Context, api ELBv2, regs []Registration) error {
	for _, r := range regs {
		if _, err := api.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(r.TargetGroup), Targets: target(r)}); err != nil {
			return fmt.Errorf("registering %s: %w", r, err)
		}
	}
	return nil
}

// SetOut(false) puts the recorded registrations and Standby back without
// waiting (the break-glass; best effort, 10 s: an instance still
// EnteringStandby stays there). SetOut(true) does nothing: the boot never
// deregisters or re-registers, the journal says what pre did.
func (t *TargetGroups) SetOut(out bool) {
	if out {
		return
	}
	rec, err := t.record()
	if err != nil || len(rec.Registrations) == 0 && rec.Standby == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := t.connect(ctx)
	if err != nil {
		return
	}
	if rec.Standby != nil {
		if err := exitStandby(ctx, c, rec.Standby, t.poll(), false); err != nil {
			return
		}
	}
	if register(ctx, c.ELBv2, rec.Registrations) != nil {
		return
	}
	if rec.Standby != nil && restoreMinSize(ctx, c, rec.Standby) != nil {
		return
	}
	t.forget()
}

func (t *TargetGroups) poll() time.Duration {
	if t.Poll <= 0 {
		return 2 * time.Second
	}
	return t.Poll
}

func target(r Registration) []types.TargetDescription {
	return []types.TargetDescription{{Id: aws.String(r.ID), Port: aws.Int32(r.Port)}}
}

// wait polls each registration's health until done says so for all, or
// the deadline: its error names every one not there, with ELB's reason.
func (t *TargetGroups) wait(ctx context.Context, api ELBv2, regs []Registration, deadline time.Duration, want string, done func(types.TargetHealthStateEnum) bool) error {
	seen := map[Registration]string{} // the last state read of each, for the error
	var pending []string
	err := lb.Poll(ctx, t.poll(), func() (bool, error) {
		pending = nil
		for _, r := range regs {
			out, err := api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(r.TargetGroup), Targets: target(r)})
			if err != nil {
				if last, ok := seen[r]; ok && ctx.Err() != nil {
					pending = append(pending, last) // cut by the deadline: what ELB said last
				} else {
					pending = append(pending, fmt.Sprintf("%s: %v", r, err))
				}
				continue
			}
			if st, why := health(out); !done(st) {
				seen[r] = fmt.Sprintf("%s %s%s", r, st, why)
				pending = append(pending, seen[r])
			}
		}
		return len(pending) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("%w: not %s within %s: %s", lb.ErrNotConfirmed, want, deadline, strings.Join(pending, "; "))
	}
	return nil
}

// health is the state of the one target DescribeTargetHealth was asked
// about, and ELB's reason for it (" (Reason: description)").
func health(out *elbv2.DescribeTargetHealthOutput) (types.TargetHealthStateEnum, string) {
	if len(out.TargetHealthDescriptions) == 0 || out.TargetHealthDescriptions[0].TargetHealth == nil {
		return types.TargetHealthStateEnumUnused, ""
	}
	h := out.TargetHealthDescriptions[0].TargetHealth
	if h.Reason == "" {
		return h.State, ""
	}
	return h.State, fmt.Sprintf(" (%s: %s)", h.Reason, aws.ToString(h.Description))
}
