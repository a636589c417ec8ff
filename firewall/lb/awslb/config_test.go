package awslb

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
)

// cleanAWSEnv leaves the SDK no configuration but what a test sets: no
// credentials, region, profile, endpoints or IMDS settings from the
// machine running the tests.
func cleanAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for _, k := range os.Environ() {
		k, _, _ = strings.Cut(k, "=")
		if strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "") // restored when t ends
			os.Unsetenv(k)
		}
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "no-credentials"))
}

// recorder is an API endpoint that notes the Authorization header of each
// request and refuses it.
type recorder struct {
	*httptest.Server
	mu    sync.Mutex
	auths []string
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.auths = append(r.auths, req.Header.Get("Authorization"))
		r.mu.Unlock()
		http.Error(w, "recorded", http.StatusBadRequest) // 4xx: not retried
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auths...)
}

// The identity's region wins over AWS_REGION, credentials come from the
// instance profile AEMM serves through IMDSv2, and the ELBv2, Auto
// Scaling and EC2 clients call the endpoints given, signed with them.
func TestLoadAWSConfig(t *testing.T) {
	cleanAWSEnv(t)
	t.Setenv("AWS_REGION", "us-west-2") // a leftover that must not win
	url := startAEMM(t, "")
	elb, asg, ec2r := newRecorder(t), newRecorder(t), newRecorder(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	cfg, err := LoadAWSConfig(ctx, want, Endpoints{IMDS: url, ELBv2: elb.URL, AutoScaling: asg.URL, EC2: ec2r.URL})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Region != want.Region {
		t.Errorf("region %q, want the identity's %q", cfg.Region, want.Region)
	}
	creds, err := cfg.Credentials.Retrieve(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if creds.AccessKeyID != wantAccessKey {
		t.Errorf("access key %q from %s, want AEMM's instance profile's %q", creds.AccessKeyID, creds.Source, wantAccessKey)
	}

	if _, err := elbv2.NewFromConfig(cfg).DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{}); err == nil {
		t.Error("ELBv2 call succeeded against the recorder")
	}
	if _, err := autoscaling.NewFromConfig(cfg).DescribeAutoScalingInstances(ctx, &autoscaling.DescribeAutoScalingInstancesInput{}); err == nil {
		t.Error("Auto Scaling call succeeded against the recorder")
	}
	if _, err := ec2.NewFromConfig(cfg).DescribeInstances(ctx, &ec2.DescribeInstancesInput{}); err == nil {
		t.Error("EC2 call succeeded against the recorder")
	}
	for name, r := range map[string]*recorder{"elasticloadbalancing": elb, "autoscaling": asg, "ec2": ec2r} {
		auths := r.seen()
		if len(auths) != 1 {
			t.Fatalf("%s endpoint got %d requests, want 1", name, len(auths))
		}
		scope := "Credential=" + wantAccessKey + "/"
		suffix := "/" + want.Region + "/" + name + "/aws4_request"
		if !strings.Contains(auths[0], scope) || !strings.Contains(auths[0], suffix) {
			t.Errorf("%s request signed %q, want %s…%s", name, auths[0], scope, suffix)
		}
	}
}

func TestLoadAWSConfigNeedsARegion(t *testing.T) {
	cleanAWSEnv(t)
	_, err := LoadAWSConfig(context.Background(), Identity{InstanceID: "i-0noregion"}, Endpoints{})
	if err == nil || !strings.Contains(err.Error(), "no region") {
		t.Fatalf("LoadAWSConfig without any region: %v", err)
	}
}

// The SDK IDs the endpoints are served under are the clients' own.
func TestServiceIDs(t *testing.T) {
	if elbv2.ServiceID != elbv2SDKID || autoscaling.ServiceID != autoScalingSDKID || ec2.ServiceID != ec2SDKID {
		t.Fatalf("service IDs %q, %q, %q; the package serves endpoints for %q, %q, %q",
			elbv2.ServiceID, autoscaling.ServiceID, ec2.ServiceID, elbv2SDKID, autoScalingSDKID, ec2SDKID)
	}
}
