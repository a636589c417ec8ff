package awslb

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	ec2types "github.com/aws/aws-sdk-go-v2/service/ec2/types"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"
)

// EC2 is what the capacity gate asks of the EC2 API (the SDK's client):
// the Availability Zones of instance targets.
type EC2 interface {
	DescribeInstances(context.Context, *ec2.DescribeInstancesInput, ...func(*ec2.Options)) (*ec2.DescribeInstancesOutput, error)
}

// crossZoneAttribute is the target group attribute that says whether the
// load balancer spreads requests across zones.
const crossZoneAttribute = "load_balancing.cross_zone.enabled"

// zonal reports whether the load balancer routes within each zone only for
// the group arn, so that the capacity gate must count this instance's zone
// alone: the group's attribute is false, or it defers to the load balancer
// and the group is not an ALB's (HTTP, HTTPS), whose cross-zone is always
// on. An NLB's or GWLB's own setting (off by default) is not read: their
// groups that defer to it are counted per zone, the stricter count.
func zonal(ctx context.Context, api ELBv2, arn string) (bool, error) {
	out, err := api.DescribeTargetGroupAttributes(ctx, &elbv2.DescribeTargetGroupAttributesInput{TargetGroupArn: aws.String(arn)})
	if err != nil {
		return false, fmt.Errorf("reading the attributes of %s: %w", shortARN(arn), err)
	}
	value := "use_load_balancer_configuration" // absent: the default
	for _, a := range out.Attributes {
		if aws.ToString(a.Key) == crossZoneAttribute {
			value = aws.ToString(a.Value)
		}
	}
	switch value {
	case "true":
		return false, nil
	case "false":
		return true, nil
	}
	groups, err := api.DescribeTargetGroups(ctx, &elbv2.DescribeTargetGroupsInput{TargetGroupArns: []string{arn}})
	if err != nil {
		return false, fmt.Errorf("reading target group %s: %w", shortARN(arn), err)
	}
	if len(groups.TargetGroups) == 0 {
		return false, fmt.Errorf("target group %s does not exist", shortARN(arn))
	}
	p := groups.TargetGroups[0].Protocol
	return p != types.ProtocolEnumHttp && p != types.ProtocolEnumHttps, nil
}

// zones returns the Availability Zone of each target of out: the one ELB
// reports, else, for instance targets, EC2's. An instance EC2 does not
// know (terminated) has none, and counts in no zone.
func zones(ctx context.Context, api EC2, out *elbv2.DescribeTargetHealthOutput) (map[string]string, error) {
	zone := map[string]string{}
	var ask []string
	for _, d := range out.TargetHealthDescriptions {
		if d.Target == nil {
			continue
		}
		id := aws.ToString(d.Target.Id)
		if z := aws.ToString(d.Target.AvailabilityZone); z != "" && z != "all" {
			zone[id] = z
		} else if strings.HasPrefix(id, "i-") && !slices.Contains(ask, id) {
			ask = append(ask, id)
		}
	}
	if len(ask) == 0 {
		return zone, nil
	}
	if api == nil {
		return nil, fmt.Errorf("no EC2 client to find the zones of %d instance target(s)", len(ask))
	}
	// A filter, not InstanceIds: an id EC2 no longer knows is left out
	// instead of failing the whole call. At most 200 values a filter.
	for chunk := range slices.Chunk(ask, 200) {
		p := ec2.NewDescribeInstancesPaginator(api, &ec2.DescribeInstancesInput{
			Filters: []ec2types.Filter{{Name: aws.String("instance-id"), Values: chunk}},
		})
		for p.HasMorePages() {
			page, err := p.NextPage(ctx)
			if err != nil {
				return nil, fmt.Errorf("reading the zones of the instance targets: %w", err)
			}
			for _, r := range page.Reservations {
				for _, in := range r.Instances {
					if in.Placement != nil {
						zone[aws.ToString(in.InstanceId)] = aws.ToString(in.Placement.AvailabilityZone)
					}
				}
			}
		}
	}
	return zone, nil
}
