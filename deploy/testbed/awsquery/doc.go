// Package awsquery is the AWS query protocol as the testbed's API simulators
// (deploy/testbed/elbsim, deploy/testbed/asgsim, and in its EC2 variant
// deploy/testbed/ec2sim) speak it, so that each of them holds only its
// service: its actions, their parameters and results.
//
//   - API is an http.Handler for one service: form-encoded GET or POST in
//     (at most 1 MiB), XML out. It refuses a request without Action, one not
//     signed (no "AWS4-HMAC-SHA256 " Authorization header; the signature
//     itself is not verified) and one naming an action or an API version the
//     service does not have, as AWS does, and hands the others to the
//     simulator's Dispatch func. A result is answered as
//     <XxxResponse><XxxResult>…</XxxResult><ResponseMetadata>, without the
//     result element when Dispatch returns none; an Error as <ErrorResponse>
//     of Type Sender (4xx) or Receiver (5xx). Every answer carries a request
//     id, in the X-Amzn-Requestid header and in the body.
//   - API.EC2 switches to EC2's protocol, which has the same requests but
//     other envelopes: a result is <XxxResponse><requestId>…</requestId>
//     followed by the result's elements, with no result element; an error is
//     <Response><Errors><Error><Code>…</Code><Message>…</Message></Error></Errors><RequestID>…</RequestID></Response>,
//     without a namespace or a Type. The refusals above are the same.
//   - Error is an answer of the API in place of a result. Validation, Null
//     and Unavailable build the common ones; Throttling and AccessDenied are
//     the faults a test injects with FailNext, so that the SDK's retryer and
//     error decoding can be exercised. Calls counts the requests of an
//     action, failed ones included.
//   - List reads the protocol's lists (name.member.N), ListEC2 EC2's
//     (name.N); RequestID makes ids in AWS's UUID form.
//
// Locking is the simulator's business: API only guards its own faults and
// counts, and calls Dispatch with no lock held.
package awsquery
