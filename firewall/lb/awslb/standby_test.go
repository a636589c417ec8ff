package awslb

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"

	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/firewall/lb"
)

// asgEnv is tgEnv's target groups behind a simulated Auto Scaling group
// "web-asg" holding both instances, with "web" attached: like a real
// group, it deregisters an instance entering Standby from "web" and keeps
// it EnteringStandby until the draining ends, and registers it again when
// it leaves Standby.
type asgEnv struct {
	*tgEnv
	asg    *asgsim.Server
	client *autoscaling.Client
}

const asgName = "web-asg"

func newASGEnv(t *testing.T, g asgsim.Group) *asgEnv {
	t.Helper()
	e := &asgEnv{tgEnv: newTGEnv(t, 200*time.Millisecond)}
	g.Name = asgName
	if g.TargetGroupARNs == nil {
		g.TargetGroupARNs = []string{e.web}
	}
	g.Instances = []asgsim.Instance{{ID: self}, {ID: other}}
	g.OnTransition = asgsim.AttachTargetGroups(e.tgEnv.client, func(string) int32 { return e.port }, func(err error) { t.Error(err) })
	sim, err := asgsim.New(asgsim.Options{Groups: []asgsim.Group{g}, TransitionDelay: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	e.asg = sim
	srv := httptest.NewServer(sim)
	t.Cleanup(func() {
		srv.Close()
		if err := sim.Close(); err != nil {
			t.Error(err)
		}
	})
	e.client = autoscaling.NewFromConfig(awsquery.ClientConfig(3), func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	return e
}

// backend is TargetGroups with Standby, both groups named.
func (e *asgEnv) backend() *TargetGroups {
	b := e.tgEnv.backend()
	b.Standby, b.DecrementDesired = true, true
	b.Connect = func(context.Context) (Clients, error) {
		return Clients{InstanceID: self, ELBv2: e.tgEnv.client, AutoScaling: e.client,
			Lifecycle: func(context.Context) (string, bool, error) {
				in, _ := e.asg.Instance(self)
				return in.LifecycleState, true, nil
			}}, nil
	}
	return b
}

func (e *asgEnv) group(t *testing.T) asgsim.GroupState {
	t.Helper()
	g, ok := e.asg.Group(asgName)
	if !ok {
		t.Fatal("no group")
	}
	return g
}

func (e *asgEnv) lifecycle(t *testing.T) string {
	t.Helper()
	in, _ := e.asg.Instance(self)
	return in.LifecycleState
}

func decode(t *testing.T, rec json.RawMessage) Record {
	t.Helper()
	r, err := decodeRecord(rec)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestStandbyOutAndBack: in a group at its minimum size, Record plans the
// minimum lowered by one and Standby with the desired capacity
// decremented; TakeOut drains the registrations and puts the instance on
// Standby; PutBack from the journal (a fresh backend) waits for Standby,
// takes it out, sees the targets healthy and the instance InService, and
// restores the minimum: the group is as it was, and launched nothing.
func TestStandbyOutAndBack(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 2, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckELB})
	ctx := context.Background()
	b := e.backend()
	rec, err := b.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := decode(t, rec)
	want := StandbyRecord{Group: asgName, Decrement: true, MinSize: &MinSizeChange{From: 2, To: 1}}
	if r.Standby == nil || r.Standby.Group != want.Group || !r.Standby.Decrement || r.Standby.MinSize == nil || *r.Standby.MinSize != *want.MinSize {
		t.Fatalf("record's standby = %+v, want %+v", r.Standby, want)
	}
	if g := e.group(t); g.MinSize != 2 || g.DesiredCapacity != 2 || e.lifecycle(t) != asgsim.InService {
		t.Fatalf("Record changed the group: %+v", g)
	}
	w, err := b.TakeOut(ctx, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(w.By, "Standby in Auto Scaling group web-asg (min size 2 → 1)") {
		t.Errorf("TakeOut's wait = %q, lacks the Standby", w.By)
	}
	if st := e.lifecycle(t); st != asgsim.EnteringStandby && st != asgsim.Standby {
		t.Errorf("after TakeOut the instance is %s, want EnteringStandby or Standby", st)
	}
	if g := e.group(t); g.MinSize != 1 || g.DesiredCapacity != 1 {
		t.Errorf("after TakeOut min/desired = %d/%d, want 1/1", g.MinSize, g.DesiredCapacity)
	}

	again := e.backend()
	if err := again.Restore(rec); err != nil {
		t.Fatal(err)
	}
	if _, err := again.PutBack(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	g := e.group(t)
	if g.MinSize != 2 || g.DesiredCapacity != 2 || g.Launched != 0 || e.lifecycle(t) != asgsim.InService {
		t.Fatalf("after PutBack the group is %+v, instance %s; want min 2, desired 2, nothing launched, InService", g, e.lifecycle(t))
	}
	for _, arn := range []string{e.web, e.api} {
		if st := e.state(t, arn, self, e.port); st != "healthy" {
			t.Errorf("after PutBack %s says %s", shortARN(arn), st)
		}
	}
	if w, err := again.PutBack(ctx, time.Second); err == nil {
		t.Errorf("a second PutBack after a complete one: %+v, want the no-record error", w)
	}
}

// TestStandbyOnlyWhereTheGroupChecksELB: a group with EC2 health checks
// does not replace an instance whose app is down, so it is left alone:
// no Standby recorded, no Auto Scaling change.
func TestStandbyOnlyWhereTheGroupChecksELB(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 1, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckEC2})
	ctx := context.Background()
	b := e.backend()
	rec, err := b.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r := decode(t, rec); r.Standby != nil || len(r.Registrations) != 2 {
		t.Fatalf("record = %+v, want both registrations and no standby", r)
	}
	if _, err := b.TakeOut(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if st := e.lifecycle(t); st != asgsim.InService || e.asg.Calls("EnterStandby") != 0 {
		t.Errorf("instance %s after %d EnterStandby call(s), want InService and none", st, e.asg.Calls("EnterStandby"))
	}
}

// TestAutoTargetGroupsAreTheGroups: with target_groups auto, Record
// leaves exactly the groups attached to the Auto Scaling group.
func TestAutoTargetGroupsAreTheGroups(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 0, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckELB})
	b := e.backend()
	b.ARNs, b.AutoTargetGroups = nil, true
	rec, err := b.Record(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	r := decode(t, rec)
	if len(r.TargetGroups) != 1 || r.TargetGroups[0] != e.web || len(r.Registrations) != 1 || r.Registrations[0].TargetGroup != e.web {
		t.Fatalf("record = %+v, want the group's one target group %s and its registration", r, shortARN(e.web))
	}
	if r.Standby == nil || r.Standby.MinSize != nil {
		t.Errorf("record's standby = %+v, want one without a minimum size change (desired 2, min 0)", r.Standby)
	}
}

// TestAutoTargetGroupsOutsideAGroup refuses: there is no group to ask.
func TestAutoTargetGroupsOutsideAGroup(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 0, DesiredCapacity: 2, MaxSize: 4})
	b := e.backend()
	b.ARNs, b.AutoTargetGroups = nil, true
	connect := b.Connect
	b.Connect = func(ctx context.Context) (Clients, error) {
		c, err := connect(ctx)
		c.Lifecycle = func(context.Context) (string, bool, error) { return "", false, nil }
		return c, err
	}
	if _, err := b.Record(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "in no Auto Scaling group") {
		t.Fatalf("Record = %v, want the no-group error", err)
	}
	if n := e.asg.Calls("DescribeAutoScalingInstances"); n != 0 {
		t.Errorf("%d Auto Scaling call(s) for an instance IMDS says is in no group", n)
	}
}

// TestStandbyWithoutDecrementNeedsRoomAboveIt: leaving Standby raises the
// desired capacity; at the maximum, Record refuses before anything
// changes rather than strand the instance on Standby.
func TestStandbyWithoutDecrementNeedsRoomAboveIt(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 1, DesiredCapacity: 2, MaxSize: 2, HealthCheckType: asgsim.HealthCheckELB})
	b := e.backend()
	b.DecrementDesired = false
	_, err := b.Record(context.Background(), nil)
	if err == nil || !strings.Contains(err.Error(), "above the maximum size 2") {
		t.Fatalf("Record = %v, want the maximum size refusal", err)
	}
	if e.asg.Calls("EnterStandby")+e.asg.Calls("UpdateAutoScalingGroup") != 0 {
		t.Error("Record changed the group")
	}
}

// TestStandbyKeptOnAFailedPutBackAndRestoredByTheNext: a put back whose
// targets stay unhealthy fails with ELB's reason and leaves the minimum
// size lowered (the record says so); once the app is healthy the next put
// back from the same record restores it. The break-glass (SetOut false)
// does the same without waiting.
func TestStandbyKeptOnAFailedPutBackAndRestoredByTheNext(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 2, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckELB})
	ctx := context.Background()
	b := e.backend()
	if _, err := b.Record(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TakeOut(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	e.healthy.Store(false)
	_, err := b.PutBack(ctx, time.Second)
	if !errors.Is(err, lb.ErrNotConfirmed) {
		t.Fatalf("PutBack with the app unhealthy = %v, want ErrNotConfirmed", err)
	}
	if g := e.group(t); g.MinSize != 1 {
		t.Fatalf("min size %d after a failed put back, want still 1 (restored only once back)", g.MinSize)
	}
	e.healthy.Store(true)
	if _, err := b.PutBack(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if g := e.group(t); g.MinSize != 2 || g.DesiredCapacity != 2 {
		t.Fatalf("after the second put back min/desired = %d/%d, want 2/2", g.MinSize, g.DesiredCapacity)
	}

	// The break-glass, from the journal, once the instance is on Standby.
	b = e.backend()
	rec, err := b.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TakeOut(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := e.asg.WaitLifecycle(wctx, self, asgsim.Standby); err != nil {
		t.Fatal(err)
	}
	glass := e.backend()
	if err := glass.Restore(rec); err != nil {
		t.Fatal(err)
	}
	glass.SetOut(false)
	if err := e.asg.WaitLifecycle(wctx, self, asgsim.InService); err != nil {
		t.Fatal(err)
	}
	if g := e.group(t); g.MinSize != 2 || g.DesiredCapacity != 2 {
		t.Fatalf("after the break-glass min/desired = %d/%d, want 2/2", g.MinSize, g.DesiredCapacity)
	}
}

// TestStandbyCarriedIntoTheNextCycle: a cycle closed with the instance
// still on Standby (its put back failed) hands its record to the next
// pre, whose own plan has no Standby (the instance is not InService): the
// new record keeps the old Standby, so this cycle's exit ends it.
func TestStandbyCarriedIntoTheNextCycle(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 2, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckELB})
	ctx := context.Background()
	b := e.backend()
	carried, err := b.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.TakeOut(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	next := e.backend()
	rec, err := next.Record(ctx, carried)
	if err != nil {
		t.Fatal(err)
	}
	if r := decode(t, rec); r.Standby == nil || r.Standby.MinSize == nil || r.Standby.MinSize.From != 2 {
		t.Fatalf("next record = %+v, want the carried Standby with min size 2 → 1", r)
	}
	if _, err := next.PutBack(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if g := e.group(t); g.MinSize != 2 || e.lifecycle(t) != asgsim.InService {
		t.Fatalf("after the next cycle's put back: min %d, %s", g.MinSize, e.lifecycle(t))
	}
}

// TestStandbyRetriesThrottlingAndReportsAccessDenied: the SDK's retryer
// absorbs Auto Scaling's throttling; AccessDenied on EnterStandby fails
// TakeOut with the action named.
func TestStandbyRetriesThrottlingAndReportsAccessDenied(t *testing.T) {
	e := newASGEnv(t, asgsim.Group{MinSize: 1, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckELB})
	ctx := context.Background()
	if err := e.asg.FailNext("DescribeAutoScalingInstances", 2, awsquery.Throttling); err != nil {
		t.Fatal(err)
	}
	b := e.backend()
	if _, err := b.Record(ctx, nil); err != nil {
		t.Fatalf("Record through two throttled calls: %v", err)
	}
	if n := e.asg.Calls("DescribeAutoScalingInstances"); n != 3 {
		t.Fatalf("DescribeAutoScalingInstances called %d time(s), want 3 (two throttled, retried)", n)
	}
	if err := e.asg.FailNext("EnterStandby", 1, awsquery.AccessDenied); err != nil {
		t.Fatal(err)
	}
	_, err := b.TakeOut(ctx, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "putting "+self+" on Standby") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("TakeOut = %v, want the EnterStandby AccessDenied", err)
	}
}

// TestLegacyRecordIsReadable: a journal written by the first versions
// (a list of registrations) is put back as before.
func TestLegacyRecordIsReadable(t *testing.T) {
	r := decode(t, json.RawMessage(`[{"target_group":"arn:x:targetgroup/web/1","id":"i-1","port":80}]`))
	if len(r.Registrations) != 1 || r.Registrations[0].Port != 80 || len(r.TargetGroups) != 1 || r.Standby != nil {
		t.Fatalf("legacy record read as %+v", r)
	}
}
