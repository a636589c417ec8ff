package asgsim

import (
	"context"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
)

// TargetGroups is what AttachTargetGroups asks of ELBv2 (the SDK's client,
// of elbsim or of AWS).
type TargetGroups interface {
	RegisterTargets(context.Context, *elbv2.RegisterTargetsInput, ...func(*elbv2.Options)) (*elbv2.RegisterTargetsOutput, error)
	DeregisterTargets(context.Context, *elbv2.DeregisterTargetsInput, ...func(*elbv2.Options)) (*elbv2.DeregisterTargetsOutput, error)
	DescribeTargetHealth(context.Context, *elbv2.DescribeTargetHealthInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetHealthOutput, error)
}

// AttachTargetGroups returns an OnTransition hook that does what a real
// group does with its attached target groups (the transition's
// TargetGroupARNs): an instance entering Standby is deregistered from each,
// on the port port gives for it, and stays EnteringStandby until none
// reports it draining any more; one leaving Standby is registered again.
// A failed call goes to report (a test's t.Error); one cut by the end of
// ctx (the server's Close) does not.
func AttachTargetGroups(api TargetGroups, port func(id string) int32, report func(error)) func(context.Context, Transition) {
	return func(ctx context.Context, tr Transition) {
		td := []types.TargetDescription{{Id: aws.String(tr.InstanceID), Port: aws.Int32(port(tr.InstanceID))}}
		fail := func(err error) {
			if ctx.Err() == nil {
				report(fmt.Errorf("asgsim: %s %s → %s: %w", tr.InstanceID, tr.From, tr.To, err))
			}
		}
		for _, arn := range tr.TargetGroupARNs {
			switch tr.To {
			case EnteringStandby:
				if _, err := api.DeregisterTargets(ctx, &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: td}); err != nil {
					fail(err)
					return
				}
				for {
					out, err := api.DescribeTargetHealth(ctx, &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn), Targets: td})
					if err != nil {
						fail(err)
						return
					}
					if len(out.TargetHealthDescriptions) == 0 || out.TargetHealthDescriptions[0].TargetHealth == nil ||
						out.TargetHealthDescriptions[0].TargetHealth.State != types.TargetHealthStateEnumDraining {
						break
					}
					select {
					case <-ctx.Done():
						return
					case <-time.After(10 * time.Millisecond):
					}
				}
			case Pending:
				if _, err := api.RegisterTargets(ctx, &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: td}); err != nil {
					fail(err)
					return
				}
			}
		}
	}
}
