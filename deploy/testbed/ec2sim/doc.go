// Package ec2sim is an in-process stand-in for the Amazon EC2 API's
// DescribeInstances, for a fixed set of instances, so that tests can run
// patchagent's real AWS SDK code that reads an instance target's Availability
// Zone (ec2:DescribeInstances) offline: no EC2 emulator is reachable from the
// test machines. It is the sibling of deploy/testbed/elbsim and
// deploy/testbed/asgsim, and shares their plumbing, deploy/testbed/awsquery,
// in its EC2 variant.
//
// It answers as EC2 does rather than recording calls:
//
//   - Server is an http.Handler that speaks EC2's protocol of API version
//     2016-11-15 (the query protocol's form-encoded POST in, lists as
//     InstanceId.N and Filter.N.Name/Filter.N.Value.M; XML out without a
//     result element, lists as <item>, errors as <Response><Errors><Error>;
//     see awsquery.API's EC2), for DescribeInstances only. An unmodified SDK
//     client reaches it through its BaseEndpoint option.
//   - DescribeInstances reports the instances named by InstanceId, or every
//     instance, in configuration order, each in a reservation of its own in
//     account 123456789012, with its id, type, state (code and name), launch
//     time and Availability Zone. An id that no instance has is
//     InvalidInstanceID.NotFound naming it, one not of the form i-… is
//     InvalidInstanceID.Malformed, as AWS answers. The filters
//     availability-zone, instance-id and instance-state-name narrow the
//     answer (values OR'ed, filters AND'ed, with EC2's wildcards * and ?);
//     any other filter, and any other parameter (DryRun included), is
//     refused as not simulated rather than ignored. MaxResults (5 to 1000,
//     and not with InstanceId, as AWS requires) and NextToken page the
//     answer; without MaxResults it is one page.
//
// FailNext makes the next calls fail with a chosen error (RequestLimitExceeded
// and UnauthorizedOperation are EC2's own throttling and refusal;
// awsquery.Throttling and awsquery.AccessDenied work too), so that the SDK's
// retryer and error decoding can be exercised; Calls counts the requests.
//
// Not simulated: every other action, instance changes (the set and the
// states are fixed at New), tags, networking, and instances owned by other
// accounts.
package ec2sim
