variable "name_prefix" {
  description = "Prefix of the document and association names (must not start with aws, amazon or amzn)."
  type        = string
  default     = "patchagent"

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.-]{3,100}$", var.name_prefix)) && !can(regex("^(?i)(aws|amazon|amzn)", var.name_prefix))
    error_message = "name_prefix must be 3-100 of [a-zA-Z0-9_.-] and must not start with aws, amazon or amzn."
  }
}

variable "tag_key" {
  description = "Tag key of the target nodes. PatchGroup also selects their patch baseline."
  type        = string
  default     = "PatchGroup"

  validation {
    condition     = can(regex("^[A-Za-z0-9 _.:/=+@-]{1,128}$", var.tag_key))
    error_message = "tag_key must be a tag key of 1-128 characters."
  }
}

variable "tag_value" {
  description = "Tag value of the target nodes."
  type        = string

  # The characters an SSM tag value allows: the module's resources carry
  # tag_key = tag_value too.
  validation {
    condition     = can(regex("^[\\p{L}\\p{Z}\\p{N}_.:/=+@-]{1,256}$", var.tag_value))
    error_message = "tag_value must be 1-256 letters, digits, spaces or _.:/=+-@."
  }
}

variable "schedule_mode" {
  description = "How the patch document is scheduled: association, a State Manager association (compliance reported per node); maintenance-window, a maintenance window of 4 hours (no new node started in its last hour) with a Run Command task, run with the Systems Manager service-linked role. Both use schedule_expression, max_concurrency and max_errors."
  type        = string
  default     = "association"

  validation {
    condition     = contains(["association", "maintenance-window"], var.schedule_mode)
    error_message = "schedule_mode must be association or maintenance-window."
  }
}

variable "failure_topic_arn" {
  description = "Optional ARN of an existing SNS topic told of failed and timed-out patch runs (an EventBridge rule). Its topic policy must allow events.amazonaws.com to sns:Publish (and its KMS key, if encrypted, to use the key). Empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^(arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256})?$", var.failure_topic_arn))
    error_message = "failure_topic_arn must be empty or an SNS topic ARN."
  }
}

variable "schedule_expression" {
  description = "When to patch, in UTC; a cron expression (apply_only_at_cron_interval does not take rate expressions). Default Sundays 03:00 UTC."
  type        = string
  default     = "cron(0 3 ? * SUN *)"

  validation {
    condition     = can(regex("^cron\\(.+\\)$", var.schedule_expression))
    error_message = "schedule_expression must be a cron(...) expression."
  }
}

variable "reboot_option" {
  description = "RebootIfNeeded reboots when installed patches need it (the on-exit hook runs after the reboot); NoReboot never reboots."
  type        = string
  default     = "RebootIfNeeded"

  validation {
    condition     = contains(["RebootIfNeeded", "NoReboot"], var.reboot_option)
    error_message = "reboot_option must be RebootIfNeeded or NoReboot."
  }
}

variable "snapshot_id" {
  description = "Optional patch snapshot GUID, so that every node of one rollout gets the same patches. Empty to let each node take its own."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})?$", var.snapshot_id))
    error_message = "snapshot_id must be empty or a GUID."
  }
}

variable "max_concurrency" {
  description = "Nodes patched at once (a number or a percentage, rounded up to at least 1). Each is out of service while patched: keep enough serving (a load balancer with every target unhealthy fails open)."
  type        = string
  default     = "10%"

  validation {
    condition     = can(regex("^([1-9][0-9]{0,6}|[1-9][0-9]%|[1-9]%|100%)$", var.max_concurrency))
    error_message = "max_concurrency must be 1-9999999 or 1%-100%."
  }
}

variable "max_errors" {
  description = "Failed nodes tolerated before the rollout stops sending to more nodes: 0 stops it at the first failed node (nodes already running finish); N stops it at failure N+1. For a hard cap, set max_concurrency to 1."
  type        = string
  default     = "0"

  validation {
    condition     = can(regex("^([1-9][0-9]{0,6}|[0]|[1-9][0-9]%|[0-9]%|100%)$", var.max_errors))
    error_message = "max_errors must be 0-9999999 or 0%-100%."
  }
}

variable "compliance_severity" {
  description = "Severity of the association's compliance status when it fails."
  type        = string
  default     = "HIGH"

  validation {
    condition     = contains(["CRITICAL", "HIGH", "MEDIUM", "LOW", "UNSPECIFIED"], var.compliance_severity)
    error_message = "compliance_severity must be CRITICAL, HIGH, MEDIUM, LOW or UNSPECIFIED."
  }
}

variable "output_s3_bucket_name" {
  description = "Optional S3 bucket for the full command output (the console keeps only 2,500 characters). Written with the nodes' instance profile. Empty for none."
  type        = string
  default     = ""

  validation {
    condition     = can(regex("^([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])?$", var.output_s3_bucket_name))
    error_message = "output_s3_bucket_name must be empty or an S3 bucket name."
  }
}

variable "output_s3_key_prefix" {
  description = "Key prefix of the output in output_s3_bucket_name."
  type        = string
  default     = "patchagent/"

  validation {
    condition     = length(var.output_s3_key_prefix) <= 500
    error_message = "output_s3_key_prefix must be at most 500 characters."
  }
}

variable "tags" {
  description = "Tags added to every resource of the module, besides tag_key = tag_value."
  type        = map(string)
  default     = {}
}

variable "lb_target_group_arns" {
  description = "ARNs of the target groups the nodes leave during patching (patchagent's lb.aws.target_groups). When set, the module creates a managed policy (output load_balancer_policy_arn) to attach to the nodes' instance profile: DescribeTargetHealth, and RegisterTargets and DeregisterTargets on these groups only."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for a in var.lb_target_group_arns : a if !can(regex("^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:[0-9]{12}:targetgroup/[A-Za-z0-9-]{1,32}/[0-9a-f]{16}$", a))]) == 0
    error_message = "lb_target_group_arns must hold target group ARNs (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)."
  }
}

variable "autoscaling_group_arns" {
  description = "ARNs of the nodes' Auto Scaling groups, for patchagent's Standby (lb.aws.standby, lb.aws.target_groups auto). When set, the module's managed policy (output load_balancer_policy_arn) also allows the Auto Scaling Describe actions, and EnterStandby, ExitStandby and UpdateAutoScalingGroup (a minimum size lowered for the patch and restored) on these groups only."
  type        = list(string)
  default     = []

  validation {
    condition     = length([for a in var.autoscaling_group_arns : a if !can(regex("^arn:aws[a-z-]*:autoscaling:[a-z0-9-]+:[0-9]{12}:autoScalingGroup:[0-9a-f-]{36}:autoScalingGroupName/[^,]{1,255}$", a))]) == 0
    error_message = "autoscaling_group_arns must hold Auto Scaling group ARNs (arn:aws:autoscaling:REGION:ACCOUNT:autoScalingGroup:UUID:autoScalingGroupName/NAME)."
  }
}
