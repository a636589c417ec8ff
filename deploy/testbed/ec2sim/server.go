package ec2sim

import (
	"cmp"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
)

// APIVersion is the EC2 API version the server speaks; requests naming
// another are refused, as AWS does.
const APIVersion = "2016-11-15"

// Namespace is the XML namespace of every result.
const Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"

// OwnerID is the account that owns every reservation.
const OwnerID = "123456789012"

// Instance states, as DescribeInstances reports them (and as the filter
// instance-state-name matches them).
const (
	Pending      = "pending"
	Running      = "running"
	ShuttingDown = "shutting-down"
	Terminated   = "terminated"
	Stopping     = "stopping"
	Stopped      = "stopped"
)

// stateCodes are EC2's codes of the states.
var stateCodes = map[string]int32{Pending: 0, Running: 16, ShuttingDown: 32, Terminated: 48, Stopping: 64, Stopped: 80}

// Defaults for zero configuration fields.
const (
	DefaultZone         = "us-east-1a"
	DefaultInstanceType = "t3.micro"
)

// EC2's own faults, for FailNext.
var (
	// RequestLimitExceeded is EC2's answer to a caller over its API rate;
	// the SDK's standard retryer retries it.
	RequestLimitExceeded = awsquery.Error{Status: http.StatusServiceUnavailable, Code: "RequestLimitExceeded", Message: "Request limit exceeded."}
	// UnauthorizedOperation is EC2's refusal of an action IAM does not
	// allow; the SDK does not retry it.
	UnauthorizedOperation = awsquery.Error{Status: http.StatusForbidden, Code: "UnauthorizedOperation", Message: "You are not authorized to perform this operation."}
)

// Instance configures one instance.
type Instance struct {
	// ID is the instance id: "i-" and at most 17 more characters (required,
	// unique).
	ID string
	// AvailabilityZone is the instance's zone (default "us-east-1a").
	AvailabilityZone string
	// InstanceType is its type (default "t3.micro").
	InstanceType string
	// State is one of the states above (default Running).
	State string
}

// Options configures a Server.
type Options struct {
	// Instances are the instances the account has, in the order
	// DescribeInstances reports them; there is no RunInstances.
	Instances []Instance
}

// Server simulates EC2's DescribeInstances. It is the http.Handler of the
// API (see ServeHTTP). Its instances do not change, so it holds no lock and
// needs no Close.
type Server struct {
	launched  time.Time
	instances []*instance          // as configured
	byID      map[string]*instance // the same

	api *awsquery.API // EC2's protocol, FailNext and Calls; dispatches to describeInstances
}

type instance struct {
	id, zone, itype, state string
}

// New returns a server for opts.
func New(opts Options) (*Server, error) {
	s := &Server{
		launched: time.Now().UTC().Truncate(time.Second),
		byID:     map[string]*instance{},
	}
	s.api = &awsquery.API{
		Version:   APIVersion,
		Namespace: Namespace,
		EC2:       true,
		Actions:   []string{"DescribeInstances"},
		Dispatch:  s.dispatch,
	}
	var errs []error
	for i, cfg := range opts.Instances {
		in := &instance{
			id:    cfg.ID,
			zone:  cmp.Or(cfg.AvailabilityZone, DefaultZone),
			itype: cmp.Or(cfg.InstanceType, DefaultInstanceType),
			state: cmp.Or(cfg.State, Running),
		}
		if !validID(in.id) || s.byID[in.id] != nil {
			errs = append(errs, fmt.Errorf("instance %d: id %q must be \"i-\" and 1 to 17 more characters, and unique", i, in.id))
		}
		if _, ok := stateCodes[in.state]; !ok {
			errs = append(errs, fmt.Errorf("instance %q: state %q is not one of %s, %s, %s, %s, %s and %s", in.id, in.state, Pending, Running, ShuttingDown, Terminated, Stopping, Stopped))
		}
		s.byID[in.id] = in
		s.instances = append(s.instances, in)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("ec2sim: %w", err)
	}
	return s, nil
}

// validID reports whether id has the form of an instance id: "i-" and 1 to
// 17 more characters (EC2's own are 8 or 17 hexadecimal digits).
func validID(id string) bool {
	return strings.HasPrefix(id, "i-") && len(id) > 2 && len(id) <= 19
}

// ServeHTTP answers one API request in EC2's protocol (see awsquery.API): a
// signed request naming Version 2016-11-15 and DescribeInstances.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.api.ServeHTTP(w, r) }

// dispatch is the awsquery.API's Dispatch; DescribeInstances is the only
// action.
func (s *Server) dispatch(_ string, f url.Values) (any, *awsquery.Error) {
	return s.describeInstances(f)
}

// FailNext makes the next n calls of action ("DescribeInstances") answer e
// (for example RequestLimitExceeded) instead of acting, after any faults
// already queued for it. The calls still count in Calls.
func (s *Server) FailNext(action string, n int, e awsquery.Error) error {
	return s.api.FailNext(action, n, e)
}

// Calls returns how many requests named action so far, failed ones included:
// with FailNext it shows how often the SDK retried.
func (s *Server) Calls(action string) int { return s.api.Calls(action) }
