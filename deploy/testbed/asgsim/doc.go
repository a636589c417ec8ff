// Package asgsim is an in-process stand-in for the AWS (EC2) Auto Scaling API
// for a few Auto Scaling groups, so that tests can run patchagent's real AWS
// SDK code (putting an instance on Standby around a patch) offline: no Auto
// Scaling emulator is reachable from the test machines. It is the sibling of
// deploy/testbed/elbsim, follows its style and shares its query-protocol
// plumbing, deploy/testbed/awsquery.
//
// It behaves like Auto Scaling rather than recording calls:
//
//   - Server is an http.Handler that speaks the AWS query protocol of API
//     version 2011-01-01 (form-encoded POST in, XML out, errors as
//     <ErrorResponse>; see awsquery.API), for DescribeAutoScalingGroups,
//     DescribeAutoScalingInstances, DescribeScalingActivities, EnterStandby,
//     ExitStandby and UpdateAutoScalingGroup. An unmodified SDK client reaches
//     it through its BaseEndpoint option.
//   - EnterStandby moves an instance InService → EnteringStandby → Standby,
//     ExitStandby moves it Standby → Pending → InService; each intermediate
//     state lasts Options.TransitionDelay. The sizes follow AWS's rules:
//     EnterStandby with ShouldDecrementDesiredCapacity lowers the desired
//     capacity and is refused below MinSize; without it the sizes stay and the
//     group "launches" a replacement, which is only counted (GroupState.Launched),
//     not created. ExitStandby always raises the desired capacity by the number
//     of instances (as the API reference says: "After you put the instances back
//     in service, the desired capacity is incremented"), whether or not
//     EnterStandby lowered it, and is refused above MaxSize.
//   - Group.OnTransition is called at every lifecycle change of the group's
//     instances, so that a test can do what a real group does with its attached
//     target groups: deregister the instance on InService → EnteringStandby
//     (Standby follows once the hook returns, as a real group waits for the
//     deregistration to drain) and register it on Standby → Pending.
//
// FailNext makes the next calls of an action fail with a chosen error (for
// example awsquery.Throttling), so that the SDK's retryer and error decoding can be
// exercised; Calls counts the requests of an action.
//
// Not simulated: scaling itself (a change of desired capacity launches or
// terminates nothing), lifecycle hooks, health checks (HealthStatus changes
// only through SetHealth), warm pools, tags and Filters. The
// DescribeAutoScalingInstances action reports HealthStatus in upper case
// ("HEALTHY"), DescribeAutoScalingGroups in mixed case ("Healthy"), as AWS does.
package asgsim
