# patchagent on AWS Systems Manager: the three hook documents of deploy/ssm
# (read from there: one source of truth) and a weekly
# AWS-RunPatchBaselineWithHooks run on the nodes tagged tag_key = tag_value:
# a State Manager association (schedule_mode "association") or a
# maintenance window task ("maintenance-window"). Optional: a managed policy
# for the S3 output, an EventBridge rule sending failed runs to an SNS topic.
# Same resources as deploy/cloudformation/patchagent.yaml.

locals {
  # Every resource is tagged like the nodes it patches (as the
  # CloudFormation template tags its documents and window), plus var.tags.
  tags = merge({ (var.tag_key) = var.tag_value }, var.tags)

  use_association = var.schedule_mode == "association"

  # What the association and the maintenance window task pass to
  # AWS-RunPatchBaselineWithHooks; SnapshotId only when given.
  patch_parameters = merge(
    {
      Operation              = "Install"
      RebootOption           = var.reboot_option
      PreInstallHookDocName  = aws_ssm_document.pre_install.name
      PostInstallHookDocName = aws_ssm_document.post_install.name
      OnExitHookDocName      = aws_ssm_document.on_exit.name
    },
    var.snapshot_id == "" ? {} : { SnapshotId = var.snapshot_id },
  )
}

data "aws_partition" "current" {}

resource "aws_ssm_document" "pre_install" {
  name            = "${var.name_prefix}-pre-install"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-pre-install.yaml")
  tags            = local.tags
}

resource "aws_ssm_document" "post_install" {
  name            = "${var.name_prefix}-post-install"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-post-install.yaml")
  tags            = local.tags
}

resource "aws_ssm_document" "on_exit" {
  name            = "${var.name_prefix}-on-exit"
  document_type   = "Command"
  document_format = "YAML"
  target_type     = "/AWS::EC2::Instance"
  content         = file("${path.module}/../ssm/patchagent-on-exit.yaml")
  tags            = local.tags
}

resource "aws_ssm_association" "patch" {
  count                       = local.use_association ? 1 : 0
  name                        = "AWS-RunPatchBaselineWithHooks"
  association_name            = "${var.name_prefix}-patch-baseline-with-hooks"
  schedule_expression         = var.schedule_expression
  apply_only_at_cron_interval = true
  max_concurrency             = var.max_concurrency
  max_errors                  = var.max_errors
  compliance_severity         = var.compliance_severity
  sync_compliance             = "AUTO"
  tags                        = local.tags
  parameters                  = local.patch_parameters

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

# The association gained a count (schedule_mode): keep the existing one.
moved {
  from = aws_ssm_association.patch
  to   = aws_ssm_association.patch[0]
}

# schedule_mode "maintenance-window": the same run from a maintenance window.
# The task sets no service_role_arn, so Systems Manager runs it with its
# service-linked role (AWSServiceRoleForAmazonSSM, created on first use): no
# role to create, no iam:PassRole for the deployer. Duration 4 h: the hooks
# alone may take 50 min (300 + 1800 + 900 s), plus the patching and the
# reboot. Cutoff 1 h with CANCEL_TASK: no node starts in the last hour, the
# nodes already running finish.
resource "aws_ssm_maintenance_window" "patch" {
  count                      = local.use_association ? 0 : 1
  name                       = "${var.name_prefix}-patch-window"
  description                = "patchagent AWS-RunPatchBaselineWithHooks window."
  schedule                   = var.schedule_expression
  duration                   = 4
  cutoff                     = 1
  allow_unassociated_targets = false
  tags                       = local.tags
}

resource "aws_ssm_maintenance_window_target" "patch" {
  count         = local.use_association ? 0 : 1
  window_id     = aws_ssm_maintenance_window.patch[0].id
  name          = "${var.name_prefix}-nodes"
  resource_type = "INSTANCE"

  targets {
    key    = "tag:${var.tag_key}"
    values = [var.tag_value]
  }
}

resource "aws_ssm_maintenance_window_task" "patch" {
  count           = local.use_association ? 0 : 1
  window_id       = aws_ssm_maintenance_window.patch[0].id
  name            = "${var.name_prefix}-patch-baseline-with-hooks"
  task_arn        = "AWS-RunPatchBaselineWithHooks"
  task_type       = "RUN_COMMAND"
  priority        = 1
  cutoff_behavior = "CANCEL_TASK"
  max_concurrency = var.max_concurrency
  max_errors      = var.max_errors

  targets {
    key    = "WindowTargetIds"
    values = [aws_ssm_maintenance_window_target.patch[0].id]
  }

  task_invocation_parameters {
    run_command_parameters {
      output_s3_bucket     = var.output_s3_bucket_name == "" ? null : var.output_s3_bucket_name
      output_s3_key_prefix = var.output_s3_bucket_name == "" ? null : var.output_s3_key_prefix

      dynamic "parameter" {
        for_each = local.patch_parameters
        content {
          name   = parameter.key
          values = [parameter.value]
        }
      }
    }
  }
}

# failure_topic_arn: failed and timed-out runs to SNS. An association's runs
# are State Manager instance association events, filtered to this
# association; a maintenance window task's are Run Command invocation
# events, which name the document but not the window: every
# AWS-RunPatchBaselineWithHooks command of the account and Region. The
# topic's policy must allow events.amazonaws.com to sns:Publish: the module
# does not change a topic it does not own.
resource "aws_cloudwatch_event_rule" "failure" {
  count       = var.failure_topic_arn == "" ? 0 : 1
  name        = "${var.name_prefix}-patch-failed"
  description = "patchagent patch runs that failed or timed out, to the failure_topic_arn topic."
  tags        = local.tags

  # Two jsonencode calls: the branches are objects of different shapes.
  event_pattern = local.use_association ? jsonencode({
    source        = ["aws.ssm"]
    "detail-type" = ["EC2 State Manager Instance Association State Change"]
    detail        = { "association-id" = aws_ssm_association.patch[*].association_id, status = ["Failed", "TimedOut"] }
    }) : jsonencode({
    source        = ["aws.ssm"]
    "detail-type" = ["EC2 Command Invocation Status-change Notification"]
    detail        = { "document-name" = ["AWS-RunPatchBaselineWithHooks"], status = ["Failed", "TimedOut"] }
  })
}

resource "aws_cloudwatch_event_target" "failure" {
  count     = var.failure_topic_arn == "" ? 0 : 1
  rule      = aws_cloudwatch_event_rule.failure[0].name
  target_id = "failure-topic"
  arn       = var.failure_topic_arn
}

# What Run Command needs of the nodes' instance profile to write the full
# output to output_s3_bucket_name: PutObject under the key prefix only, and
# the bucket's encryption configuration (read before the upload). After each
# upload SSM Agent also sets the object's ACL to bucket-owner-full-control
# and ignores a refusal: allowed for that ACL only, so a bucket of another
# account that still honours ACLs can read what the nodes write.
resource "aws_iam_policy" "output" {
  count       = var.output_s3_bucket_name == "" ? 0 : 1
  name_prefix = "${var.name_prefix}-output-"
  description = "patchagent's patch runs write their full output to this bucket and prefix."
  tags        = local.tags

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = "s3:PutObject", Resource = "arn:${data.aws_partition.current.partition}:s3:::${var.output_s3_bucket_name}/${var.output_s3_key_prefix}*" },
      {
        Effect    = "Allow"
        Action    = "s3:PutObjectAcl"
        Resource  = "arn:${data.aws_partition.current.partition}:s3:::${var.output_s3_bucket_name}/${var.output_s3_key_prefix}*"
        Condition = { StringEquals = { "s3:x-amz-acl" = "bucket-owner-full-control" } }
      },
      { Effect = "Allow", Action = "s3:GetEncryptionConfiguration", Resource = "arn:${data.aws_partition.current.partition}:s3:::${var.output_s3_bucket_name}" },
    ]
  })
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
  tags        = local.tags

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
