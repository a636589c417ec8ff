// Package elbsim is an in-process stand-in for the AWS Elastic Load
// Balancing v2 (Application Load Balancer) target-group API, so that tests can
// run patchagent's real AWS SDK code against it offline: no ELBv2 emulator is
// reachable from the test machines.
//
// It behaves like a load balancer rather than recording calls:
//
//   - Server is an http.Handler that speaks the AWS query protocol of API
//     version 2015-12-01 (form-encoded POST in, XML out, errors as
//     <ErrorResponse>; the protocol itself is deploy/testbed/awsquery's), for
//     DescribeTargetGroups, DescribeTargetHealth, RegisterTargets,
//     DeregisterTargets and DescribeTargetGroupAttributes. An unmodified SDK
//     client reaches it through its BaseEndpoint option.
//   - Every registered target is health-checked by the server itself: an HTTP
//     GET every interval against the target's health-check address, with the
//     group's timeout, matcher and healthy/unhealthy thresholds. A target goes
//     initial → healthy/unhealthy as ELB's would, draining for the
//     deregistration delay after DeregisterTargets, then gone.
//   - Router returns the group's listener: a reverse proxy that sends each
//     request to the next healthy target in round-robin order, fails open to
//     all registered non-draining targets when none is healthy, and answers
//     503 when there is none at all.
//
// Target ids (EC2 instance ids) become addresses through a resolver the test
// supplies, and every connection goes through a dial function the test may
// supply, so targets can live in other network namespaces.
//
// FailNext makes the next calls of an action fail with a chosen error (for
// example awsquery.Throttling), so that the SDK's retryer and error decoding
// can be exercised; Calls counts the requests of an action. Wall-clock
// seconds in the API (intervals, timeouts, the deregistration delay) are
// reported rounded up to whole seconds; the server itself runs on the
// configured durations, which tests keep short.
package elbsim
