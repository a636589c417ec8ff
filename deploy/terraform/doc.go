// Package terraform holds a Terraform module (the *.tf files here) with the
// three hook documents of deploy/ssm and the AWS-RunPatchBaselineWithHooks
// association that runs them. The package has only tests: they check the
// module offline (terraform validate needs the AWS provider).
package terraform
