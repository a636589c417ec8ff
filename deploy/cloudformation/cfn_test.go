package cloudformation

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/intrinsics"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"github.com/patchagent/patchagent/deploy/ssm"
)

const templateFile = "patchagent.yaml"

var update = flag.Bool("update", false, "rewrite the documents' Content in "+templateFile+" from deploy/ssm")

// contentLine marks where a document's content is inlined, and from which file.
var contentLine = regexp.MustCompile(`^( *)Content: \| # deploy/ssm/(\S+)$`)

// syncContent returns the template with each marked Content block replaced
// by the named deploy/ssm file, indented under it.
func syncContent(tmpl []byte) ([]byte, error) {
	lines := strings.Split(string(tmpl), "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		out = append(out, lines[i])
		m := contentLine.FindStringSubmatch(lines[i])
		if m == nil {
			continue
		}
		indent := len(m[1]) + 2
		// Skip the old block: blank lines and lines indented deeper than
		// the key, but keep the blank lines that end it.
		j := i + 1
		last := i
		for ; j < len(lines); j++ {
			l := lines[j]
			if strings.TrimSpace(l) == "" {
				continue
			}
			if len(l)-len(strings.TrimLeft(l, " ")) < indent {
				break
			}
			last = j
		}
		data, err := ssm.Content(m[2])
		if err != nil {
			return nil, err
		}
		for _, l := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
			if l == "" {
				out = append(out, "")
			} else {
				out = append(out, strings.Repeat(" ", indent)+l)
			}
		}
		i = last
	}
	return []byte(strings.Join(out, "\n")), nil
}

func TestContentMatchesSSMFiles(t *testing.T) {
	raw, err := os.ReadFile(templateFile)
	if err != nil {
		t.Fatal(err)
	}
	synced, err := syncContent(raw)
	if err != nil {
		t.Fatal(err)
	}
	if *update && !bytes.Equal(raw, synced) {
		if err := os.WriteFile(templateFile, synced, 0o644); err != nil {
			t.Fatal(err)
		}
		raw = synced
	}
	if !bytes.Equal(raw, synced) {
		t.Errorf("%s: a document's Content differs from deploy/ssm; run go test ./deploy/cloudformation -run TestContentMatchesSSMFiles -update", templateFile)
	}
	// And as CloudFormation reads it: the Content string is the file, byte for byte.
	tmpl := parseTemplate(t, raw)
	seen := map[string]bool{}
	for _, ph := range ssm.Phases {
		name := logicalID(ph)
		res := tmpl.resource(t, name)
		want, _ := ssm.Content(ph.File)
		got, ok := res.props["Content"].(string)
		if !ok {
			t.Errorf("%s: Content is %T, want the document as a string", name, res.props["Content"])
			continue
		}
		if got != string(want) {
			t.Errorf("%s: Content differs from deploy/ssm/%s", name, ph.File)
		}
		seen[name] = true
	}
	docs := 0
	for _, r := range tmpl.Resources {
		if r.Type == "AWS::SSM::Document" {
			docs++
		}
	}
	if docs != len(ssm.Phases) {
		t.Errorf("%d AWS::SSM::Document resources, want %d", docs, len(ssm.Phases))
	}
}

func logicalID(ph ssm.Phase) string { return ph.Hook + "Hook" }

// --- the template as plain data, CloudFormation's YAML tags made explicit ---

type template struct {
	Parameters map[string]map[string]any
	Conditions map[string]any
	Resources  map[string]resource
	Outputs    map[string]map[string]any
}

type resource struct {
	Type  string
	cond  string // the resource's Condition, "" for always
	props map[string]any
}

func (tp template) resource(t *testing.T, name string) resource {
	t.Helper()
	r, ok := tp.Resources[name]
	if !ok {
		t.Fatalf("no resource %s", name)
	}
	return r
}

func parseTemplate(t *testing.T, raw []byte) template {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		t.Fatalf("%s: %v", templateFile, err)
	}
	v, err := plain(root.Content[0])
	if err != nil {
		t.Fatalf("%s: %v", templateFile, err)
	}
	top := v.(map[string]any)
	for k := range top {
		if !slices.Contains([]string{"AWSTemplateFormatVersion", "Description", "Parameters", "Conditions", "Resources", "Outputs", "Metadata", "Mappings"}, k) {
			t.Errorf("unknown top-level key %s", k)
		}
	}
	var tp template
	tp.Parameters = mapOfMaps(t, top["Parameters"])
	tp.Outputs = mapOfMaps(t, top["Outputs"])
	tp.Conditions, _ = top["Conditions"].(map[string]any)
	tp.Resources = map[string]resource{}
	for name, r := range mapOfMaps(t, top["Resources"]) {
		typ, _ := r["Type"].(string)
		props, _ := r["Properties"].(map[string]any)
		cond, _ := r["Condition"].(string)
		tp.Resources[name] = resource{Type: typ, cond: cond, props: props}
	}
	return tp
}

func mapOfMaps(t *testing.T, v any) map[string]map[string]any {
	t.Helper()
	out := map[string]map[string]any{}
	m, _ := v.(map[string]any)
	for k, e := range m {
		em, ok := e.(map[string]any)
		if !ok {
			t.Fatalf("%s is not a mapping", k)
		}
		out[k] = em
	}
	return out
}

// plain turns a YAML node into maps, lists and scalars, with each short-form
// intrinsic (!Ref X, !GetAtt A.B, !Sub s, !If [...]) as its long form.
func plain(n *yaml.Node) (any, error) {
	var v any
	switch n.Kind {
	case yaml.MappingNode:
		m := map[string]any{}
		for i := 0; i < len(n.Content); i += 2 {
			k := n.Content[i].Value
			if _, dup := m[k]; dup {
				return nil, fmt.Errorf("line %d: duplicate key %s", n.Content[i].Line, k)
			}
			e, err := plain(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[k] = e
		}
		v = m
	case yaml.SequenceNode:
		l := []any{}
		for _, c := range n.Content {
			e, err := plain(c)
			if err != nil {
				return nil, err
			}
			l = append(l, e)
		}
		v = l
	case yaml.ScalarNode:
		if strings.HasPrefix(n.Tag, "!!") || n.Tag == "" {
			if err := n.Decode(&v); err != nil {
				return nil, err
			}
		} else {
			v = n.Value
		}
	case yaml.AliasNode:
		return nil, fmt.Errorf("line %d: aliases are not CloudFormation", n.Line)
	default:
		return nil, fmt.Errorf("line %d: unexpected node", n.Line)
	}
	if strings.HasPrefix(n.Tag, "!") && !strings.HasPrefix(n.Tag, "!!") {
		fn := strings.TrimPrefix(n.Tag, "!")
		switch fn {
		case "Ref", "Condition":
			return map[string]any{fn: v}, nil
		case "GetAtt":
			if s, ok := v.(string); ok {
				a, b, _ := strings.Cut(s, ".")
				v = []any{a, b}
			}
		}
		known := []string{"Base64", "Cidr", "FindInMap", "GetAtt", "GetAZs", "If", "ImportValue", "Join", "Select", "Split", "Sub", "Transform", "And", "Equals", "Not", "Or", "ToJsonString", "Length"}
		if !slices.Contains(known, fn) {
			return nil, fmt.Errorf("line %d: unknown tag !%s", n.Line, fn)
		}
		return map[string]any{"Fn::" + fn: v}, nil
	}
	return v, nil
}

// --- references ---

var pseudo = []string{"AWS::AccountId", "AWS::NoValue", "AWS::NotificationARNs", "AWS::Partition", "AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix"}

var subVar = regexp.MustCompile(`\$\{([^}!]+)\}`)

// checkRefs reports every Ref, GetAtt, Sub variable and condition name in v
// that names nothing in the template.
func (tp template) checkRefs(t *testing.T, where string, v any, allowResources bool) {
	t.Helper()
	known := func(name string) bool {
		if _, ok := tp.Parameters[name]; ok {
			return true
		}
		if _, ok := tp.Resources[name]; ok && allowResources {
			return true
		}
		return slices.Contains(pseudo, name)
	}
	switch x := v.(type) {
	case []any:
		for _, e := range x {
			tp.checkRefs(t, where, e, allowResources)
		}
	case map[string]any:
		if len(x) == 1 {
			for fn, arg := range x {
				switch fn {
				case "Ref":
					if s, _ := arg.(string); !known(s) {
						t.Errorf("%s: Ref %v names no parameter or resource", where, arg)
					}
				case "Fn::GetAtt":
					l, _ := arg.([]any)
					if len(l) != 2 {
						t.Errorf("%s: GetAtt %v", where, arg)
					} else if r, ok := tp.Resources[fmt.Sprint(l[0])]; !ok || !allowResources {
						t.Errorf("%s: GetAtt %v names no resource", where, arg)
					} else if !readOnly(t, r.Type, fmt.Sprint(l[1])) {
						t.Errorf("%s: GetAtt %v: %s has no attribute %v", where, arg, r.Type, l[1])
					}
				case "Fn::Sub":
					s, ok := arg.(string)
					if !ok {
						t.Errorf("%s: only the one-argument form of Sub is used here", where)
					}
					for _, m := range subVar.FindAllStringSubmatch(s, -1) {
						name, attr, isAtt := strings.Cut(m[1], ".")
						if isAtt {
							r, ok := tp.Resources[name]
							if !ok || !allowResources || !readOnly(t, r.Type, attr) {
								t.Errorf("%s: Sub ${%s} names no resource attribute", where, m[1])
							}
						} else if !known(name) {
							t.Errorf("%s: Sub ${%s} names no parameter or resource", where, m[1])
						}
					}
				case "Fn::If":
					l, _ := arg.([]any)
					if len(l) != 3 {
						t.Errorf("%s: If %v wants 3 arguments", where, arg)
					} else if _, ok := tp.Conditions[fmt.Sprint(l[0])]; !ok {
						t.Errorf("%s: If names no condition %v", where, l[0])
					}
				case "Condition":
					if _, ok := tp.Conditions[fmt.Sprint(arg)]; !ok {
						t.Errorf("%s: Condition %v names no condition", where, arg)
					}
				}
			}
		}
		for k, e := range x {
			tp.checkRefs(t, where+"."+k, e, allowResources)
		}
	}
}

func TestReferencesResolve(t *testing.T) {
	raw, _ := os.ReadFile(templateFile)
	tp := parseTemplate(t, raw)
	for name, c := range tp.Conditions {
		tp.checkRefs(t, "Conditions."+name, c, false)
	}
	for name, r := range tp.Resources {
		tp.checkRefs(t, "Resources."+name, r.props, true)
	}
	for name, o := range tp.Outputs {
		tp.checkRefs(t, "Outputs."+name, o, true)
	}
	// Every parameter and condition is used.
	text := string(raw)
	for name := range tp.Parameters {
		if !regexp.MustCompile(`(!Ref |\$\{)` + regexp.QuoteMeta(name) + `\b`).MatchString(text) {
			t.Errorf("parameter %s is not used", name)
		}
	}
	for name := range tp.Conditions {
		if !regexp.MustCompile(`\[` + name + `,|- ` + name + `\n|Condition: ` + name + `\n`).MatchString(text) {
			t.Errorf("condition %s is not used", name)
		}
	}
}

// --- parameters ---

func TestParameters(t *testing.T) {
	raw, _ := os.ReadFile(templateFile)
	tp := parseTemplate(t, raw)
	for name, p := range tp.Parameters {
		if p["Type"] != "String" {
			t.Errorf("parameter %s: Type %v", name, p["Type"])
		}
		if p["Description"] == nil {
			t.Errorf("parameter %s: no Description", name)
		}
		def, hasDefault := p["Default"].(string)
		if pat, ok := p["AllowedPattern"].(string); ok {
			re, err := regexp.Compile(pat)
			if err != nil {
				t.Errorf("parameter %s: AllowedPattern: %v", name, err)
			} else if hasDefault && !re.MatchString(def) {
				t.Errorf("parameter %s: default %q does not match %s", name, def, pat)
			}
		}
		if vals, ok := p["AllowedValues"].([]any); ok && hasDefault && !slices.Contains(vals, any(def)) {
			t.Errorf("parameter %s: default %q not in AllowedValues %v", name, def, vals)
		}
	}
	// The rollout defaults documented in the template.
	want := map[string]string{"MaxConcurrency": "10%", "MaxErrors": "0", "RebootOption": "RebootIfNeeded", "ScheduleExpression": "cron(0 3 ? * SUN *)", "SnapshotId": "", "OutputS3BucketName": "", "TagKey": "PatchGroup"}
	for k, v := range want {
		if got := tp.Parameters[k]["Default"]; got != v {
			t.Errorf("parameter %s: default %v, want %q", k, got, v)
		}
	}
	if _, ok := tp.Parameters["TagValue"]["Default"]; ok {
		t.Error("TagValue has a default: the deployer must choose the nodes")
	}
	// TagValue also tags the documents and the window: SSM's tag characters.
	tagRe := regexp.MustCompile(tp.Parameters["TagValue"]["AllowedPattern"].(string))
	for _, ok := range []string{"my-app", "Web Tier 1", "é_.:/=+-@"} {
		if !tagRe.MatchString(ok) {
			t.Errorf("TagValue refuses %q", ok)
		}
	}
	for _, bad := range []string{"", "a,b", "a;b", "a*", strings.Repeat("a", 257)} {
		if tagRe.MatchString(bad) {
			t.Errorf("TagValue accepts %q", bad)
		}
	}
	if d := tp.Parameters["ScheduleMode"]["Default"]; d != "association" {
		t.Errorf("ScheduleMode default %v, want association (the deployed behaviour so far)", d)
	}
	for _, o := range []string{"PreInstallHookDocName", "PostInstallHookDocName", "OnExitHookDocName", "AssociationId", "AssociationName"} {
		if _, ok := tp.Outputs[o]; !ok {
			t.Errorf("no output %s", o)
		}
	}
}

// --- resolution and schema validation ---

// scenarios are parameter values the template is resolved with, on top of
// the defaults: with and without the optional SnapshotId and S3 output.
var scenarios = map[string]map[string]string{
	"defaults": {"TagValue": "my-app"},
	"snapshot and S3 output": {
		"TagValue": "my-app", "SnapshotId": "4e8a3d0f-1c2b-4a5e-9f6d-7b8c9d0e1f2a",
		"OutputS3BucketName": "my-ssm-output", "RebootOption": "NoReboot", "MaxConcurrency": "1", "MaxErrors": "2",
	},
	"load balancer policy": {"TagValue": "my-app", "LBTargetGroupArns": tgWeb + "," + tgAPI},
	"auto scaling policy":  {"TagValue": "my-app", "LBTargetGroupArns": tgWeb, "AutoScalingGroupArns": asgWeb},
	"failure topic":        {"TagValue": "my-app", "FailureTopicArn": topicArn},
	"maintenance window":   {"TagValue": "my-app", "ScheduleMode": "maintenance-window"},
	"maintenance window, snapshot, S3 output and failure topic": {
		"TagValue": "Web Tier 1", "ScheduleMode": "maintenance-window", "SnapshotId": "4e8a3d0f-1c2b-4a5e-9f6d-7b8c9d0e1f2a",
		"OutputS3BucketName": "my-ssm-output", "OutputS3KeyPrefix": "", "FailureTopicArn": topicArn, "MaxConcurrency": "2", "MaxErrors": "1",
	},
}

const topicArn = "arn:aws:sns:eu-west-1:123456789012:patch-alerts"

const asgWeb = "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:autoScalingGroupName/web-asg"

const (
	tgWeb = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
	tgAPI = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/api/fedcba9876543210"
)

// TestLoadBalancerPolicy: with LBTargetGroupArns the template creates the
// policy lb.aws needs: DescribeTargetHealth (which takes no resource),
// RegisterTargets and DeregisterTargets on exactly those groups; without,
// none. The parameter refuses what is not a list of target group ARNs.
func TestLoadBalancerPolicy(t *testing.T) {
	tp := parseTemplate(t, mustReadTemplate(t))
	r := newResolver(tp, scenarios["load balancer policy"])
	if !r.cond(t, "HasLBTargetGroups") || newResolver(tp, scenarios["defaults"]).cond(t, "HasLBTargetGroups") {
		t.Fatal("HasLBTargetGroups: want true with target groups, false without")
	}
	describe := map[string]any{"Effect": "Allow", "Resource": "*", "Action": []any{"elasticloadbalancing:DescribeTargetHealth",
		"elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetGroups", "ec2:DescribeInstances"}}
	statements := func(r resolver) []any {
		if !r.cond(t, "HasLBPolicy") {
			t.Fatal("HasLBPolicy false with a target group or an Auto Scaling group")
		}
		doc := r.eval(t, tp.resource(t, "LoadBalancerPolicy").props).(map[string]any)["PolicyDocument"].(map[string]any)
		return doc["Statement"].([]any)
	}
	check := func(name string, st []any, want []map[string]any) {
		if len(st) != len(want) {
			t.Fatalf("%s: statements %v", name, st)
		}
		for i := range want {
			if !reflect.DeepEqual(st[i], any(want[i])) {
				t.Errorf("%s: statement %d: %v, want %v", name, i, st[i], want[i])
			}
		}
	}
	check("target groups", statements(r), []map[string]any{describe,
		{"Effect": "Allow", "Action": []any{"elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"}, "Resource": []any{tgWeb, tgAPI}},
	})
	check("Auto Scaling", statements(newResolver(tp, scenarios["auto scaling policy"])), []map[string]any{describe,
		{"Effect": "Allow", "Action": []any{"elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"}, "Resource": []any{tgWeb}},
		{"Effect": "Allow", "Action": []any{"autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups"}, "Resource": "*"},
		{"Effect": "Allow", "Action": []any{"autoscaling:EnterStandby", "autoscaling:ExitStandby", "autoscaling:UpdateAutoScalingGroup"}, "Resource": []any{asgWeb}},
	})
	if newResolver(tp, scenarios["defaults"]).cond(t, "HasLBPolicy") {
		t.Error("HasLBPolicy true with neither")
	}
	asgRe := regexp.MustCompile(tp.Parameters["AutoScalingGroupArns"]["AllowedPattern"].(string))
	for _, ok := range []string{"", asgWeb, asgWeb + "," + asgWeb} {
		if !asgRe.MatchString(ok) {
			t.Errorf("AutoScalingGroupArns refuses %q", ok)
		}
	}
	for _, bad := range []string{"web-asg", asgWeb + ",", tgWeb} {
		if asgRe.MatchString(bad) {
			t.Errorf("AutoScalingGroupArns accepts %q", bad)
		}
	}
	re := regexp.MustCompile(tp.Parameters["LBTargetGroupArns"]["AllowedPattern"].(string))
	for _, ok := range []string{"", tgWeb, tgWeb + "," + tgAPI} {
		if !re.MatchString(ok) {
			t.Errorf("LBTargetGroupArns refuses %q", ok)
		}
	}
	for _, bad := range []string{"web", tgWeb + ",", tgWeb + ", " + tgAPI, "arn:aws:elasticloadbalancing:eu-west-1:123456789012:loadbalancer/app/x/0123456789abcdef"} {
		if re.MatchString(bad) {
			t.Errorf("LBTargetGroupArns accepts %q", bad)
		}
	}
}

type resolver struct {
	tp     template
	params map[string]string
}

var noValue = &struct{}{}

func (r resolver) cond(t *testing.T, name string) bool {
	v := r.eval(t, r.tp.Conditions[name])
	b, ok := v.(bool)
	if !ok {
		t.Fatalf("condition %s evaluates to %v", name, v)
	}
	return b
}

// eval resolves intrinsics: Ref of a parameter is its value, Ref of a
// document its Name, GetAtt a placeholder.
func (r resolver) eval(t *testing.T, v any) any {
	t.Helper()
	switch x := v.(type) {
	case []any:
		out := []any{}
		for _, e := range x {
			if ev := r.eval(t, e); ev != noValue {
				out = append(out, ev)
			}
		}
		return out
	case map[string]any:
		if len(x) == 1 {
			for fn, arg := range x {
				switch fn {
				case "Ref":
					name := arg.(string)
					if name == "AWS::NoValue" {
						return noValue
					}
					if p, ok := r.params[name]; ok {
						return p
					}
					if res, ok := r.tp.Resources[name]; ok {
						if n, ok := res.props["Name"]; ok {
							return r.eval(t, n)
						}
						return "ref-" + name
					}
					t.Fatalf("Ref %s unresolved", name)
				case "Fn::GetAtt":
					return fmt.Sprintf("getatt-%v", arg)
				case "Fn::Sub":
					return subVar.ReplaceAllStringFunc(arg.(string), func(m string) string {
						return fmt.Sprint(r.eval(t, map[string]any{"Ref": m[2 : len(m)-1]}))
					})
				case "Fn::If":
					l := arg.([]any)
					if r.cond(t, l[0].(string)) {
						return r.eval(t, l[1])
					}
					return r.eval(t, l[2])
				case "Fn::Equals":
					l := arg.([]any)
					return reflect.DeepEqual(r.eval(t, l[0]), r.eval(t, l[1]))
				case "Fn::Not":
					return !r.eval(t, arg.([]any)[0]).(bool)
				case "Fn::Or":
					for _, c := range arg.([]any) {
						if r.eval(t, c).(bool) {
							return true
						}
					}
					return false
				case "Fn::Split":
					l := arg.([]any)
					var out []any
					for _, p := range strings.Split(fmt.Sprint(r.eval(t, l[1])), l[0].(string)) {
						out = append(out, p)
					}
					return out
				case "Condition":
					return r.cond(t, arg.(string))
				}
				if strings.HasPrefix(fn, "Fn::") {
					t.Fatalf("resolver does not handle %s", fn)
				}
			}
		}
		out := map[string]any{}
		for k, e := range x {
			if ev := r.eval(t, e); ev != noValue {
				out[k] = ev
			}
		}
		return out
	}
	return v
}

func newResolver(tp template, overrides map[string]string) resolver {
	params := map[string]string{}
	for name, p := range tp.Parameters {
		if d, ok := p["Default"].(string); ok {
			params[name] = d
		}
	}
	for k, v := range overrides {
		params[k] = v
	}
	// The pseudo parameters the template uses, as in eu-west-1.
	params["AWS::Partition"] = "aws"
	params["AWS::Region"] = "eu-west-1"
	params["AWS::AccountId"] = "123456789012"
	return resolver{tp: tp, params: params}
}

// exists reports whether the resource is created with r's parameters.
func (r resolver) exists(t *testing.T, name string) bool {
	t.Helper()
	res := r.tp.resource(t, name)
	return res.cond == "" || r.cond(t, res.cond)
}

var schemaFiles = map[string]string{
	"AWS::SSM::Document":                "aws-ssm-document.json",
	"AWS::SSM::Association":             "aws-ssm-association.json",
	"AWS::IAM::ManagedPolicy":           "aws-iam-managedpolicy.json",
	"AWS::SSM::MaintenanceWindow":       "aws-ssm-maintenancewindow.json",
	"AWS::SSM::MaintenanceWindowTarget": "aws-ssm-maintenancewindowtarget.json",
	"AWS::SSM::MaintenanceWindowTask":   "aws-ssm-maintenancewindowtask.json",
	"AWS::Events::Rule":                 "aws-events-rule.json",
}

var schemaCache = map[string]map[string]any{}

func schemaDoc(t *testing.T, typ string) map[string]any {
	t.Helper()
	if d, ok := schemaCache[typ]; ok {
		return d
	}
	file, ok := schemaFiles[typ]
	if !ok {
		t.Fatalf("no registry schema for %s in testdata/schemas", typ)
	}
	data, err := os.ReadFile(filepath.Join("testdata", "schemas", file))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatal(err)
	}
	schemaCache[typ] = d
	return d
}

// readOnly reports whether attr is a GetAtt-able attribute of typ.
func readOnly(t *testing.T, typ, attr string) bool {
	ro, _ := schemaDoc(t, typ)["readOnlyProperties"].([]any)
	for _, p := range ro {
		if p == "/properties/"+attr {
			return true
		}
	}
	return false
}

func compile(t *testing.T, typ string) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	url := "file:///" + schemaFiles[typ]
	if err := c.AddResource(url, schemaDoc(t, typ)); err != nil {
		t.Fatal(err)
	}
	s, err := c.Compile(url)
	if err != nil {
		t.Fatalf("compiling the %s schema: %v", typ, err)
	}
	return s
}

// jsonValue round-trips v through JSON, the validator's data model.
func jsonValue(t *testing.T, v any) any {
	t.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	out, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestResourcesMatchRegistrySchemas(t *testing.T) {
	raw, _ := os.ReadFile(templateFile)
	tp := parseTemplate(t, raw)
	schemas := map[string]*jsonschema.Schema{}
	for scen, over := range scenarios {
		r := newResolver(tp, over)
		for name, res := range tp.Resources {
			if !r.exists(t, name) {
				continue
			}
			if schemas[res.Type] == nil {
				schemas[res.Type] = compile(t, res.Type)
			}
			props := r.eval(t, res.props)
			if err := schemas[res.Type].Validate(jsonValue(t, props)); err != nil {
				t.Errorf("%s: %s.Properties against the %s registry schema:\n%v", scen, name, res.Type, err)
			}
			// Create-only properties that are read-only cannot be set.
			ro, _ := schemaDoc(t, res.Type)["readOnlyProperties"].([]any)
			for _, p := range ro {
				if _, set := props.(map[string]any)[strings.TrimPrefix(p.(string), "/properties/")]; set {
					t.Errorf("%s: %s sets read-only %s", scen, name, p)
				}
			}
		}
	}
}

func TestAssociation(t *testing.T) {
	raw, _ := os.ReadFile(templateFile)
	tp := parseTemplate(t, raw)
	var assocs []string
	for name, res := range tp.Resources {
		if res.Type == "AWS::SSM::Association" {
			assocs = append(assocs, name)
		}
	}
	if len(assocs) != 1 {
		t.Fatalf("associations %v, want exactly one", assocs)
	}
	for scen, over := range scenarios {
		r := newResolver(tp, over)
		if r.exists(t, assocs[0]) != (r.params["ScheduleMode"] == "association") {
			t.Errorf("%s: ScheduleMode %s, association created: %v", scen, r.params["ScheduleMode"], r.exists(t, assocs[0]))
		}
		if !r.exists(t, assocs[0]) {
			continue
		}
		a := r.eval(t, tp.Resources[assocs[0]].props).(map[string]any)
		check := func(key string, want any) {
			t.Helper()
			if got := a[key]; !reflect.DeepEqual(got, want) {
				t.Errorf("%s: %s = %#v, want %#v", scen, key, got, want)
			}
		}
		check("Name", "AWS-RunPatchBaselineWithHooks")
		check("ApplyOnlyAtCronInterval", true)
		check("MaxConcurrency", r.params["MaxConcurrency"])
		check("MaxErrors", r.params["MaxErrors"])
		check("ScheduleExpression", r.params["ScheduleExpression"])
		check("ComplianceSeverity", r.params["ComplianceSeverity"])
		check("Targets", []any{map[string]any{"Key": "tag:" + r.params["TagKey"], "Values": []any{r.params["TagValue"]}}})
		if _, ok := a["DocumentVersion"]; ok {
			t.Errorf("%s: DocumentVersion is invalid for an AWS-owned document", scen)
		}
		check("Parameters", patchParameters(t, r))
		if b := r.params["OutputS3BucketName"]; b != "" {
			check("OutputLocation", map[string]any{"S3Location": map[string]any{"OutputS3BucketName": b, "OutputS3KeyPrefix": r.params["OutputS3KeyPrefix"]}})
		} else {
			check("OutputLocation", nil)
		}
	}
	// The hook documents are referenced by Ref (so the association waits for them).
	p := tp.Resources[assocs[0]].props["Parameters"].(map[string]any)
	for _, ph := range ssm.Phases {
		want := []any{map[string]any{"Ref": logicalID(ph)}}
		if got := p[ph.Hook+"HookDocName"]; !reflect.DeepEqual(got, want) {
			t.Errorf("%sHookDocName = %v, want [!Ref %s]", ph.Hook, got, logicalID(ph))
		}
	}
}

// patchParameters is what the association and the maintenance window task
// both pass to AWS-RunPatchBaselineWithHooks with r's parameters.
func patchParameters(t *testing.T, r resolver) map[string]any {
	t.Helper()
	params := map[string]any{
		"Operation":    []any{"Install"},
		"RebootOption": []any{r.params["RebootOption"]},
	}
	for _, ph := range ssm.Phases {
		params[ph.Hook+"HookDocName"] = []any{r.eval(t, map[string]any{"Ref": logicalID(ph)})}
	}
	if id := r.params["SnapshotId"]; id != "" {
		params["SnapshotId"] = []any{id}
	}
	return params
}

// TestMaintenanceWindow: ScheduleMode maintenance-window replaces the
// association with a window on the same schedule, a target by the same tag
// and a Run Command task with the same parameters and rate controls, run
// with the service-linked role (no ServiceRoleArn).
func TestMaintenanceWindow(t *testing.T) {
	tp := parseTemplate(t, mustReadTemplate(t))
	windowed := 0
	for scen, over := range scenarios {
		r := newResolver(tp, over)
		mw := r.params["ScheduleMode"] == "maintenance-window"
		for _, name := range []string{"PatchWindow", "PatchWindowTarget", "PatchWindowTask"} {
			if r.exists(t, name) != mw {
				t.Errorf("%s: ScheduleMode %s, %s created: %v", scen, r.params["ScheduleMode"], name, !mw)
			}
		}
		if !mw {
			continue
		}
		windowed++
		check := func(res string, want map[string]any) {
			t.Helper()
			if got := r.eval(t, tp.resource(t, res).props); !reflect.DeepEqual(got, any(want)) {
				t.Errorf("%s: %s =\n%#v\nwant\n%#v", scen, res, got, want)
			}
		}
		tags := []any{map[string]any{"Key": r.params["TagKey"], "Value": r.params["TagValue"]}}
		check("PatchWindow", map[string]any{
			"Name": "patchagent-patch-window", "Description": "patchagent AWS-RunPatchBaselineWithHooks window.",
			"Schedule": r.params["ScheduleExpression"], "Duration": 4, "Cutoff": 1, "AllowUnassociatedTargets": false, "Tags": tags,
		})
		window := r.eval(t, map[string]any{"Ref": "PatchWindow"})
		check("PatchWindowTarget", map[string]any{
			"WindowId": window, "Name": "patchagent-nodes", "ResourceType": "INSTANCE",
			"Targets": []any{map[string]any{"Key": "tag:" + r.params["TagKey"], "Values": []any{r.params["TagValue"]}}},
		})
		runCommand := map[string]any{"Parameters": patchParameters(t, r)}
		if b := r.params["OutputS3BucketName"]; b != "" {
			runCommand["OutputS3BucketName"] = b
			runCommand["OutputS3KeyPrefix"] = r.params["OutputS3KeyPrefix"]
		}
		check("PatchWindowTask", map[string]any{
			"WindowId": window, "Name": "patchagent-patch-baseline-with-hooks",
			"TaskArn": "AWS-RunPatchBaselineWithHooks", "TaskType": "RUN_COMMAND", "Priority": 1, "CutoffBehavior": "CANCEL_TASK",
			"MaxConcurrency": r.params["MaxConcurrency"], "MaxErrors": r.params["MaxErrors"],
			"Targets":                  []any{map[string]any{"Key": "WindowTargetIds", "Values": []any{r.eval(t, map[string]any{"Ref": "PatchWindowTarget"})}}},
			"TaskInvocationParameters": map[string]any{"MaintenanceWindowRunCommandParameters": runCommand},
		})
	}
	if windowed == 0 {
		t.Error("no scenario with ScheduleMode maintenance-window")
	}
	// The window must hold the three hooks' timeouts with an hour to spare
	// for the patching and the reboot, after the cutoff.
	var hooks int
	for _, ph := range ssm.Phases {
		data, _ := ssm.Content(ph.File)
		var d struct {
			MainSteps []struct {
				Inputs struct {
					TimeoutSeconds string `yaml:"timeoutSeconds"`
				} `yaml:"inputs"`
			} `yaml:"mainSteps"`
		}
		if err := yaml.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		var secs int
		fmt.Sscan(d.MainSteps[0].Inputs.TimeoutSeconds, &secs)
		hooks += secs
	}
	p := tp.resource(t, "PatchWindow").props
	if d, c := p["Duration"].(int), p["Cutoff"].(int); (d-c)*3600 < hooks+3600 {
		t.Errorf("window Duration %d h - Cutoff %d h is less than the hooks' %d s + 1 h", d, c, hooks)
	}
	if _, ok := tp.resource(t, "PatchWindowTask").props["ServiceRoleArn"]; ok {
		t.Error("PatchWindowTask sets ServiceRoleArn: the template documents the service-linked role")
	}
}

// TestFailureRule: with FailureTopicArn, an EventBridge rule sends the
// failed and timed-out runs of this deployment to the topic: the
// association's instance association events, or the Run Command
// invocations of the patch document under a maintenance window.
func TestFailureRule(t *testing.T) {
	tp := parseTemplate(t, mustReadTemplate(t))
	seen := map[string]bool{}
	for scen, over := range scenarios {
		r := newResolver(tp, over)
		if r.exists(t, "FailureRule") != (r.params["FailureTopicArn"] != "") {
			t.Errorf("%s: FailureRule created %v with FailureTopicArn %q", scen, r.exists(t, "FailureRule"), r.params["FailureTopicArn"])
		}
		if !r.exists(t, "FailureRule") {
			continue
		}
		seen[r.params["ScheduleMode"]] = true
		rule := r.eval(t, tp.resource(t, "FailureRule").props).(map[string]any)
		pattern := map[string]any{"source": []any{"aws.ssm"}}
		if r.params["ScheduleMode"] == "association" {
			pattern["detail-type"] = []any{"EC2 State Manager Instance Association State Change"}
			pattern["detail"] = map[string]any{"association-id": []any{r.eval(t, map[string]any{"Fn::GetAtt": []any{"PatchAssociation", "AssociationId"}})}, "status": []any{"Failed", "TimedOut"}}
		} else {
			pattern["detail-type"] = []any{"EC2 Command Invocation Status-change Notification"}
			pattern["detail"] = map[string]any{"document-name": []any{"AWS-RunPatchBaselineWithHooks"}, "status": []any{"Failed", "TimedOut"}}
		}
		for k, want := range map[string]any{
			"State": "ENABLED", "EventPattern": pattern,
			"Targets": []any{map[string]any{"Id": "failure-topic", "Arn": r.params["FailureTopicArn"]}},
		} {
			if !reflect.DeepEqual(rule[k], want) {
				t.Errorf("%s: FailureRule %s = %#v, want %#v", scen, k, rule[k], want)
			}
		}
	}
	if !seen["association"] || !seen["maintenance-window"] {
		t.Errorf("FailureRule checked in modes %v, want both", seen)
	}
	// The association-id filter is only valid where the association exists.
	ep := tp.resource(t, "FailureRule").props["EventPattern"].(map[string]any)["Fn::If"].([]any)
	if ep[0] != "UseAssociation" {
		t.Errorf("FailureRule's EventPattern depends on %v, want UseAssociation", ep[0])
	}
	re := regexp.MustCompile(tp.Parameters["FailureTopicArn"]["AllowedPattern"].(string))
	for _, ok := range []string{"", topicArn, "arn:aws-us-gov:sns:us-gov-west-1:123456789012:a_b-c"} {
		if !re.MatchString(ok) {
			t.Errorf("FailureTopicArn refuses %q", ok)
		}
	}
	for _, bad := range []string{"patch-alerts", topicArn + ",", "arn:aws:sqs:eu-west-1:123456789012:patch-alerts", "arn:aws:sns:eu-west-1:123456789012:"} {
		if re.MatchString(bad) {
			t.Errorf("FailureTopicArn accepts %q", bad)
		}
	}
}

// TestOutputPolicy: with OutputS3BucketName, a managed policy for the
// instance profile allows PutObject under the key prefix only and reading
// the bucket's encryption configuration; without, none.
func TestOutputPolicy(t *testing.T) {
	tp := parseTemplate(t, mustReadTemplate(t))
	checked := 0
	for scen, over := range scenarios {
		r := newResolver(tp, over)
		b := r.params["OutputS3BucketName"]
		if r.exists(t, "OutputPolicy") != (b != "") {
			t.Errorf("%s: OutputPolicy created %v with OutputS3BucketName %q", scen, r.exists(t, "OutputPolicy"), b)
		}
		if b == "" {
			continue
		}
		checked++
		doc := r.eval(t, tp.resource(t, "OutputPolicy").props).(map[string]any)["PolicyDocument"]
		want := map[string]any{"Version": "2012-10-17", "Statement": []any{
			map[string]any{"Effect": "Allow", "Action": "s3:PutObject", "Resource": "arn:aws:s3:::" + b + "/" + r.params["OutputS3KeyPrefix"] + "*"},
			map[string]any{"Effect": "Allow", "Action": "s3:PutObjectAcl", "Resource": "arn:aws:s3:::" + b + "/" + r.params["OutputS3KeyPrefix"] + "*",
				"Condition": map[string]any{"StringEquals": map[string]any{"s3:x-amz-acl": "bucket-owner-full-control"}}},
			map[string]any{"Effect": "Allow", "Action": "s3:GetEncryptionConfiguration", "Resource": "arn:aws:s3:::" + b},
		}}
		if !reflect.DeepEqual(doc, any(want)) {
			t.Errorf("%s: OutputPolicy document\n%#v\nwant\n%#v", scen, doc, want)
		}
	}
	if checked < 2 {
		t.Errorf("OutputPolicy checked in %d scenarios, want a prefix and an empty one", checked)
	}
	if o := tp.Outputs["OutputPolicyArn"]; o["Condition"] != "HasOutputBucket" || !reflect.DeepEqual(o["Value"], any(map[string]any{"Ref": "OutputPolicy"})) {
		t.Errorf("output OutputPolicyArn %v, want !Ref OutputPolicy under HasOutputBucket", o)
	}
}

func TestDocumentsProperties(t *testing.T) {
	raw, _ := os.ReadFile(templateFile)
	tp := parseTemplate(t, raw)
	r := newResolver(tp, scenarios["defaults"])
	names := map[string]bool{}
	for _, ph := range ssm.Phases {
		d := r.eval(t, tp.resource(t, logicalID(ph)).props).(map[string]any)
		for k, want := range map[string]any{"DocumentType": "Command", "DocumentFormat": "YAML", "UpdateMethod": "NewVersion"} {
			if d[k] != want {
				t.Errorf("%s: %s = %v, want %v", logicalID(ph), k, d[k], want)
			}
		}
		// Tagged like the nodes they patch: IAM can scope them by the tag.
		if want := []any{map[string]any{"Key": "PatchGroup", "Value": "my-app"}}; !reflect.DeepEqual(d["Tags"], any(want)) {
			t.Errorf("%s: Tags = %v, want %v", logicalID(ph), d["Tags"], want)
		}
		name, _ := d["Name"].(string)
		if lower := strings.ToLower(name); strings.HasPrefix(lower, "aws") || strings.HasPrefix(lower, "amazon") || strings.HasPrefix(lower, "amzn") {
			t.Errorf("%s: name %q has a reserved prefix", logicalID(ph), name)
		}
		names[name] = true
	}
	if len(names) != len(ssm.Phases) {
		t.Errorf("document names not distinct: %v", names)
	}
}

func mustReadTemplate(t *testing.T) []byte {
	t.Helper()
	raw, err := os.ReadFile(templateFile)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// withoutConditionKeys is the template without the Condition key of its
// resources and outputs: goformation's intrinsic processor takes any map
// with a "Condition" key for the Condition function and replaces the
// whole resource with a bool. The other tests check those keys.
func withoutConditionKeys(t *testing.T, raw []byte) []byte {
	t.Helper()
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	top := root.Content[0]
	for i := 0; i < len(top.Content); i += 2 {
		if s := top.Content[i].Value; s != "Resources" && s != "Outputs" {
			continue
		}
		section := top.Content[i+1]
		for j := 1; j < len(section.Content); j += 2 {
			entry := section.Content[j]
			for k := 0; k < len(entry.Content); k += 2 {
				if entry.Content[k].Value == "Condition" {
					entry.Content = append(entry.Content[:k], entry.Content[k+2:]...)
					break
				}
			}
		}
	}
	out, err := yaml.Marshal(&root)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestGoformation parses the template with goformation, whose typed
// resources reject property names CloudFormation does not know.
func TestGoformation(t *testing.T) {
	raw := withoutConditionKeys(t, mustReadTemplate(t))
	for scen, over := range scenarios {
		params := map[string]any{}
		for k, v := range over {
			params[k] = v
		}
		tmpl, err := goformation.ParseYAMLWithOptions(raw, &intrinsics.ProcessorOptions{ParameterOverrides: params, EvaluateConditions: true})
		if err != nil {
			t.Fatalf("%s: goformation: %v", scen, err)
		}
		docs := tmpl.GetAllSSMDocumentResources()
		var names []string
		for n, d := range docs {
			names = append(names, n)
			if d.DocumentType == nil || *d.DocumentType != "Command" {
				t.Errorf("%s: %s DocumentType %v", scen, n, d.DocumentType)
			}
		}
		sort.Strings(names)
		if want := []string{"OnExitHook", "PostInstallHook", "PreInstallHook"}; !slices.Equal(names, want) {
			t.Errorf("%s: documents %v, want %v", scen, names, want)
		}
		assocs := tmpl.GetAllSSMAssociationResources()
		if len(assocs) != 1 {
			t.Fatalf("%s: %d associations", scen, len(assocs))
		}
		for _, a := range assocs {
			if a.Name != "AWS-RunPatchBaselineWithHooks" {
				t.Errorf("%s: association Name %q", scen, a.Name)
			}
			if a.MaxErrors == nil || *a.MaxErrors != over["MaxErrors"] && over["MaxErrors"] != "" {
				t.Errorf("%s: MaxErrors %v", scen, a.MaxErrors)
			}
			if (a.OutputLocation != nil) != (over["OutputS3BucketName"] != "") {
				t.Errorf("%s: OutputLocation %v", scen, a.OutputLocation)
			}
		}
	}
}
