// Package cloudformation holds patchagent.yaml, a CloudFormation template
// with the three hook documents of deploy/ssm and the
// AWS-RunPatchBaselineWithHooks association that runs them. The package
// has only tests: they validate the template offline.
package cloudformation
