// Package awslb is the AWS side of taking the node out of a load
// balancer: it learns which EC2 instance this is from the instance
// metadata service (IMDSv2 only) and builds the SDK configuration the
// ELBv2 and Auto Scaling clients use to deregister the instance from its
// target groups before the firewall blocks traffic, and to register it
// back after.
//
// The package is named awslb, not aws, so that callers can import it next
// to the SDK's aws package without renaming either.
package awslb

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// Bounds on talking to IMDS. One HTTP request (connect, headers, body)
// gets requestTimeout; the SDK retries a failed request up to maxAttempts
// times in all, at most maxBackoff apart; and a whole LookupIdentity or
// LifecycleState call (token and retries included) is cut at
// lookupTimeout, or sooner if its ctx ends first.
const (
	requestTimeout = 2 * time.Second
	maxAttempts    = 3
	maxBackoff     = time.Second
	lookupTimeout  = 5 * time.Second
)

// The metadata path LifecycleState reads, relative to /latest/meta-data/.
const lifecyclePath = "autoscaling/target-lifecycle-state"

// NewIMDSClient returns the IMDS client that LookupIdentity,
// LifecycleState and the instance-profile credentials of LoadAWSConfig
// share. endpoint is IMDS's base URL; empty means the SDK's choice
// (AWS_EC2_METADATA_SERVICE_ENDPOINT if set, else http://169.254.169.254).
//
// The client is IMDSv2 only: it asks for a session token first and fails,
// rather than silently retrying without one (IMDSv1), if it gets none.
// Each HTTP request is bounded to 2s and never goes through an HTTP proxy
// (IMDS is link-local; a proxy from the environment would answer for
// another host, or not at all). A failed request is tried at most 3 times
// in all, without the SDK's client-side retry quota, so that a
// long-running agent is never refused a retry because of past failures.
func NewIMDSClient(endpoint string) *imds.Client {
	dialer := &net.Dialer{Timeout: requestTimeout}
	return imds.New(imds.Options{
		Endpoint:       endpoint,
		EnableFallback: aws.FalseTernary,
		// A plain *http.Client: the SDK leaves its timeouts alone (it
		// would shorten those of its own buildable client).
		HTTPClient: &http.Client{
			Timeout: requestTimeout,
			Transport: &http.Transport{
				Proxy:           nil,
				DialContext:     dialer.DialContext,
				IdleConnTimeout: 30 * time.Second,
			},
		},
		Retryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = maxAttempts
			o.MaxBackoff = maxBackoff
			o.RateLimiter = ratelimit.None
		}),
	})
}

// Identity is what the AWS backend needs to know about this instance:
// its ID (the target registered in ELBv2 target groups and Auto Scaling
// groups) and where it runs (the region of every API call).
type Identity struct {
	InstanceID       string
	Region           string
	AvailabilityZone string
}

// LookupIdentity reads the instance identity document from IMDSv2
// through client (from NewIMDSClient). It returns within 5s, or sooner if
// ctx ends first: each request is bounded to 2s and tried at most 3 times,
// and the whole lookup (token included) is cut at 5s. An error names the
// endpoint asked and what failed.
func LookupIdentity(ctx context.Context, client *imds.Client) (Identity, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	start := time.Now()
	var endpoint string
	out, err := client.GetInstanceIdentityDocument(ctx, nil, captureEndpoint(&endpoint))
	if err != nil {
		return Identity{}, fmt.Errorf("instance identity from IMDSv2 at %s (gave up after %s): %w: "+
			"is this an EC2 instance, and is the metadata hop limit at least 1 for the host?",
			endpoint, time.Since(start).Round(10*time.Millisecond), err)
	}
	id := Identity{
		InstanceID:       out.InstanceID,
		Region:           out.Region,
		AvailabilityZone: out.AvailabilityZone,
	}
	if id.InstanceID == "" || id.Region == "" || id.AvailabilityZone == "" {
		return Identity{}, fmt.Errorf("instance identity from IMDSv2 at %s: the document lacks "+
			"an instance ID, region or availability zone (got %+v)", endpoint, id)
	}
	return id, nil
}

// LifecycleState reads the instance's Auto Scaling target lifecycle state
// (such as "InService" or "Terminated") from IMDSv2 through client. IMDS
// answers 404 for an instance in no Auto Scaling group: that is inASG
// false and no error. Any other failure (no token, no answer) is an error,
// never taken for "not in an ASG". Bounded as LookupIdentity is.
func LifecycleState(ctx context.Context, client *imds.Client) (state string, inASG bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	start := time.Now()
	var endpoint string
	out, err := client.GetMetadata(ctx, &imds.GetMetadataInput{Path: lifecyclePath}, captureEndpoint(&endpoint))
	if err == nil {
		defer out.Content.Close()
		var b []byte
		b, err = io.ReadAll(io.LimitReader(out.Content, 1024))
		if err == nil {
			return strings.TrimSpace(string(b)), true, nil
		}
	}
	if notFound(err, lifecyclePath) {
		return "", false, nil
	}
	return "", false, fmt.Errorf("target lifecycle state (Auto Scaling) from IMDSv2 at %s (gave up after %s): %w",
		endpoint, time.Since(start).Round(10*time.Millisecond), err)
}

// captureEndpoint is an IMDS call option that records which endpoint the
// call goes to, for its error message.
func captureEndpoint(to *string) func(*imds.Options) {
	return func(o *imds.Options) {
		switch {
		case o.Endpoint != "":
			*to = o.Endpoint
		case o.EndpointMode == imds.EndpointModeStateIPv6:
			*to = "http://[fd00:ec2::254]"
		default:
			*to = "http://169.254.169.254"
		}
	}
}

// notFound reports whether err is IMDS answering 404 for the metadata path
// itself, not for the token request (which would mean no IMDSv2 at all).
func notFound(err error, path string) bool {
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.Response == nil || re.Response.Response == nil ||
		re.HTTPStatusCode() != http.StatusNotFound {
		return false
	}
	req := re.Response.Request
	return req != nil && strings.HasSuffix(req.URL.Path, "/meta-data/"+path)
}
