package awslb

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/ec2sim"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
)

const third = "i-0ccccccccccccccc3" // in this instance's zone

// zoneEnv is one target group, cross-zone on or off, holding this
// instance and third in us-east-1a and other in us-east-1b, all healthy
// but third, whose server fails ELB's checks; EC2 knows the three zones.
type zoneEnv struct {
	sim    *elbsim.Server
	ec2    *ec2sim.Server
	arn    string
	client *elbv2.Client
	ec2c   *ec2.Client
}

func newZoneEnv(t *testing.T, crossZone bool) *zoneEnv {
	t.Helper()
	ok := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(ok.Close)
	bad := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) }))
	t.Cleanup(bad.Close)
	port := func(s *httptest.Server) int32 { return int32(s.Listener.Addr().(*net.TCPAddr).Port) }
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{{Name: "zonal", Port: port(ok), HealthCheckInterval: 50 * time.Millisecond,
			HealthCheckTimeout: 40 * time.Millisecond, HealthyThreshold: 2, UnhealthyThreshold: 2, CrossZone: crossZone}},
		Resolve: elbsim.StaticResolver(map[string]string{self: "127.0.0.1", other: "127.0.0.1", third: "127.0.0.1"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	e := &zoneEnv{sim: sim, arn: sim.TargetGroupARN("zonal")}
	e.client = elbv2.NewFromConfig(awsquery.ClientConfig(3), func(o *elbv2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	e.ec2, err = ec2sim.New(ec2sim.Options{Instances: []ec2sim.Instance{
		{ID: self, AvailabilityZone: "us-east-1a"}, {ID: other, AvailabilityZone: "us-east-1b"}, {ID: third, AvailabilityZone: "us-east-1a"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	esrv := httptest.NewServer(e.ec2)
	t.Cleanup(esrv.Close)
	e.ec2c = ec2.NewFromConfig(awsquery.ClientConfig(3), func(o *ec2.Options) { o.BaseEndpoint = aws.String(esrv.URL) })
	for _, r := range []Registration{{e.arn, self, port(ok)}, {e.arn, other, port(ok)}, {e.arn, third, port(bad)}} {
		if _, err := e.client.RegisterTargets(context.Background(), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(e.arn), Targets: target(r)}); err != nil {
			t.Fatal(err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		out, err := e.client.DescribeTargetHealth(context.Background(), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(e.arn)})
		if err != nil {
			t.Fatal(err)
		}
		states := map[string]types.TargetHealthStateEnum{}
		for _, d := range out.TargetHealthDescriptions {
			states[aws.ToString(d.Target.Id)] = d.TargetHealth.State
		}
		if states[self] == "healthy" && states[other] == "healthy" && states[third] == "unhealthy" {
			return e
		}
		if time.Now().After(deadline) {
			t.Fatalf("targets never settled: %v", states)
		}
	}
}

func (e *zoneEnv) backend(zone string) *TargetGroups {
	return &TargetGroups{
		ARNs:       []string{e.arn},
		MinHealthy: MinHealthy{Count: 1},
		Connect: func(context.Context) (Clients, error) {
			return Clients{InstanceID: self, Zone: zone, ELBv2: e.client, EC2: e.ec2c}, nil
		},
		Poll: 20 * time.Millisecond,
	}
}

// TestCapacityGatePerZone: with cross-zone off, the healthy target in the
// other zone does not count: this instance's zone would keep none, and
// Record refuses naming the zone; with cross-zone on the same group
// passes. The zones come from EC2 (this instance's from IMDS, or, when
// IMDS gave none, EC2's too).
func TestCapacityGatePerZone(t *testing.T) {
	ctx := context.Background()
	off := newZoneEnv(t, false)
	for _, zone := range []string{"us-east-1a", ""} {
		_, err := off.backend(zone).Record(ctx, nil)
		if !errors.Is(err, ErrCapacity) || !strings.Contains(err.Error(), "would leave 0 healthy target(s) of 2 registered in us-east-1a (cross-zone off), fewer than lb.aws.min_healthy 1 (1)") {
			t.Fatalf("cross-zone off, own zone %q: %v", zone, err)
		}
	}
	if off.ec2.Calls("DescribeInstances") == 0 {
		t.Error("the zones were not asked of EC2")
	}

	on := newZoneEnv(t, true)
	if _, err := on.backend("us-east-1a").Record(ctx, nil); err != nil {
		t.Fatalf("cross-zone on: %v", err)
	}
	if n := on.ec2.Calls("DescribeInstances"); n != 0 {
		t.Errorf("cross-zone on asked EC2 %d time(s)", n)
	}
}

// TestCapacityGateOffAsksNothing: min_healthy 0 reads no attribute and
// no zone (the instance profile needs neither permission).
func TestCapacityGateOffAsksNothing(t *testing.T) {
	e := newZoneEnv(t, false)
	b := e.backend("us-east-1a")
	b.MinHealthy = MinHealthy{}
	if _, err := b.Record(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if n := e.sim.Calls("DescribeTargetGroupAttributes") + e.ec2.Calls("DescribeInstances"); n != 0 {
		t.Errorf("%d attribute or zone call(s) with the gate off", n)
	}
}

// TestCapacityGateZoneErrors: EC2 refusing DescribeInstances fails Record
// with the reason; without an EC2 client and zones to find, it says so.
func TestCapacityGateZoneErrors(t *testing.T) {
	e := newZoneEnv(t, false)
	if err := e.ec2.FailNext("DescribeInstances", 1, awsquery.AccessDenied); err != nil {
		t.Fatal(err)
	}
	if _, err := e.backend("us-east-1a").Record(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "reading the zones of the instance targets") || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("DescribeInstances denied: %v", err)
	}
	b := e.backend("us-east-1a")
	b.Connect = func(context.Context) (Clients, error) {
		return Clients{InstanceID: self, Zone: "us-east-1a", ELBv2: e.client}, nil
	}
	if _, err := b.Record(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "no EC2 client") {
		t.Fatalf("no EC2 client: %v", err)
	}
}

// attrELB answers the attribute and the group's protocol as given; the
// rest of ELBv2 is not asked by zonal.
type attrELB struct {
	ELBv2
	crossZone string // "" for the attribute absent
	protocol  types.ProtocolEnum
}

func (f attrELB) DescribeTargetGroupAttributes(context.Context, *elbv2.DescribeTargetGroupAttributesInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupAttributesOutput, error) {
	out := &elbv2.DescribeTargetGroupAttributesOutput{}
	if f.crossZone != "" {
		out.Attributes = []types.TargetGroupAttribute{{Key: aws.String(crossZoneAttribute), Value: aws.String(f.crossZone)}}
	}
	return out, nil
}

func (f attrELB) DescribeTargetGroups(context.Context, *elbv2.DescribeTargetGroupsInput, ...func(*elbv2.Options)) (*elbv2.DescribeTargetGroupsOutput, error) {
	return &elbv2.DescribeTargetGroupsOutput{TargetGroups: []types.TargetGroup{{Protocol: f.protocol}}}, nil
}

// TestZonalFollowsTheAttributeAndTheLoadBalancer: true and false are the
// group's own; a group that defers to its load balancer is an ALB's
// (always cross-zone) when HTTP(S), else an NLB's or GWLB's, counted per
// zone.
func TestZonalFollowsTheAttributeAndTheLoadBalancer(t *testing.T) {
	for _, tt := range []struct {
		attr     string
		protocol types.ProtocolEnum
		want     bool
	}{
		{"true", types.ProtocolEnumTcp, false},
		{"false", types.ProtocolEnumHttp, true},
		{"use_load_balancer_configuration", types.ProtocolEnumHttps, false},
		{"use_load_balancer_configuration", types.ProtocolEnumTcp, true},
		{"", types.ProtocolEnumGeneve, true},
		{"", types.ProtocolEnumHttp, false},
	} {
		got, err := zonal(context.Background(), attrELB{crossZone: tt.attr, protocol: tt.protocol}, "arn")
		if err != nil || got != tt.want {
			t.Errorf("attribute %q, protocol %s: zonal %v, %v; want %v", tt.attr, tt.protocol, got, err, tt.want)
		}
	}
}
