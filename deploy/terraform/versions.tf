terraform {
  required_version = ">= 1.3.0"

  required_providers {
    # 5.58.0 added aws_ssm_association's tags argument
    # (hashicorp/terraform-provider-aws#38271), which main.tf sets.
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.58.0, < 7.0"
    }
  }
}
