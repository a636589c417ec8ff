package asgsim_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling/types"

	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
)

// hooked returns webGroup with a recorder as its OnTransition hook, and the
// environment with the recorder bound to the server.
func hooked(t *testing.T, minSize, desired, maxSize int32) (*env, *recorder) {
	t.Helper()
	r := newRecorder()
	g := webGroup(minSize, desired, maxSize)
	g.OnTransition = r.hook
	e := setup(t, g)
	r.sim.Store(e.sim)
	return e, r
}

// EnterStandby with ShouldDecrementDesiredCapacity: the instance is
// EnteringStandby at once (for as long as the hook holds it), then Standby;
// the desired capacity drops by one; the activity is InProgress, then
// Successful.
func TestEnterStandbyDecrement(t *testing.T) {
	t.Parallel()
	e, r := hooked(t, 1, 2, 3)
	release := r.hold(asgsim.InService, asgsim.EnteringStandby)
	defer release()

	out := e.enter(t, "web", true, idA)
	if len(out.Activities) != 1 {
		t.Fatalf("%d activities, want 1", len(out.Activities))
	}
	a := out.Activities[0]
	actID := aws.ToString(a.ActivityId)
	for what, c := range map[string][2]any{
		"description": {aws.ToString(a.Description), "Moving EC2 instance to Standby: " + idA},
		"status":      {a.StatusCode, types.ScalingActivityStatusCodeInProgress},
		"progress":    {aws.ToInt32(a.Progress), int32(50)},
		"group":       {aws.ToString(a.AutoScalingGroupName), "web"},
		"group ARN":   {aws.ToString(a.AutoScalingGroupARN), e.sim.GroupARN("web")},
		"details":     {aws.ToString(a.Details), `{"Availability Zone":"us-east-1a"}`},
	} {
		if c[0] != c[1] {
			t.Errorf("activity %s: %v, want %v", what, c[0], c[1])
		}
	}
	if actID == "" || a.StartTime == nil || !strings.HasSuffix(aws.ToString(a.Cause), "instance "+idA+" was moved to standby in response to a user request, shrinking the capacity from 2 to 1.") {
		t.Errorf("activity %+v, want an id, a start time and AWS's cause", a)
	}

	r.waitCount(t, 1) // the hook runs, holding the transition
	if st := e.state(t, idA); st != asgsim.EnteringStandby {
		t.Errorf("while the hook holds it: %s, want EnteringStandby", st)
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 1, 3} {
		t.Errorf("sizes %v, want min 1, desired 2 → 1, max 3", got)
	}
	if got := e.activity(t, actID); got.StatusCode != types.ScalingActivityStatusCodeInProgress || got.EndTime != nil {
		t.Errorf("activity while EnteringStandby: %s (end %v), want InProgress without an end", got.StatusCode, got.EndTime)
	}
	time.Sleep(3 * delay)
	if st := e.state(t, idA); st != asgsim.EnteringStandby {
		t.Errorf("still held after 3 delays: %s, want EnteringStandby: the delay starts when the hook returns", st)
	}

	release()
	e.wait(t, idA, asgsim.Standby)
	if st := e.state(t, idA); st != asgsim.Standby {
		t.Errorf("DescribeAutoScalingInstances: %s, want Standby", st)
	}
	got := e.activity(t, actID)
	if got.StatusCode != types.ScalingActivityStatusCodeSuccessful || aws.ToInt32(got.Progress) != 100 || got.EndTime == nil || got.EndTime.Before(aws.ToTime(got.StartTime)) {
		t.Errorf("activity after Standby: %s %d%% end %v, want Successful, 100%%, an end after the start", got.StatusCode, aws.ToInt32(got.Progress), got.EndTime)
	}
	if gs, _ := e.sim.Group("web"); gs.Launched != 0 || gs.DesiredCapacity != 1 {
		t.Errorf("group state %+v, want desired 1 and nothing launched", gs)
	}
	if st := e.state(t, idB); st != asgsim.InService {
		t.Errorf("the other instance is %s, want InService", st)
	}
}

// EnterStandby with ShouldDecrementDesiredCapacity that would take the
// desired capacity below MinSize is AWS's ValidationError, and nothing
// changes: no state, no size, no hook, no activity.
func TestEnterStandbyRefusedBelowMin(t *testing.T) {
	t.Parallel()
	e, r := hooked(t, 2, 2, 3)
	_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idA}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	wantValidation(t, err, "AutoScalingGroup web has min-size=2, max-size=3, and desired-size=2. To place into standby 1 instance, please update the AutoScalingGroup sizes appropriately.")

	if _, err := e.c.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("web"), MinSize: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idA, idB}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	wantValidation(t, err, "AutoScalingGroup web has min-size=1, max-size=3, and desired-size=2. To place into standby 2 instances, please update the AutoScalingGroup sizes appropriately.")

	for _, id := range []string{idA, idB} {
		if st := e.state(t, id); st != asgsim.InService {
			t.Errorf("%s is %s after the refusals, want InService", id, st)
		}
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 2, 3} {
		t.Errorf("sizes %v, want 1/2/3", got)
	}
	time.Sleep(2 * delay)
	if n := r.count(); n != 0 {
		t.Errorf("%d hook calls, want none", n)
	}
	acts, err := e.c.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("web")})
	if err != nil || len(acts.Activities) != 0 {
		t.Errorf("activities: %v, %+v; want none", err, acts)
	}
}

// EnterStandby without decrementing keeps every size and counts one
// replacement launch; the ExitStandby that follows increments the desired
// capacity anyway, as AWS does.
func TestEnterStandbyWithoutDecrement(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 3))
	out := e.enter(t, "web", false, idA)
	if len(out.Activities) != 1 || strings.Contains(aws.ToString(out.Activities[0].Cause), "shrinking") {
		t.Errorf("activities %+v, want one, without a shrinking capacity", out.Activities)
	}
	e.wait(t, idA, asgsim.Standby)
	if got := e.sizes(t, "web"); got != [3]int32{1, 2, 3} {
		t.Errorf("sizes %v, want 1/2/3 unchanged", got)
	}
	if gs, _ := e.sim.Group("web"); gs.Launched != 1 {
		t.Errorf("launched %d, want 1 replacement", gs.Launched)
	}
	if g := e.group(t, "web"); len(g.Instances) != 2 {
		t.Errorf("%d instances listed, want 2: the replacement is only counted", len(g.Instances))
	}

	e.exit(t, "web", idA)
	e.wait(t, idA, asgsim.InService)
	if got := e.sizes(t, "web"); got != [3]int32{1, 3, 3} {
		t.Errorf("sizes after ExitStandby %v, want desired 2 → 3", got)
	}
}

// ExitStandby: Pending at once (for as long as the hook holds it), then
// InService; the desired capacity EnterStandby lowered is restored; the
// activity is PreInService, then Successful.
func TestExitStandby(t *testing.T) {
	t.Parallel()
	e, r := hooked(t, 1, 2, 3)
	e.enter(t, "web", true, idA)
	e.wait(t, idA, asgsim.Standby)
	r.waitCount(t, 2)
	release := r.hold(asgsim.Standby, asgsim.Pending)
	defer release()

	out := e.exit(t, "web", idA)
	if len(out.Activities) != 1 {
		t.Fatalf("%d activities, want 1", len(out.Activities))
	}
	a := out.Activities[0]
	if aws.ToString(a.Description) != "Moving EC2 instance out of Standby: "+idA || a.StatusCode != types.ScalingActivityStatusCodePreInService || aws.ToInt32(a.Progress) != 30 ||
		!strings.HasSuffix(aws.ToString(a.Cause), "instance "+idA+" was moved out of standby in response to a user request, increasing the capacity from 1 to 2.") {
		t.Errorf("activity %+v, want AWS's description and cause, PreInService at 30%%", a)
	}
	r.waitCount(t, 3)
	if st := e.state(t, idA); st != asgsim.Pending {
		t.Errorf("while the hook holds it: %s, want Pending", st)
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 2, 3} {
		t.Errorf("sizes %v, want desired back to 2 at the call", got)
	}
	release()
	e.wait(t, idA, asgsim.InService)
	if got := e.activity(t, aws.ToString(a.ActivityId)); got.StatusCode != types.ScalingActivityStatusCodeSuccessful {
		t.Errorf("activity after InService: %s, want Successful", got.StatusCode)
	}

	// ExitStandby of an instance that is not on standby is refused.
	_, err := e.c.ExitStandby(ctx(t), &autoscaling.ExitStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idB}})
	wantValidation(t, err, "The instance "+idB+" is not in Standby.")
}

// ExitStandby that would take the desired capacity above MaxSize is AWS's
// ValidationError and leaves the instance on standby; raising MaxSize lets
// it through.
func TestExitStandbyRefusedAboveMax(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 2))
	e.enter(t, "web", false, idA) // desired stays 2 = max
	e.wait(t, idA, asgsim.Standby)

	_, err := e.c.ExitStandby(ctx(t), &autoscaling.ExitStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idA}})
	wantValidation(t, err, "AutoScalingGroup web has min-size=1, max-size=2, and desired-size=2. To exit standby 1 instance, please update the AutoScalingGroup sizes appropriately.")
	time.Sleep(2 * delay)
	if st := e.state(t, idA); st != asgsim.Standby {
		t.Errorf("%s is %s after the refusal, want Standby", idA, st)
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 2, 2} {
		t.Errorf("sizes %v, want 1/2/2 unchanged", got)
	}

	if _, err := e.c.UpdateAutoScalingGroup(ctx(t), &autoscaling.UpdateAutoScalingGroupInput{AutoScalingGroupName: aws.String("web"), MaxSize: aws.Int32(3)}); err != nil {
		t.Fatal(err)
	}
	e.exit(t, "web", idA)
	e.wait(t, idA, asgsim.InService)
	if got := e.sizes(t, "web"); got != [3]int32{1, 3, 3} {
		t.Errorf("sizes %v, want 1/3/3", got)
	}
}

// UpdateAutoScalingGroup changes the sizes within min ≤ desired ≤ max, moves
// the desired capacity with a new MinSize or MaxSize given alone, refuses
// the rest with AWS's wording without changing anything, and a restored
// MinSize lets EnterStandby decrement again.
func TestUpdateAutoScalingGroup(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(1, 2, 3))
	update := func(in autoscaling.UpdateAutoScalingGroupInput) error {
		in.AutoScalingGroupName = aws.String("web")
		_, err := e.c.UpdateAutoScalingGroup(ctx(t), &in)
		return err
	}

	if err := update(autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(2)}); err != nil {
		t.Fatal(err)
	}
	if got := e.sizes(t, "web"); got != [3]int32{2, 2, 3} {
		t.Errorf("after MinSize 2: %v, want 2/2/3", got)
	}
	_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: []string{idA}, ShouldDecrementDesiredCapacity: aws.Bool(true)})
	wantValidation(t, err, "AutoScalingGroup web has min-size=2, max-size=3, and desired-size=2. To place into standby 1 instance, please update the AutoScalingGroup sizes appropriately.")

	if err := update(autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(3)}); err != nil {
		t.Fatal(err)
	}
	if got := e.sizes(t, "web"); got != [3]int32{3, 3, 3} {
		t.Errorf("after MinSize 3 alone: %v, want desired raised to 3", got)
	}

	for _, c := range []struct {
		in  autoscaling.UpdateAutoScalingGroupInput
		msg string
	}{
		{autoscaling.UpdateAutoScalingGroupInput{DesiredCapacity: aws.Int32(5)}, "Desired capacity:5 must be between the specified min size:3 and max size:3"},
		{autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(1), DesiredCapacity: aws.Int32(0)}, "Desired capacity:0 must be between the specified min size:1 and max size:3"},
		{autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(4)}, "Max bound, 3, must be greater than or equal to min bound, 4"},
	} {
		wantValidation(t, update(c.in), c.msg)
	}
	if err := update(autoscaling.UpdateAutoScalingGroupInput{DefaultCooldown: aws.Int32(60)}); err == nil || !strings.Contains(err.Error(), "not simulated") {
		t.Errorf("an unsimulated parameter: %v, want it refused", err)
	}
	if got := e.sizes(t, "web"); got != [3]int32{3, 3, 3} {
		t.Errorf("after the refusals: %v, want 3/3/3 unchanged", got)
	}

	if err := update(autoscaling.UpdateAutoScalingGroupInput{MinSize: aws.Int32(1), DesiredCapacity: aws.Int32(2), HealthCheckType: aws.String("EC2")}); err != nil {
		t.Fatal(err)
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 2, 3} || aws.ToString(e.group(t, "web").HealthCheckType) != "EC2" {
		t.Errorf("restored: %v %s, want 1/2/3 and EC2 checks", got, aws.ToString(e.group(t, "web").HealthCheckType))
	}
	if err := update(autoscaling.UpdateAutoScalingGroupInput{MaxSize: aws.Int32(1)}); err != nil {
		t.Fatal(err)
	}
	if got := e.sizes(t, "web"); got != [3]int32{1, 1, 1} {
		t.Errorf("after MaxSize 1 alone: %v, want desired lowered to 1", got)
	}
	if err := update(autoscaling.UpdateAutoScalingGroupInput{MaxSize: aws.Int32(3), DesiredCapacity: aws.Int32(2)}); err != nil {
		t.Fatal(err)
	}
	e.enter(t, "web", true, idA)
	e.wait(t, idA, asgsim.Standby)
	if got := e.sizes(t, "web"); got != [3]int32{1, 1, 3} {
		t.Errorf("after EnterStandby: %v, want 1/1/3", got)
	}
}

// The hook sees every lifecycle change of each instance, in order, with the
// group's target groups, after the change is visible; the delay separates
// the two steps of a move.
func TestStandbyHook(t *testing.T) {
	t.Parallel()
	e, r := hooked(t, 1, 3, 3)
	e.enter(t, "web", true, idA, idB)
	for _, id := range []string{idA, idB} {
		e.wait(t, id, asgsim.Standby)
	}
	r.waitCount(t, 4)
	e.exit(t, "web", idA, idB)
	for _, id := range []string{idA, idB} {
		e.wait(t, id, asgsim.InService)
	}
	r.waitCount(t, 8)

	acts, err := e.c.DescribeScalingActivities(ctx(t), &autoscaling.DescribeScalingActivitiesInput{AutoScalingGroupName: aws.String("web")})
	if err != nil {
		t.Fatal(err)
	}
	var activityIDs []string
	for _, a := range acts.Activities {
		activityIDs = append(activityIDs, aws.ToString(a.ActivityId))
	}
	if len(activityIDs) != 4 {
		t.Errorf("%d activities, want 4 (two instances, two moves)", len(activityIDs))
	}

	want := []string{"InService>EnteringStandby", "EnteringStandby>Standby", "Standby>Pending", "Pending>InService"}
	zones := map[string]string{idA: "us-east-1a", idB: "us-east-1b"}
	for _, id := range []string{idA, idB} {
		got := r.of(id)
		var steps []string
		for _, s := range got {
			steps = append(steps, s.From+">"+s.To)
			if s.stateInHook != s.To {
				t.Errorf("%s %s>%s: the server said %s during the hook, want %s", id, s.From, s.To, s.stateInHook, s.To)
			}
			if s.Group != "web" || s.GroupARN != e.sim.GroupARN("web") || !slices.Equal(s.TargetGroupARNs, []string{tgWeb}) || s.AvailabilityZone != zones[id] || !slices.Contains(activityIDs, s.ActivityID) {
				t.Errorf("%s transition %+v, want group web, its ARN, target group %s, zone %s and one of the activities", id, s.Transition, tgWeb, zones[id])
			}
		}
		if !slices.Equal(steps, want) {
			t.Errorf("%s transitions %v, want %v", id, steps, want)
			continue
		}
		if got[0].ActivityID != got[1].ActivityID || got[2].ActivityID != got[3].ActivityID || got[0].ActivityID == got[2].ActivityID {
			t.Errorf("%s activity ids %s %s %s %s, want one per move", id, got[0].ActivityID, got[1].ActivityID, got[2].ActivityID, got[3].ActivityID)
		}
		if d := got[1].at.Sub(got[0].at); d < delay {
			t.Errorf("%s: Standby came %s after EnteringStandby, want at least the delay %s", id, d, delay)
		}
		if d := got[3].at.Sub(got[2].at); d < delay {
			t.Errorf("%s: InService came %s after Pending, want at least the delay %s", id, d, delay)
		}
	}
}

// Moves of instances that are not InService (or not Standby), or not the
// group's, are refused as a whole.
func TestStandbyStateErrors(t *testing.T) {
	t.Parallel()
	e := setup(t, webGroup(0, 2, 3), batchGroup())
	enter := func(ids ...string) error {
		_, err := e.c.EnterStandby(ctx(t), &autoscaling.EnterStandbyInput{AutoScalingGroupName: aws.String("web"), InstanceIds: ids, ShouldDecrementDesiredCapacity: aws.Bool(true)})
		return err
	}
	e.enter(t, "web", true, idA)
	wantValidation(t, enter(idA), "The instance "+idA+" is not in InService.") // EnteringStandby or Standby by now
	wantValidation(t, enter(idB, idC), "The instance "+idC+" is not part of Auto Scaling group web.")
	wantValidation(t, enter(idB, idGhost), "The instance "+idGhost+" is not part of Auto Scaling group web.")
	e.wait(t, idA, asgsim.Standby)
	wantValidation(t, enter(idB, idA), "The instance "+idA+" is not in InService.")
	if st := e.state(t, idB); st != asgsim.InService {
		t.Errorf("%s is %s after the refused mixed calls, want InService", idB, st)
	}
	if got := e.sizes(t, "web"); got != [3]int32{0, 1, 3} {
		t.Errorf("sizes %v, want 0/1/3: only the first call decremented", got)
	}
	if st := e.state(t, idC); st != asgsim.Standby {
		t.Errorf("%s (batch) is %s, want Standby untouched", idC, st)
	}
}

// Close ends the hooks' context and stops the transitions where they are,
// within its deadline; the API answers ServiceUnavailable afterwards; waits
// end at their deadline with the state they saw.
func TestCloseStopsTransitions(t *testing.T) {
	t.Parallel()
	r := newRecorder()
	r.entered = make(chan string, 1)
	g := webGroup(1, 2, 3)
	g.OnTransition = r.hook
	e := setupOpts(t, asgsim.Options{Groups: []asgsim.Group{g}, TransitionDelay: delay})
	r.hold(asgsim.InService, asgsim.EnteringStandby) // never released
	e.enter(t, "web", true, idA)
	select {
	case got := <-r.entered:
		if got != idA+" InService>EnteringStandby" {
			t.Fatalf("hook entered for %s", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the hook did not run")
	}

	short, cancel := context.WithTimeout(context.Background(), 3*delay)
	defer cancel()
	err := e.sim.WaitLifecycle(short, idA, asgsim.Standby)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "still EnteringStandby") {
		t.Errorf("WaitLifecycle while the hook holds: %v, want a deadline error naming EnteringStandby", err)
	}

	start := time.Now()
	if err := e.sim.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %s, want it prompt once the hook sees its context end", d)
	}
	if err := e.sim.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	time.Sleep(3 * delay)
	if st, _ := e.sim.Instance(idA); st.LifecycleState != asgsim.EnteringStandby {
		t.Errorf("after Close: %s, want EnteringStandby: the transition stopped", st.LifecycleState)
	}
	if n := r.count(); n != 1 {
		t.Errorf("%d hook calls, want 1: none after Close", n)
	}
	_, err = newClient(e.api.URL, 1).DescribeAutoScalingGroups(ctx(t), &autoscaling.DescribeAutoScalingGroupsInput{})
	if code, _ := apiError(t, err); code != "ServiceUnavailable" {
		t.Errorf("after Close: %s, want ServiceUnavailable", code)
	}
}
