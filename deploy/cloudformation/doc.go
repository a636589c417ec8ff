// Package cloudformation holds patchagent.yaml, a CloudFormation template
// with the three hook documents of deploy/ssm and what runs them with
// AWS-RunPatchBaselineWithHooks: a State Manager association or a
// maintenance window (ScheduleMode), with optional policies for the load
// balancer and the S3 output and an EventBridge rule for failed runs. The
// package has only tests: they validate the template offline.
package cloudformation
