package awslb

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// within runs f and fails t if it has not returned after d: a call with
// no bound would hang the test instead.
func within[T any](t *testing.T, d time.Duration, what string, f func() T) T {
	t.Helper()
	done := make(chan T, 1)
	go func() { done <- f() }()
	select {
	case v := <-done:
		return v
	case <-time.After(d):
		t.Fatalf("%s still running after %s: unbounded", what, d)
	}
	panic("unreachable")
}

// unboundedConfig is the SDK configuration of a client whose HTTP client
// has no timeout at all (the SDK's default has none either), retrying
// nothing: only a context bounds its calls.
func unboundedConfig() aws.Config {
	cfg := awsquery.ClientConfig(1)
	cfg.HTTPClient = &http.Client{}
	return cfg
}

// TestRecordIsBounded: APIs that accept the connection and never answer
// (ELBv2; Auto Scaling, asked first with Standby) hold Record no longer
// than RecordTimeout, though the caller's context has no deadline (pre's
// has none, and it holds the phase lock meanwhile).
func TestRecordIsBounded(t *testing.T) {
	silent := silentServer(t)
	cfg := unboundedConfig()
	elb := elbv2.NewFromConfig(cfg, func(o *elbv2.Options) { o.BaseEndpoint = aws.String(silent) })
	asg := autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(silent) })
	for _, standby := range []bool{false, true} {
		b := &TargetGroups{
			ARNs: []string{"arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"}, Standby: standby,
			Connect: func(context.Context) (Clients, error) {
				return Clients{InstanceID: self, ELBv2: elb, AutoScaling: asg}, nil
			},
			RecordTimeout: 300 * time.Millisecond,
		}
		start := time.Now()
		err := within(t, 5*time.Second, "Record", func() error { _, err := b.Record(context.Background(), nil); return err })
		if !errors.Is(err, context.DeadlineExceeded) || !strings.HasPrefix(err.Error(), "gave up after 300ms: ") || time.Since(start) > 2*time.Second {
			t.Fatalf("standby %v: Record against silent APIs: %v after %s", standby, err, time.Since(start))
		}
	}
}

// TestTakeOutAndPutBackConnectWithinTheirDeadline: a fresh backend (exit
// after a restart, from the journal) connects first: that too counts in
// the deadline.
func TestTakeOutAndPutBackConnectWithinTheirDeadline(t *testing.T) {
	rec, _ := json.Marshal(Record{TargetGroups: []string{"tg"}, Registrations: []Registration{{"tg", self, 80}}})
	b := &TargetGroups{Connect: func(ctx context.Context) (Clients, error) {
		<-ctx.Done() // IMDS or the SDK's configuration stalled
		return Clients{}, ctx.Err()
	}}
	if err := b.Restore(rec); err != nil {
		t.Fatal(err)
	}
	if err := within(t, 5*time.Second, "TakeOut", func() error { _, err := b.TakeOut(context.Background(), 200*time.Millisecond); return err }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("TakeOut: %v", err)
	}
	if err := within(t, 5*time.Second, "PutBack", func() error { _, err := b.PutBack(context.Background(), 200*time.Millisecond); return err }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("PutBack: %v", err)
	}
}

// TestAPIRequestsTimeOut: the configuration LoadAWSConfig builds cuts
// every HTTP request to ELBv2, Auto Scaling and EC2, so a call with no
// deadline of its own (Record's reads within their bound, PutBack's within
// healthy_timeout) still ends against an API that never answers: here
// with the SDK's 3 attempts at 200 ms each, plus its backoff.
func TestAPIRequestsTimeOut(t *testing.T) {
	cleanAWSEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKID")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "SECRET")
	silent := silentServer(t)
	cfg, err := loadAWSConfig(context.Background(), Identity{InstanceID: self, Region: "us-east-1"},
		Endpoints{ELBv2: silent, AutoScaling: silent, EC2: silent}, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	calls := map[string]func() error{
		"ELBv2": func() error {
			_, err := elbv2.NewFromConfig(cfg).DescribeTargetHealth(context.Background(), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String("tg")})
			return err
		},
		"Auto Scaling": func() error {
			_, err := autoscaling.NewFromConfig(cfg).DescribeAutoScalingInstances(context.Background(), &autoscaling.DescribeAutoScalingInstancesInput{})
			return err
		},
		"EC2": func() error {
			_, err := ec2.NewFromConfig(cfg).DescribeInstances(context.Background(), &ec2.DescribeInstancesInput{})
			return err
		},
	}
	for name, call := range calls {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			start := time.Now()
			if err := within(t, 15*time.Second, name+" call", call); err == nil || !strings.Contains(err.Error(), "exceeded maximum number of attempts, 3") || time.Since(start) > 8*time.Second {
				t.Fatalf("against a silent API: %v after %s", err, time.Since(start))
			}
		})
	}
}
