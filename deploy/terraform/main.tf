# patchagent on AWS Systems Manager: the three hook documents of deploy/ssm
# (read from there: one source of truth) and a weekly
# AWS-RunPatchBaselineWithHooks association that runs them on the nodes
# tagged tag_key = tag_value. Same resources as
# deploy/cloudformation/patchagent.yaml.

resource "aws_ssm_document" "pre_install" {
  name            = "${var.name_prefix}-pre-install"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-pre-install.yaml")
  tags            = var.tags
}

resource "aws_ssm_document" "post_install" {
  name            = "${var.name_prefix}-post-install"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-post-install.yaml")
  tags            = var.tags
}

resource "aws_ssm_document" "on_exit" {
  name            = "${var.name_prefix}-on-exit"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-on-exit.yaml")
  tags            = var.tags
}

resource "aws_ssm_association" "patch" {
  name                        = "AWS-RunPatchBaselineWithHooks"
  association_name            = "${var.name_prefix}-patch-baseline-with-hooks"
  schedule_expression         = var.schedule_expression
  apply_only_at_cron_interval = true
  max_concurrency             = var.max_concurrency
  max_errors                  = var.max_errors
  compliance_severity         = var.compliance_severity
  sync_compliance             = "AUTO"
  tags                        = var.tags

  # SnapshotId only when given.
  parameters = merge(
    {
      Operation              = "Install"
      RebootOption           = var.reboot_option
      PreInstallHookDocName  = aws_ssm_document.pre_install.name
      PostInstallHookDocName = aws_ssm_document.post_install.name
      OnExitHookDocName      = aws_ssm_document.on_exit.name
    },
    var.snapshot_id == "" ? {} : { SnapshotId = var.snapshot_id },
  )

  targets {
    key    = "tag:${var.tag_key}"
    values = [var.tag_value]
  }

  dynamic "output_location" {
    for_each = var.output_s3_bucket_name == "" ? [] : [var.output_s3_bucket_name]
    content {
      s3_bucket_name = output_location.value
      s3_key_prefix  = var.output_s3_key_prefix
    }
  }
}

# What patchagent's lb.aws needs of the nodes' instance profile, when the
# nodes sit in target groups or Auto Scaling groups: created only with
# lb_target_group_arns or autoscaling_group_arns. The Describe actions take
# no resource; DescribeTargetGroupAttributes, DescribeTargetGroups and
# ec2:DescribeInstances serve the capacity gate's per-zone count.
resource "aws_iam_policy" "load_balancer" {
  count       = length(var.lb_target_group_arns) + length(var.autoscaling_group_arns) > 0 ? 1 : 0
  name_prefix = "${var.name_prefix}-lb-"
  description = "patchagent takes the node out of these target groups during patching, and back in."
  tags        = var.tags

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{ Effect = "Allow", Action = ["elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetGroups", "ec2:DescribeInstances"], Resource = "*" }],
      length(var.lb_target_group_arns) == 0 ? [] : [{ Effect = "Allow", Action = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"], Resource = var.lb_target_group_arns }],
      length(var.autoscaling_group_arns) == 0 ? [] : [
        { Effect = "Allow", Action = ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups"], Resource = "*" },
        { Effect = "Allow", Action = ["autoscaling:EnterStandby", "autoscaling:ExitStandby", "autoscaling:UpdateAutoScalingGroup"], Resource = var.autoscaling_group_arns },
      ],
    )
  })
}
