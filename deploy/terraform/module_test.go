package terraform

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/ext/tryfunc"
	"github.com/hashicorp/hcl/v2/ext/typeexpr"
	"github.com/hashicorp/hcl/v2/hclparse"
	"github.com/hashicorp/hcl/v2/hclsyntax"
	"github.com/hashicorp/hcl/v2/hclwrite"
	"github.com/zclconf/go-cty/cty"
	"github.com/zclconf/go-cty/cty/convert"
	"github.com/zclconf/go-cty/cty/function"
	"github.com/zclconf/go-cty/cty/function/stdlib"
	"go.yaml.in/yaml/v3"

	"github.com/patchagent/patchagent/deploy/ssm"
)

// module is the parsed module: its blocks by kind.
type module struct {
	dir       string
	variables map[string]*hclsyntax.Block
	resources map[string]*hclsyntax.Block // "type.name"
	outputs   map[string]*hclsyntax.Block
	terraform []*hclsyntax.Block
}

func load(t *testing.T) *module {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	paths, _ := filepath.Glob("*.tf")
	sort.Strings(paths)
	if want := []string{"main.tf", "outputs.tf", "variables.tf", "versions.tf"}; !slices.Equal(paths, want) {
		t.Fatalf("files %v, want %v", paths, want)
	}
	p := hclparse.NewParser()
	seen := map[string]bool{}
	m := &module{dir: dir, variables: map[string]*hclsyntax.Block{}, resources: map[string]*hclsyntax.Block{}, outputs: map[string]*hclsyntax.Block{}}
	for _, path := range paths {
		src, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		// terraform fmt -check: hclwrite formats as terraform fmt does.
		if formatted := hclwrite.Format(src); !bytes.Equal(formatted, src) {
			t.Errorf("%s is not formatted as terraform fmt would", path)
		}
		f, diags := p.ParseHCL(src, path)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", path, diags)
		}
		for _, b := range f.Body.(*hclsyntax.Body).Blocks {
			key := strings.Join(b.Labels, ".")
			switch b.Type {
			case "variable":
				m.variables[key] = b
			case "resource":
				m.resources[key] = b
			case "output":
				m.outputs[key] = b
			case "terraform":
				m.terraform = append(m.terraform, b)
			default:
				t.Errorf("%s: unexpected block %s %v", path, b.Type, b.Labels)
			}
			if seen[b.Type+" "+key] && b.Type != "terraform" {
				t.Errorf("duplicate %s %s", b.Type, key)
			}
			seen[b.Type+" "+key] = true
		}
	}
	return m
}

func attr(t *testing.T, b *hclsyntax.Block, name string) *hclsyntax.Attribute {
	t.Helper()
	a, ok := b.Body.Attributes[name]
	if !ok {
		t.Fatalf("%s %v: no %s", b.Type, b.Labels, name)
	}
	return a
}

// fileFunc is Terraform's file(): the file's text.
var fileFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "path", Type: cty.String}},
	Type:   function.StaticReturnType(cty.String),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		data, err := os.ReadFile(args[0].AsString())
		if err != nil {
			return cty.NilVal, err
		}
		return cty.StringVal(string(data)), nil
	},
})

// lengthFunc is Terraform's length(): of a string too.
var lengthFunc = function.New(&function.Spec{
	Params: []function.Parameter{{Name: "value", Type: cty.DynamicPseudoType}},
	Type:   function.StaticReturnType(cty.Number),
	Impl: func(args []cty.Value, _ cty.Type) (cty.Value, error) {
		if args[0].Type() == cty.String {
			return stdlib.Strlen(args[0])
		}
		return stdlib.Length(args[0])
	},
})

func functions() map[string]function.Function {
	return map[string]function.Function{
		"file": fileFunc, "merge": stdlib.MergeFunc, "can": tryfunc.CanFunc,
		"regex": stdlib.RegexFunc, "contains": stdlib.ContainsFunc, "length": lengthFunc,
	}
}

// evalContext gives var.* (defaults, then overrides), path.module and the
// documents' names, as Terraform would at plan time.
func (m *module) evalContext(t *testing.T, overrides map[string]cty.Value) *hcl.EvalContext {
	t.Helper()
	vars := map[string]cty.Value{}
	for name, b := range m.variables {
		if d, ok := b.Body.Attributes["default"]; ok {
			v, diags := d.Expr.Value(nil)
			if diags.HasErrors() {
				t.Fatalf("variable %s default: %v", name, diags)
			}
			ty, diags := typeexpr.TypeConstraint(attr(t, b, "type").Expr)
			if diags.HasErrors() {
				t.Fatalf("variable %s type: %v", name, diags)
			}
			if v, err := convert.Convert(v, ty); err != nil {
				t.Errorf("variable %s: default does not convert to its type: %v", name, err)
			} else {
				vars[name] = v
			}
		}
	}
	for k, v := range overrides {
		vars[k] = v
	}
	ctx := &hcl.EvalContext{
		Variables: map[string]cty.Value{
			"var":  cty.ObjectVal(vars),
			"path": cty.ObjectVal(map[string]cty.Value{"module": cty.StringVal(m.dir)}),
		},
		Functions: functions(),
	}
	docs := map[string]cty.Value{}
	for key, b := range m.resources {
		if typ, name, _ := strings.Cut(key, "."); typ == "aws_ssm_document" {
			v, diags := attr(t, b, "name").Expr.Value(ctx)
			if diags.HasErrors() {
				t.Fatalf("%s name: %v", key, diags)
			}
			docs[name] = cty.ObjectVal(map[string]cty.Value{"name": v})
		}
	}
	ctx.Variables["aws_ssm_document"] = cty.ObjectVal(docs)
	return ctx
}

func eval(t *testing.T, ctx *hcl.EvalContext, a *hclsyntax.Attribute) cty.Value {
	t.Helper()
	v, diags := a.Expr.Value(ctx)
	if diags.HasErrors() {
		t.Fatalf("%s: %v", a.Name, diags)
	}
	return v
}

var baseVars = map[string]cty.Value{"tag_value": cty.StringVal("my-app")}

func TestDocuments(t *testing.T) {
	m := load(t)
	ctx := m.evalContext(t, baseVars)
	var docs []string
	for key := range m.resources {
		if strings.HasPrefix(key, "aws_ssm_document.") {
			docs = append(docs, key)
		}
	}
	if len(docs) != len(ssm.Phases) {
		t.Fatalf("aws_ssm_document resources %v, want %d", docs, len(ssm.Phases))
	}
	names := map[string]bool{}
	for _, ph := range ssm.Phases {
		key := "aws_ssm_document." + strings.ReplaceAll(strings.TrimSuffix(strings.TrimPrefix(ph.File, "patchagent-"), ".yaml"), "-", "_")
		b, ok := m.resources[key]
		if !ok {
			t.Errorf("no %s for %s", key, ph.File)
			continue
		}
		for k, want := range map[string]string{"document_type": "Command", "document_format": "YAML"} {
			if got := eval(t, ctx, attr(t, b, k)); got.AsString() != want {
				t.Errorf("%s: %s = %s, want %s", key, k, got.AsString(), want)
			}
		}
		names[eval(t, ctx, attr(t, b, "name")).AsString()] = true

		// content = file("${path.module}/../ssm/<file>"): the one source.
		c := attr(t, b, "content")
		call, ok := c.Expr.(*hclsyntax.FunctionCallExpr)
		if !ok || call.Name != "file" || len(call.Args) != 1 {
			t.Errorf("%s: content is not file(...)", key)
			continue
		}
		path, diags := call.Args[0].Value(ctx)
		if diags.HasErrors() {
			t.Fatalf("%s: %v", key, diags)
		}
		if want := filepath.Join(m.dir, "..", "ssm", ph.File); filepath.Clean(path.AsString()) != want {
			t.Errorf("%s: content reads %s, want %s", key, path.AsString(), want)
		}
		if !strings.HasPrefix(string(c.Expr.Range().SliceBytes(mustRead(t, c.SrcRange.Filename))), `file("${path.module}/`) {
			t.Errorf("%s: content's path must start with ${path.module}", key)
		}
		want, _ := ssm.Content(ph.File)
		if got := eval(t, ctx, c); got.AsString() != string(want) {
			t.Errorf("%s: content differs from deploy/ssm/%s", key, ph.File)
		}
	}
	if len(names) != len(ssm.Phases) {
		t.Errorf("document names not distinct: %v", names)
	}
}

func mustRead(t *testing.T, path string) []byte {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestAssociation(t *testing.T) {
	m := load(t)
	b, ok := m.resources["aws_ssm_association.patch"]
	if !ok {
		t.Fatal("no aws_ssm_association.patch")
	}
	for _, over := range []map[string]cty.Value{
		baseVars,
		{"tag_value": cty.StringVal("my-app"), "snapshot_id": cty.StringVal("4e8a3d0f-1c2b-4a5e-9f6d-7b8c9d0e1f2a"), "reboot_option": cty.StringVal("NoReboot")},
	} {
		ctx := m.evalContext(t, over)
		vars := ctx.Variables["var"].AsValueMap()
		str := func(name string) string { return eval(t, ctx, attr(t, b, name)).AsString() }
		if got := str("name"); got != "AWS-RunPatchBaselineWithHooks" {
			t.Errorf("name %q", got)
		}
		if !eval(t, ctx, attr(t, b, "apply_only_at_cron_interval")).True() {
			t.Error("apply_only_at_cron_interval is not true")
		}
		for a, v := range map[string]string{"schedule_expression": "schedule_expression", "max_concurrency": "max_concurrency", "max_errors": "max_errors", "compliance_severity": "compliance_severity"} {
			if got := str(a); got != vars[v].AsString() {
				t.Errorf("%s = %q, want var.%s", a, got, v)
			}
		}
		params := eval(t, ctx, attr(t, b, "parameters")).AsValueMap()
		want := map[string]string{
			"Operation":              "Install",
			"RebootOption":           vars["reboot_option"].AsString(),
			"PreInstallHookDocName":  ctx.Variables["aws_ssm_document"].GetAttr("pre_install").GetAttr("name").AsString(),
			"PostInstallHookDocName": ctx.Variables["aws_ssm_document"].GetAttr("post_install").GetAttr("name").AsString(),
			"OnExitHookDocName":      ctx.Variables["aws_ssm_document"].GetAttr("on_exit").GetAttr("name").AsString(),
		}
		if id := vars["snapshot_id"].AsString(); id != "" {
			want["SnapshotId"] = id
		}
		got := map[string]string{}
		for k, v := range params {
			got[k] = v.AsString()
		}
		if !mapsEqual(got, want) {
			t.Errorf("parameters = %v, want %v", got, want)
		}
	}
	ctx := m.evalContext(t, baseVars)
	var targets []*hclsyntax.Block
	var outputLocation bool
	for _, nb := range b.Body.Blocks {
		switch {
		case nb.Type == "targets":
			targets = append(targets, nb)
		case nb.Type == "dynamic" && len(nb.Labels) == 1 && nb.Labels[0] == "output_location":
			outputLocation = true
			for _, a := range []string{"s3_bucket_name", "s3_key_prefix"} {
				if len(nb.Body.Blocks) != 1 || nb.Body.Blocks[0].Body.Attributes[a] == nil {
					t.Errorf("output_location has no %s", a)
				}
			}
			if fe := eval(t, ctx, attr(t, nb, "for_each")); fe.LengthInt() != 0 {
				t.Error("output_location is set with the default (empty) bucket")
			}
		}
	}
	if len(targets) != 1 {
		t.Fatalf("%d targets blocks, want 1", len(targets))
	}
	if got := eval(t, ctx, attr(t, targets[0], "key")).AsString(); got != "tag:PatchGroup" {
		t.Errorf("targets key %q, want tag:PatchGroup", got)
	}
	if got := eval(t, ctx, attr(t, targets[0], "values")); got.LengthInt() != 1 || got.Index(cty.NumberIntVal(0)).AsString() != "my-app" {
		t.Errorf("targets values %#v", got)
	}
	if !outputLocation {
		t.Error("no optional output_location")
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// Attribute names of the provider's resources (terraform-provider-aws docs,
// r/ssm_document and r/ssm_association): a misspelt one fails here, as
// terraform validate would.
var knownAttrs = map[string][]string{
	"aws_ssm_document":    {"name", "document_type", "document_format", "content", "target_type", "version_name", "tags", "permissions", "attachments_source"},
	"aws_iam_policy":      {"name", "name_prefix", "description", "path", "policy", "tags", "count"},
	"aws_ssm_association": {"name", "association_name", "parameters", "targets", "schedule_expression", "apply_only_at_cron_interval", "max_concurrency", "max_errors", "output_location", "compliance_severity", "sync_compliance", "calendar_names", "document_version", "automation_target_parameter_name", "wait_for_success_timeout_seconds", "tags", "instance_id"},
}

// TestReferences: every var.X is declared, every variable is used, every
// resource reference names a resource, attribute names are the provider's.
func TestReferences(t *testing.T) {
	m := load(t)
	used := map[string]bool{}
	check := func(where string, body *hclsyntax.Body) {
		hclsyntax.VisitAll(body, func(n hclsyntax.Node) hcl.Diagnostics {
			e, ok := n.(hclsyntax.Expression)
			if !ok {
				return nil
			}
			for _, tr := range e.Variables() {
				root := tr.RootName()
				switch root {
				case "var":
					name := tr[1].(hcl.TraverseAttr).Name
					used[name] = true
					if _, ok := m.variables[name]; !ok {
						t.Errorf("%s: var.%s is not declared", where, name)
					}
				case "path", "output_location":
				default:
					if len(tr) < 2 {
						t.Errorf("%s: unknown reference %s", where, root)
						continue
					}
					key := root + "." + tr[1].(hcl.TraverseAttr).Name
					if _, ok := m.resources[key]; !ok {
						t.Errorf("%s: %s names no resource", where, key)
					}
				}
			}
			return nil
		})
	}
	for key, b := range m.resources {
		check(key, b.Body)
		typ, _, _ := strings.Cut(key, ".")
		allowed, ok := knownAttrs[typ]
		if !ok {
			t.Errorf("unexpected resource type %s", typ)
			continue
		}
		for name := range b.Body.Attributes {
			if !slices.Contains(allowed, name) {
				t.Errorf("%s: unknown attribute %s", key, name)
			}
		}
		for _, nb := range b.Body.Blocks {
			name := nb.Type
			if name == "dynamic" {
				name = nb.Labels[0]
			}
			if !slices.Contains(allowed, name) {
				t.Errorf("%s: unknown block %s", key, name)
			}
		}
	}
	for key, b := range m.outputs {
		check("output "+key, b.Body)
		if b.Body.Attributes["description"] == nil || b.Body.Attributes["value"] == nil {
			t.Errorf("output %s: want description and value", key)
		}
	}
	for name := range m.variables {
		if !used[name] {
			t.Errorf("variable %s is not used", name)
		}
	}
}

// TestVariables: each has a type and a description; the defaults pass their
// validation and bad values fail it.
func TestVariables(t *testing.T) {
	m := load(t)
	bad := map[string][]string{
		"max_concurrency":       {"0", "110%", "0%", "ten", ""},
		"max_errors":            {"-1", "101%", "x"},
		"reboot_option":         {"Reboot", ""},
		"schedule_expression":   {"rate(7 days)", "0 3 * * 0"},
		"snapshot_id":           {"not-a-guid"},
		"name_prefix":           {"aws-hooks", "ab", "has space"},
		"compliance_severity":   {"high"},
		"output_s3_bucket_name": {"Upper_Case"},
		"tag_value":             {""},
	}
	for name, b := range m.variables {
		for _, a := range []string{"type", "description"} {
			if b.Body.Attributes[a] == nil {
				t.Errorf("variable %s: no %s", name, a)
			}
		}
		var validations []*hclsyntax.Block
		for _, nb := range b.Body.Blocks {
			if nb.Type == "validation" {
				validations = append(validations, nb)
			}
		}
		ty, _ := typeexpr.TypeConstraint(attr(t, b, "type").Expr)
		if ty == cty.String && len(validations) == 0 {
			t.Errorf("variable %s: a string with no validation", name)
		}
		valid := func(v cty.Value) bool {
			ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), name: v})
			for _, vb := range validations {
				r, diags := attr(t, vb, "condition").Expr.Value(ctx)
				if diags.HasErrors() {
					t.Fatalf("variable %s: condition: %v", name, diags)
				}
				if !r.True() {
					return false
				}
			}
			return true
		}
		if d, ok := b.Body.Attributes["default"]; ok && len(validations) > 0 {
			v, _ := d.Expr.Value(nil)
			if !valid(v) {
				t.Errorf("variable %s: the default fails its validation", name)
			}
		}
		for _, s := range bad[name] {
			if valid(cty.StringVal(s)) {
				t.Errorf("variable %s: validation accepts %q", name, s)
			}
		}
	}
	if _, ok := m.variables["tag_value"].Body.Attributes["default"]; ok {
		t.Error("tag_value has a default: the deployer must choose the nodes")
	}
}

// TestSameDefaultsAsCloudFormation: the two deployments roll out alike.
func TestSameDefaultsAsCloudFormation(t *testing.T) {
	m := load(t)
	raw := mustRead(t, filepath.Join("..", "cloudformation", "patchagent.yaml"))
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		t.Fatal(err)
	}
	var params map[string]struct {
		Default *string `yaml:"Default"`
	}
	top := root.Content[0]
	for i := 0; i < len(top.Content); i += 2 {
		if top.Content[i].Value == "Parameters" {
			if err := top.Content[i+1].Decode(&params); err != nil {
				t.Fatal(err)
			}
		}
	}
	pairs := map[string]string{
		"name_prefix": "NamePrefix", "tag_key": "TagKey", "tag_value": "TagValue", "schedule_expression": "ScheduleExpression",
		"reboot_option": "RebootOption", "snapshot_id": "SnapshotId", "max_concurrency": "MaxConcurrency", "max_errors": "MaxErrors",
		"compliance_severity": "ComplianceSeverity", "output_s3_bucket_name": "OutputS3BucketName", "output_s3_key_prefix": "OutputS3KeyPrefix",
	}
	for tf, cf := range pairs {
		b, ok := m.variables[tf]
		p, ok2 := params[cf]
		if !ok || !ok2 {
			t.Errorf("variable %s / parameter %s missing", tf, cf)
			continue
		}
		d, hasDefault := b.Body.Attributes["default"]
		if hasDefault != (p.Default != nil) {
			t.Errorf("%s / %s: one has a default, the other not", tf, cf)
			continue
		}
		if hasDefault {
			v, _ := d.Expr.Value(nil)
			if v.AsString() != *p.Default {
				t.Errorf("default of %s %q != %s %q", tf, v.AsString(), cf, *p.Default)
			}
		}
	}
}

func TestVersions(t *testing.T) {
	m := load(t)
	if len(m.terraform) != 1 {
		t.Fatalf("%d terraform blocks", len(m.terraform))
	}
	tb := m.terraform[0]
	if tb.Body.Attributes["required_version"] == nil {
		t.Error("no required_version")
	}
	var rp *hclsyntax.Block
	for _, nb := range tb.Body.Blocks {
		if nb.Type == "required_providers" {
			rp = nb
		}
	}
	if rp == nil {
		t.Fatal("no required_providers")
	}
	aws := eval(t, nil, attr(t, rp, "aws"))
	if aws.GetAttr("source").AsString() != "hashicorp/aws" || aws.GetAttr("version").AsString() == "" {
		t.Errorf("aws provider %#v: want source hashicorp/aws and a version constraint", aws)
	}
}

// TestLoadBalancerPolicy: the policy exists only with target groups, and
// the variable refuses what is not a list of target group ARNs.
func TestLoadBalancerPolicy(t *testing.T) {
	m := load(t)
	web := "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
	list := func(ss ...string) cty.Value {
		if len(ss) == 0 {
			return cty.ListValEmpty(cty.String)
		}
		var vs []cty.Value
		for _, s := range ss {
			vs = append(vs, cty.StringVal(s))
		}
		return cty.ListVal(vs)
	}
	count := func(v cty.Value, asgs ...string) int64 {
		ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "lb_target_group_arns": v, "autoscaling_group_arns": list(asgs...)})
		c, diags := attr(t, m.resources["aws_iam_policy.load_balancer"], "count").Expr.Value(ctx)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		n, _ := c.AsBigFloat().Int64()
		return n
	}
	asg := "arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0:autoScalingGroupName/web-asg"
	if count(list()) != 0 || count(list(web)) != 1 || count(list(), asg) != 1 {
		t.Errorf("policy count: %d without target groups, %d with, %d with an Auto Scaling group only", count(list()), count(list(web)), count(list(), asg))
	}
	var validation *hclsyntax.Block
	for _, b := range m.variables["lb_target_group_arns"].Body.Blocks {
		if b.Type == "validation" {
			validation = b
		}
	}
	if validation == nil {
		t.Fatal("lb_target_group_arns has no validation")
	}
	valid := func(v cty.Value) bool {
		ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "lb_target_group_arns": v})
		r, diags := attr(t, validation, "condition").Expr.Value(ctx)
		if diags.HasErrors() {
			t.Fatal(diags)
		}
		return r.True()
	}
	if !valid(list()) || !valid(list(web)) || valid(list(web, "web")) || valid(list(web+" ")) {
		t.Error("lb_target_group_arns' validation: want [] and target group ARNs only")
	}
	for _, b := range m.variables["autoscaling_group_arns"].Body.Blocks {
		if b.Type != "validation" {
			continue
		}
		ok := func(v cty.Value) bool {
			ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "autoscaling_group_arns": v})
			r, diags := attr(t, b, "condition").Expr.Value(ctx)
			if diags.HasErrors() {
				t.Fatal(diags)
			}
			return r.True()
		}
		if !ok(list()) || !ok(list(asg)) || ok(list("web-asg")) || ok(list(web)) {
			t.Error("autoscaling_group_arns' validation: want [] and Auto Scaling group ARNs only")
		}
		validation = nil
	}
	if validation != nil {
		t.Error("autoscaling_group_arns has no validation")
	}
	policy := attr(t, m.resources["aws_iam_policy.load_balancer"], "policy")
	src := string(policy.Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "main.tf"))))
	for _, want := range []string{
		`Action = ["elasticloadbalancing:DescribeTargetHealth", "elasticloadbalancing:DescribeTargetGroupAttributes", "elasticloadbalancing:DescribeTargetGroups", "ec2:DescribeInstances"], Resource = "*"`,
		`length(var.lb_target_group_arns) == 0 ? [] : [{ Effect = "Allow", Action = ["elasticloadbalancing:RegisterTargets", "elasticloadbalancing:DeregisterTargets"], Resource = var.lb_target_group_arns }]`,
		`Action = ["autoscaling:DescribeAutoScalingInstances", "autoscaling:DescribeAutoScalingGroups"], Resource = "*"`,
		`Action = ["autoscaling:EnterStandby", "autoscaling:ExitStandby", "autoscaling:UpdateAutoScalingGroup"], Resource = var.autoscaling_group_arns`,
	} {
		if !strings.Contains(src, want) {
			t.Errorf("the policy lacks %s", want)
		}
	}
}
