package awslb

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials/ec2rolecreds"
)

// Endpoints points the clients at other endpoints than AWS's: for tests,
// or for an operator behind VPC endpoints with their own names. Each is a
// base URL such as "https://vpce-x.elasticloadbalancing.eu-west-1.vpce.amazonaws.com";
// empty means AWS's (or what the environment or shared config sets).
type Endpoints struct {
	IMDS        string // instance metadata service (identity, instance-profile credentials)
	ELBv2       string // Elastic Load Balancing v2 API (target groups)
	AutoScaling string // Auto Scaling API (lifecycle, standby)
	EC2         string // EC2 API (the zones of instance targets)
}

// LoadAWSConfig builds the SDK configuration for the ELBv2 and Auto
// Scaling clients of the instance id.
//
// The region is the identity's, even if AWS_REGION or the shared config
// names another: the target groups to leave are those of this instance,
// which live in its region, and an AWS_REGION left over in the agent's
// environment must not send the deregistration elsewhere. Only when the
// identity has no region does the SDK's own chain decide.
//
// Credentials come from the SDK's default chain (environment, shared
// files, web identity, container), and on EC2 in the end from the
// instance profile through IMDSv2 with a client from NewIMDSClient (so
// bounded, and without IMDSv1 fallback). They are fetched on first use,
// not here.
//
// endpoints.ELBv2, endpoints.AutoScaling and endpoints.EC2 are served to the clients as
// configured service endpoints, ahead of the environment's and the shared
// config's; like those, they are ignored if AWS_ENDPOINT_URL is set
// without the service's own variable, or if
// AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true.
//
// Each HTTP request to those APIs (connect, TLS, headers, body) is cut at
// 10s: the SDK's default client has no such bound, and an API that accepts
// the connection and never answers would otherwise hold a call until its
// context ends, which for Record is its whole bound, for PutBack the whole
// lb.aws.healthy_timeout. The SDK's standard retryer then tries a timed
// out request again (3 attempts in all), so one call ends within about
// 30s plus its backoff, and sooner if its context does.
func LoadAWSConfig(ctx context.Context, id Identity, endpoints Endpoints) (aws.Config, error) {
	return loadAWSConfig(ctx, id, endpoints, apiRequestTimeout)
}

// apiRequestTimeout bounds one HTTP request to the ELBv2, Auto Scaling and
// EC2 APIs (they answer in well under a second).
const apiRequestTimeout = 10 * time.Second

// loadAWSConfig is LoadAWSConfig with each API request cut at
// requestTimeout.
func loadAWSConfig(ctx context.Context, id Identity, endpoints Endpoints, requestTimeout time.Duration) (aws.Config, error) {
	metadata := NewIMDSClient(endpoints.IMDS)
	opts := []func(*config.LoadOptions) error{
		config.WithEC2RoleCredentialOptions(func(o *ec2rolecreds.Options) { o.Client = metadata }),
		// A BuildableClient, so that AWS_CA_BUNDLE still applies to it.
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTimeout(requestTimeout)),
	}
	if id.Region != "" {
		opts = append(opts, config.WithRegion(id.Region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return aws.Config{}, fmt.Errorf("AWS SDK configuration for instance %s: %w", id.InstanceID, err)
	}
	if cfg.Region == "" {
		return aws.Config{}, errors.New("AWS SDK configuration: no region: the instance identity has none, " +
			"and neither AWS_REGION nor the shared config sets one")
	}
	if endpoints.ELBv2 != "" || endpoints.AutoScaling != "" || endpoints.EC2 != "" {
		// The SDK asks config sources in order; the first that knows wins.
		cfg.ConfigSources = append([]any{serviceEndpoints(endpoints)}, cfg.ConfigSources...)
	}
	return cfg, nil
}

// serviceEndpoints answers the SDK's question "which base endpoint for
// service sdkID?" (the ServiceBaseEndpointProvider of its config sources)
// from Endpoints.
type serviceEndpoints Endpoints

// The SDK IDs of the services, as their clients ask for them
// (elasticloadbalancingv2.ServiceID, autoscaling.ServiceID, ec2.ServiceID).
const (
	elbv2SDKID       = "Elastic Load Balancing v2"
	autoScalingSDKID = "Auto Scaling"
	ec2SDKID         = "EC2"
)

// GetServiceBaseEndpoint returns the endpoint set for sdkID, if any.
func (e serviceEndpoints) GetServiceBaseEndpoint(_ context.Context, sdkID string) (string, bool, error) {
	switch {
	case sdkID == elbv2SDKID && e.ELBv2 != "":
		return e.ELBv2, true, nil
	case sdkID == autoScalingSDKID && e.AutoScaling != "":
		return e.AutoScaling, true, nil
	case sdkID == ec2SDKID && e.EC2 != "":
		return e.EC2, true, nil
	}
	return "", false, nil
}
