package ec2sim_test

import (
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/ec2sim"
)

// Instance ids of the tests' fleet.
const (
	id1     = "i-0a0000000000000a1"
	id2     = "i-0b0000000000000b2"
	id3     = "i-0c0000000000000c3"
	id4     = "i-0a0000000000000a4"
	id5     = "i-0b0000000000000b5"
	id6     = "i-0c0000000000000c6"
	id7     = "i-0a0000000000000a7"
	idGhost = "i-0fffffffffffffff9" // no such instance
)

// fleet is seven instances over three zones; id1 has every default, id3 is
// stopped and an m5.large.
func fleet() []ec2sim.Instance {
	return []ec2sim.Instance{
		{ID: id1},
		{ID: id2, AvailabilityZone: "us-east-1b"},
		{ID: id3, AvailabilityZone: "us-east-1c", InstanceType: "m5.large", State: ec2sim.Stopped},
		{ID: id4, AvailabilityZone: "us-east-1a"},
		{ID: id5, AvailabilityZone: "us-east-1b"},
		{ID: id6, AvailabilityZone: "us-east-1c"},
		{ID: id7, AvailabilityZone: "us-west-2a"},
	}
}

// env is a simulated EC2 with an SDK client pointed at it.
type env struct {
	sim *ec2sim.Server
	c   *ec2.Client
}

// start serves New(opts) over HTTP to a client that makes at most 3
// attempts, as awsquery.ClientConfig configures it.
func start(t *testing.T, opts ec2sim.Options) *env {
	t.Helper()
	sim, err := ec2sim.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(sim)
	t.Cleanup(srv.Close)
	c := ec2.NewFromConfig(awsquery.ClientConfig(3), func(o *ec2.Options) { o.BaseEndpoint = aws.String(srv.URL) })
	return &env{sim: sim, c: c}
}

// describe calls DescribeInstances and returns the instances of the answer's
// reservations, checking that each reservation holds one instance of
// account 123456789012.
func (e *env) describe(t *testing.T, in *ec2.DescribeInstancesInput) []types.Instance {
	t.Helper()
	out, err := e.c.DescribeInstances(t.Context(), in)
	if err != nil {
		t.Fatalf("DescribeInstances: %v", err)
	}
	return instances(t, out)
}

func instances(t *testing.T, out *ec2.DescribeInstancesOutput) []types.Instance {
	t.Helper()
	var all []types.Instance
	for _, r := range out.Reservations {
		if len(r.Instances) != 1 || aws.ToString(r.OwnerId) != ec2sim.OwnerID || len(aws.ToString(r.ReservationId)) != 19 {
			t.Errorf("reservation %s of %s with %d instances, want one instance, owner %s and an id r-…(17)", aws.ToString(r.ReservationId), aws.ToString(r.OwnerId), len(r.Instances), ec2sim.OwnerID)
		}
		all = append(all, r.Instances...)
	}
	return all
}

// ids returns the ids of ins, in order.
func ids(ins []types.Instance) []string {
	var out []string
	for _, in := range ins {
		out = append(out, aws.ToString(in.InstanceId))
	}
	return out
}

// wantCode checks that err is a smithy.APIError with code and returns its
// message.
func wantCode(t *testing.T, err error, code string) string {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code {
		t.Fatalf("%v (%T), want the API error %s", err, err, code)
	}
	return ae.ErrorMessage()
}
