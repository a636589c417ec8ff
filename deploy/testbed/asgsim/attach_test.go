package asgsim_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
)

// fakeTargets records the calls, reports draining for the first drains
// DescribeTargetHealth calls, and fails every call with err if set.
type fakeTargets struct {
	calls  []string
	drains int
	err    error
}

func (f *fakeTargets) note(op string, arn *string, td []types.TargetDescription) error {
	f.calls = append(f.calls, fmt.Sprintf("%s %s %s:%d", op, aws.ToString(arn), aws.ToString(td[0].Id), aws.ToInt32(td[0].Port)))
	return f.err
}

func (f *fakeTargets) RegisterTargets(_ context.Context, in *elbv2.RegisterTargetsInput, _ ...func(*elbv2.Options)) (*elbv2.RegisterTargetsOutput, error) {
	return &elbv2.RegisterTargetsOutput{}, f.note("register", in.TargetGroupArn, in.Targets)
}

func (f *fakeTargets) DeregisterTargets(_ context.Context, in *elbv2.DeregisterTargetsInput, _ ...func(*elbv2.Options)) (*elbv2.DeregisterTargetsOutput, error) {
	return &elbv2.DeregisterTargetsOutput{}, f.note("deregister", in.TargetGroupArn, in.Targets)
}

func (f *fakeTargets) DescribeTargetHealth(_ context.Context, in *elbv2.DescribeTargetHealthInput, _ ...func(*elbv2.Options)) (*elbv2.DescribeTargetHealthOutput, error) {
	err := f.note("describe", in.TargetGroupArn, in.Targets)
	state := types.TargetHealthStateEnumUnused
	if f.drains > 0 {
		f.drains--
		state = types.TargetHealthStateEnumDraining
	}
	return &elbv2.DescribeTargetHealthOutput{TargetHealthDescriptions: []types.TargetHealthDescription{
		{Target: &in.Targets[0], TargetHealth: &types.TargetHealth{State: state}}}}, err
}

// TestAttachTargetGroups: entering Standby deregisters the instance from
// every attached group on its port and returns once none says draining;
// leaving it registers again; a failed call is reported, one cut by the
// server's Close is not.
func TestAttachTargetGroups(t *testing.T) {
	f := &fakeTargets{drains: 2}
	var reported []error
	hook := asgsim.AttachTargetGroups(f, func(id string) int32 { return 8443 }, func(err error) { reported = append(reported, err) })
	tr := asgsim.Transition{InstanceID: "i-1", TargetGroupARNs: []string{"tg-a", "tg-b"}, From: asgsim.InService, To: asgsim.EnteringStandby}
	hook(context.Background(), tr)
	want := []string{"deregister tg-a i-1:8443", "describe tg-a i-1:8443", "describe tg-a i-1:8443", "describe tg-a i-1:8443",
		"deregister tg-b i-1:8443", "describe tg-b i-1:8443"}
	if !slices.Equal(f.calls, want) || len(reported) != 0 {
		t.Fatalf("entering Standby: calls %q, reported %v; want %q", f.calls, reported, want)
	}
	f.calls = nil
	tr.From, tr.To = asgsim.Standby, asgsim.Pending
	hook(context.Background(), tr)
	if want := []string{"register tg-a i-1:8443", "register tg-b i-1:8443"}; !slices.Equal(f.calls, want) {
		t.Fatalf("leaving Standby: calls %q, want %q", f.calls, want)
	}

	f.err = errors.New("AccessDenied")
	hook(context.Background(), tr)
	if len(reported) != 1 {
		t.Fatalf("a refused RegisterTargets: reported %v, want one error", reported)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hook(ctx, tr)
	if len(reported) != 1 {
		t.Fatalf("a call cut by Close was reported: %v", reported)
	}
}
