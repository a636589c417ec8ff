// Package terraform holds a Terraform module (the *.tf files here) with the
// three hook documents of deploy/ssm and what runs them with
// AWS-RunPatchBaselineWithHooks: a State Manager association or a
// maintenance window (schedule_mode), as deploy/cloudformation does. The
// package has only tests: they check the module offline (terraform validate
// needs the AWS provider).
package terraform
