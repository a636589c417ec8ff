output "pre_install_document_name" {
  description = "Name of the pre-install hook document."
  value       = aws_ssm_document.pre_install.name
}

output "post_install_document_name" {
  description = "Name of the post-install hook document."
  value       = aws_ssm_document.post_install.name
}

output "on_exit_document_name" {
  description = "Name of the on-exit hook document."
  value       = aws_ssm_document.on_exit.name
}

output "association_id" {
  description = "ID of the AWS-RunPatchBaselineWithHooks association (null with schedule_mode maintenance-window)."
  value       = one(aws_ssm_association.patch[*].association_id)
}

output "association_name" {
  description = "Name of the AWS-RunPatchBaselineWithHooks association (null with schedule_mode maintenance-window)."
  value       = one(aws_ssm_association.patch[*].association_name)
}

output "maintenance_window_id" {
  description = "ID of the maintenance window (null with schedule_mode association)."
  value       = one(aws_ssm_maintenance_window.patch[*].id)
}

output "output_policy_arn" {
  description = "ARN of the managed policy to attach to the nodes' instance profile for the S3 output (null without output_s3_bucket_name)."
  value       = one(aws_iam_policy.output[*].arn)
}

output "load_balancer_policy_arn" {
  description = "ARN of the managed policy to attach to the nodes' instance profile (null without lb_target_group_arns and autoscaling_group_arns)."
  value       = one(aws_iam_policy.load_balancer[*].arn)
}
