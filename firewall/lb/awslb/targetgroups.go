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
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/firewall/lb"
)

// ELBv2 is what TargetGroups asks of the ELBv2 API (the SDK's client).
type ELBv2 interface {
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
// registering exactly those again. Record says what TakeOut will change,
// for the state journal, before it changes anything; Restore gives it back
// to an agent that did not take the node out itself (a later exit, a
// restarted daemon, the break-glass).
type TargetGroups struct {
	// ARNs are the target groups to leave.
	ARNs []string
	// Connect returns this instance's id and an API client; it is called
	// once, when first needed (never at start: the boot must not depend
	// on IMDS or the API).
	Connect func(ctx context.Context) (instanceID string, api ELBv2, err error)
	// Poll is how often target health is read while waiting (default 2s:
	// DescribeTargetHealth is rate limited per account).
	Poll time.Duration
	// MinHealthy is the capacity gate: the fewest healthy targets other
	// than this instance each group must keep when it leaves.
	MinHealthy MinHealthy

	mu       sync.Mutex
	id       string
	api      ELBv2
	recorded []Registration
	known    bool // recorded was set (by Record or Restore)
}

// Connected returns a Connect for the instance of IMDS at endpoints.IMDS
// (IMDSv2) with an ELBv2 client at endpoints.ELBv2 (empty: AWS's).
func Connected(endpoints Endpoints) func(ctx context.Context) (string, ELBv2, error) {
	return func(ctx context.Context) (string, ELBv2, error) {
		id, err := LookupIdentity(ctx, NewIMDSClient(endpoints.IMDS))
		if err != nil {
			return "", nil, err
		}
		cfg, err := LoadAWSConfig(ctx, id, endpoints)
		if err != nil {
			return "", nil, err
		}
		return id.InstanceID, elbv2.NewFromConfig(cfg), nil
	}
}

func (t *TargetGroups) connect(ctx context.Context) (string, ELBv2, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.api == nil {
		id, api, err := t.Connect(ctx)
		if err != nil {
			return "", nil, err
		}
		t.id, t.api = id, api
	}
	return t.id, t.api, nil
}

// MinHealthy is a floor of healthy targets: Count of them, or Percent of
// the group's registered targets (this one included), rounded up.
type MinHealthy struct {
	Count, Percent int
}

// floor is the healthy targets a group of registered targets must keep.
func (m MinHealthy) floor(registered int) int {
	if m.Percent > 0 {
		return (m.Percent*registered + 99) / 100
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
// this instance: its healthy targets other than id, against the floor of
// its registered ones (not draining; this instance's count whatever their
// state, so the floor is the same before it leaves and after).
func (t *TargetGroups) gate(arn, id string, out *elbv2.DescribeTargetHealthOutput) error {
	healthy, registered := 0, 0
	for _, d := range out.TargetHealthDescriptions {
		if d.TargetHealth == nil || d.Target == nil ||
			d.TargetHealth.State == types.TargetHealthStateEnumDraining && aws.ToString(d.Target.Id) != id {
			continue
		}
		registered++
		if aws.ToString(d.Target.Id) != id && d.TargetHealth.State == types.TargetHealthStateEnumHealthy {
			healthy++
		}
	}
	if floor := t.MinHealthy.floor(registered); healthy < floor {
		return fmt.Errorf("%w: taking this instance out of %s would leave %d healthy target(s) of %d registered, fewer than lb.aws.min_healthy %s (%d)",
			ErrCapacity, shortARN(arn), healthy, registered, t.MinHealthy, floor)
	}
	return nil
}

// Record finds every registration of this instance in the target groups
// and keeps it for TakeOut and PutBack; it returns it as JSON for the
// state journal. It changes nothing, and refuses (ErrCapacity) when
// leaving would take a group below MinHealthy. carried is a record the
// last cycle could not put back (nil for none): its registrations in
// these groups join the new record, so the end of this cycle puts them
// back (deregistering one that is not there is a no-op).
func (t *TargetGroups) Record(ctx context.Context, carried json.RawMessage) (json.RawMessage, error) {
	var old []Registration
	if len(carried) > 0 {
		if err := json.Unmarshal(carried, &old); err != nil {
			return nil, fmt.Errorf("the last cycle's target group registrations: %w", err)
		}
	}
	id, api, err := t.connect(ctx)
	if err != nil {
		return nil, err
	}
	var regs []Registration
	for _, arn := range t.ARNs {
		out, err := api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
		if err != nil {
			return nil, fmt.Errorf("reading the targets of %s: %w", shortARN(arn), err)
		}
		if err := t.gate(arn, id, out); err != nil {
			return nil, err
		}
		for _, d := range out.TargetHealthDescriptions {
			if d.Target == nil || aws.ToString(d.Target.Id) != id {
				continue
			}
			if d.TargetHealth != nil && d.TargetHealth.State == types.TargetHealthStateEnumDraining {
				continue // already leaving: not ours to put back
			}
			regs = append(regs, Registration{TargetGroup: arn, ID: id, Port: aws.ToInt32(d.Target.Port)})
		}
	}
	for _, r := range old {
		if r.ID == id && slices.Contains(t.ARNs, r.TargetGroup) && !slices.Contains(regs, r) {
			regs = append(regs, r)
		}
	}
	t.mu.Lock()
	t.recorded, t.known = regs, true
	t.mu.Unlock()
	return json.Marshal(regs)
}

// Restore makes rec (from Record) what PutBack registers again.
func (t *TargetGroups) Restore(rec json.RawMessage) error {
	var regs []Registration
	if err := json.Unmarshal(rec, &regs); err != nil {
		return fmt.Errorf("the recorded target group registrations: %w", err)
	}
	t.mu.Lock()
	t.recorded, t.known = regs, true
	t.mu.Unlock()
	return nil
}

func (t *TargetGroups) registrations() ([]Registration, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.known {
		return nil, errors.New("no record of this instance's target group registrations (Record before TakeOut; the state journal before PutBack)")
	}
	return slices.Clone(t.recorded), nil
}

// TakeOut deregisters every recorded registration and waits, up to
// deadline, until each target group reports it draining (ELB sends it no
// new request from then on). It does not wait for the draining to end: an
// idle target shows draining for the whole deregistration delay; the
// agent's own drain sees the LB's connections end.
func (t *TargetGroups) TakeOut(ctx context.Context, deadline time.Duration) (lb.Wait, error) {
	start := time.Now()
	regs, err := t.registrations()
	if err != nil {
		return lb.Wait{}, err
	}
	if len(regs) == 0 {
		return lb.Wait{NotIn: true, By: fmt.Sprintf("not registered in any of %d target group(s): nothing to deregister", len(t.ARNs))}, nil
	}
	_, api, err := t.connect(ctx)
	if err != nil {
		return lb.Wait{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	for _, r := range regs {
		if _, err := api.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(r.TargetGroup), Targets: target(r)}); err != nil {
			return lb.Wait{Took: time.Since(start)}, fmt.Errorf("deregistering %s: %w", r, err)
		}
	}
	err = t.wait(ctx, api, regs, deadline, "draining", func(s types.TargetHealthStateEnum) bool {
		return s == types.TargetHealthStateEnumDraining || s == types.TargetHealthStateEnumUnused
	})
	if err == nil {
		err = t.recheck(ctx, api, regs)
	}
	return lb.Wait{By: fmt.Sprintf("%d target group registration(s) draining", len(regs)), Took: time.Since(start)}, err
}

// recheck is the capacity gate again once this instance is out: another
// node that passed the gate at the same time may have left too. Then this
// one steps back in (registers again, not waited for) and says so.
func (t *TargetGroups) recheck(ctx context.Context, api ELBv2, regs []Registration) error {
	for _, arn := range t.ARNs {
		out, err := api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
		if err != nil {
			return fmt.Errorf("reading the targets of %s again after leaving: %w", shortARN(arn), err)
		}
		if err := t.gate(arn, regs[0].ID, out); err != nil {
			if rerr := register(ctx, api, regs); rerr != nil {
				return fmt.Errorf("%w, and stepping back in failed: %w", err, rerr)
			}
			return fmt.Errorf("%w (another node left at the same time): this instance stepped back in", err)
		}
	}
	return nil
}

// PutBack registers every recorded registration again and waits, up to
// deadline, until each target group reports it healthy (the LB routes to
// it).
func (t *TargetGroups) PutBack(ctx context.Context, deadline time.Duration) (lb.Wait, error) {
	start := time.Now()
	regs, err := t.registrations()
	if err != nil {
		return lb.Wait{}, err
	}
	if len(regs) == 0 {
		return lb.Wait{NotIn: true, By: "no target group registration recorded: nothing to register"}, nil
	}
	_, api, err := t.connect(ctx)
	if err != nil {
		return lb.Wait{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	if err := register(ctx, api, regs); err != nil {
		return lb.Wait{Took: time.Since(start)}, err
	}
	err = t.wait(ctx, api, regs, deadline, "healthy", func(s types.TargetHealthStateEnum) bool { return s == types.TargetHealthStateEnumHealthy })
	if err == nil {
		t.forget() // put back: a later exit with no cycle open has nothing to register
	}
	return lb.Wait{By: fmt.Sprintf("%d target group registration(s) healthy", len(regs)), Took: time.Since(start)}, err
}

// forget drops the record once it is put back.
func (t *TargetGroups) forget() {
	t.mu.Lock()
	t.recorded, t.known = nil, false
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

// SetOut(false) registers the recorded registrations again without
// waiting (the break-glass; best effort, 10 s). SetOut(true) does nothing:
// the boot never deregisters or re-registers, the journal says what pre
// did.
func (t *TargetGroups) SetOut(out bool) {
	if out {
		return
	}
	regs, err := t.registrations()
	if err != nil || len(regs) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, api, err := t.connect(ctx); err == nil && register(ctx, api, regs) == nil {
		t.forget()
	}
}

func target(r Registration) []types.TargetDescription {
	return []types.TargetDescription{{Id: aws.String(r.ID), Port: aws.Int32(r.Port)}}
}

// wait polls each registration's health until done says so for all, or
// the deadline: its error names every one not there, with ELB's reason.
func (t *TargetGroups) wait(ctx context.Context, api ELBv2, regs []Registration, deadline time.Duration, want string, done func(types.TargetHealthStateEnum) bool) error {
	poll := t.Poll
	if poll <= 0 {
		poll = 2 * time.Second
	}
	seen := map[Registration]string{} // the last state read of each, for the error
	for {
		var pending []string
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
		if len(pending) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: not %s within %s: %s", lb.ErrNotConfirmed, want, deadline, strings.Join(pending, "; "))
		case <-time.After(poll):
		}
	}
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
