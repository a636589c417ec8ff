package awslb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	astypes "github.com/aws/aws-sdk-go-v2/service/autoscaling/types"
	"github.com/patchagent/patchagent/firewall/lb"
)

// AutoScaling is what TargetGroups asks of the Auto Scaling API (the SDK's
// client).
type AutoScaling interface {
	DescribeAutoScalingInstances(context.Context, *autoscaling.DescribeAutoScalingInstancesInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingInstancesOutput, error)
	DescribeAutoScalingGroups(context.Context, *autoscaling.DescribeAutoScalingGroupsInput, ...func(*autoscaling.Options)) (*autoscaling.DescribeAutoScalingGroupsOutput, error)
	EnterStandby(context.Context, *autoscaling.EnterStandbyInput, ...func(*autoscaling.Options)) (*autoscaling.EnterStandbyOutput, error)
	ExitStandby(context.Context, *autoscaling.ExitStandbyInput, ...func(*autoscaling.Options)) (*autoscaling.ExitStandbyOutput, error)
	UpdateAutoScalingGroup(context.Context, *autoscaling.UpdateAutoScalingGroupInput, ...func(*autoscaling.Options)) (*autoscaling.UpdateAutoScalingGroupOutput, error)
}

// Lifecycle states of an Auto Scaling instance, as the API names them.
const (
	inService       = string(astypes.LifecycleStateInService)
	enteringStandby = string(astypes.LifecycleStateEnteringStandby)
	standby         = string(astypes.LifecycleStateStandby)
	pending         = string(astypes.LifecycleStatePending)
)

// StandbyRecord is what pre changes in the instance's Auto Scaling group,
// for the state journal: it puts the instance on Standby (so the group
// neither replaces it while the app is down nor routes to it) and, when
// the desired capacity cannot drop below the minimum size, lowers that
// first. Every put back restores both.
type StandbyRecord struct {
	Group string `json:"group"`
	// Decrement is EnterStandby's ShouldDecrementDesiredCapacity.
	Decrement bool `json:"decrement_desired_capacity"`
	// MinSize is the minimum size change pre makes, if any.
	MinSize *MinSizeChange `json:"min_size,omitempty"`
}

// MinSizeChange lowers a group's minimum size From → To for the patch.
type MinSizeChange struct {
	From int32 `json:"from"`
	To   int32 `json:"to"`
}

func (r StandbyRecord) String() string {
	s := "Standby in Auto Scaling group " + r.Group
	if r.MinSize != nil {
		s += fmt.Sprintf(" (min size %d → %d)", r.MinSize.From, r.MinSize.To)
	}
	return s
}

// asgInstance is this instance in its Auto Scaling group, as the API says.
type asgInstance struct {
	group                 string
	state                 string // lifecycle
	healthCheckType       string
	minSize, desired, max int32
	targetGroupARNs       []string
}

// findGroup returns this instance's Auto Scaling group, or nil when IMDS
// says it is in none (then no Auto Scaling call is made, so the instance
// profile needs no Auto Scaling permission).
func (t *TargetGroups) findGroup(ctx context.Context, c Clients) (*asgInstance, error) {
	if c.Lifecycle != nil {
		_, inASG, err := c.Lifecycle(ctx)
		if err != nil {
			return nil, err
		}
		if !inASG {
			return nil, nil
		}
	}
	if c.AutoScaling == nil {
		return nil, errors.New("no Auto Scaling client")
	}
	out, err := c.AutoScaling.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{c.InstanceID}})
	if err != nil {
		return nil, fmt.Errorf("reading this instance's Auto Scaling group: %w", err)
	}
	if len(out.AutoScalingInstances) == 0 {
		return nil, nil
	}
	in := out.AutoScalingInstances[0]
	g, err := describeGroup(ctx, c.AutoScaling, aws.ToString(in.AutoScalingGroupName))
	if err != nil {
		return nil, err
	}
	return &asgInstance{
		group:           aws.ToString(g.AutoScalingGroupName),
		state:           aws.ToString(in.LifecycleState),
		healthCheckType: aws.ToString(g.HealthCheckType),
		minSize:         aws.ToInt32(g.MinSize),
		desired:         aws.ToInt32(g.DesiredCapacity),
		max:             aws.ToInt32(g.MaxSize),
		targetGroupARNs: g.TargetGroupARNs,
	}, nil
}

func describeGroup(ctx context.Context, api AutoScaling, name string) (astypes.AutoScalingGroup, error) {
	out, err := api.DescribeAutoScalingGroups(ctx, &autoscaling.DescribeAutoScalingGroupsInput{AutoScalingGroupNames: []string{name}})
	if err != nil {
		return astypes.AutoScalingGroup{}, fmt.Errorf("reading Auto Scaling group %s: %w", name, err)
	}
	if len(out.AutoScalingGroups) == 0 {
		return astypes.AutoScalingGroup{}, fmt.Errorf("auto Scaling group %s does not exist", name)
	}
	return out.AutoScalingGroups[0], nil
}

// planStandby is the Standby pre will enter, nil for none: only an
// instance in service in a group whose health check type is ELB (the
// group would otherwise replace it as soon as the app is down). It
// refuses what the group's sizes cannot give back.
func (t *TargetGroups) planStandby(g *asgInstance) (*StandbyRecord, error) {
	if !t.Standby || g == nil || g.healthCheckType != "ELB" || g.state != inService {
		return nil, nil
	}
	rec := &StandbyRecord{Group: g.group, Decrement: t.DecrementDesired}
	switch {
	case t.DecrementDesired && g.desired-1 < g.minSize:
		// EnterStandby would be refused: the minimum size drops with the
		// desired capacity, for the patch.
		rec.MinSize = &MinSizeChange{From: g.minSize, To: g.desired - 1}
	case !t.DecrementDesired && g.desired+1 > g.max:
		// The group launches a replacement; ExitStandby then raises the
		// desired capacity by one, and is refused above the maximum.
		return nil, fmt.Errorf("auto Scaling group %s: with decrement_desired_capacity false, leaving Standby raises the desired capacity to %d, above the maximum size %d: raise the maximum or decrement",
			g.group, g.desired+1, g.max)
	}
	return rec, nil
}

// enterStandby lowers the minimum size if planned, then puts the instance
// on Standby. It does not wait for Standby: the group keeps the instance
// EnteringStandby until its target groups' deregistration delay ends, and
// no health check replaces it meanwhile.
func enterStandby(ctx context.Context, c Clients, r *StandbyRecord) error {
	if r.MinSize != nil {
		if _, err := c.AutoScaling.UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(r.Group), MinSize: aws.Int32(r.MinSize.To)}); err != nil {
			return fmt.Errorf("lowering the minimum size of %s to %d: %w", r.Group, r.MinSize.To, err)
		}
	}
	if _, err := c.AutoScaling.EnterStandby(ctx, &autoscaling.EnterStandbyInput{
		AutoScalingGroupName: aws.String(r.Group), InstanceIds: []string{c.InstanceID},
		ShouldDecrementDesiredCapacity: aws.Bool(r.Decrement)}); err != nil {
		return fmt.Errorf("putting %s on Standby in %s: %w", c.InstanceID, r.Group, err)
	}
	return nil
}

// exitStandby takes the instance out of Standby if it is there (waiting,
// up to ctx's end, for an instance still EnteringStandby, as the group
// refuses ExitStandby until then). With wait, it then waits until the
// group has it InService.
func exitStandby(ctx context.Context, c Clients, r *StandbyRecord, poll time.Duration, wait bool) error {
	var state string
	err := lb.Poll(ctx, poll, func() (bool, error) {
		var err error
		if state, err = lifecycle(ctx, c, r.Group); err != nil {
			return false, err
		}
		switch state {
		case standby:
			if _, err := c.AutoScaling.ExitStandby(ctx, &autoscaling.ExitStandbyInput{
				AutoScalingGroupName: aws.String(r.Group), InstanceIds: []string{c.InstanceID}}); err != nil {
				return false, fmt.Errorf("taking %s out of Standby in %s: %w", c.InstanceID, r.Group, err)
			}
			return !wait, nil
		case inService:
			return true, nil
		case pending:
			return !wait, nil
		case enteringStandby:
			return false, nil
		}
		return false, fmt.Errorf("%s is %s in Auto Scaling group %s: neither on Standby nor in service", c.InstanceID, state, r.Group)
	})
	if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return fmt.Errorf("%s still %s in Auto Scaling group %s (EnteringStandby lasts the target groups' deregistration delay): %w", c.InstanceID, state, r.Group, err)
	}
	return err
}

// lifecycle is the instance's lifecycle state in group.
func lifecycle(ctx context.Context, c Clients, group string) (string, error) {
	out, err := c.AutoScaling.DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{InstanceIds: []string{c.InstanceID}})
	if err != nil {
		return "", fmt.Errorf("reading %s's lifecycle state in %s: %w", c.InstanceID, group, err)
	}
	for _, in := range out.AutoScalingInstances {
		if aws.ToString(in.AutoScalingGroupName) == group {
			return aws.ToString(in.LifecycleState), nil
		}
	}
	return "", fmt.Errorf("%s is no longer in Auto Scaling group %s", c.InstanceID, group)
}

// restoreMinSize gives the group its minimum size back, if pre lowered it
// and it is still what pre set. It refuses while the desired capacity is
// below the old minimum (another instance still on Standby, say): raising
// the minimum then would raise the desired capacity and launch an
// instance; the record is kept for the next put back.
func restoreMinSize(ctx context.Context, c Clients, r *StandbyRecord) error {
	if r.MinSize == nil {
		return nil
	}
	g, err := describeGroup(ctx, c.AutoScaling, r.Group)
	if err != nil {
		return err
	}
	minSize, desired := aws.ToInt32(g.MinSize), aws.ToInt32(g.DesiredCapacity)
	switch {
	case minSize != r.MinSize.To:
		return nil // restored already, or changed since by someone else: theirs
	case desired < r.MinSize.From:
		return fmt.Errorf("the minimum size of %s stays %d, not %d again: its desired capacity is %d (another instance on Standby?)",
			r.Group, minSize, r.MinSize.From, desired)
	}
	if _, err := c.AutoScaling.UpdateAutoScalingGroup(ctx, &autoscaling.UpdateAutoScalingGroupInput{
		AutoScalingGroupName: aws.String(r.Group), MinSize: aws.Int32(r.MinSize.From)}); err != nil {
		return fmt.Errorf("restoring the minimum size of %s to %d: %w", r.Group, r.MinSize.From, err)
	}
	return nil
}
