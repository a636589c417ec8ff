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
	locals    map[string]*hclsyntax.Attribute
	data      map[string]*hclsyntax.Block // "type.name"
	moved     []*hclsyntax.Block
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
	m := &module{dir: dir, variables: map[string]*hclsyntax.Block{}, resources: map[string]*hclsyntax.Block{}, outputs: map[string]*hclsyntax.Block{},
		locals: map[string]*hclsyntax.Attribute{}, data: map[string]*hclsyntax.Block{}}
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
			case "data":
				m.data[key] = b
			case "moved":
				m.moved = append(m.moved, b)
			case "locals":
				for name, a := range b.Body.Attributes {
					if m.locals[name] != nil {
						t.Errorf("duplicate local %s", name)
					}
					m.locals[name] = a
				}
			default:
				t.Errorf("%s: unexpected block %s %v", path, b.Type, b.Labels)
			}
			if seen[b.Type+" "+key] && b.Type != "terraform" && b.Type != "locals" && b.Type != "moved" {
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
		"jsonencode": stdlib.JSONEncodeFunc,
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
	// The other resources' attributes are known after apply: placeholders
	// "type.name.attribute", in a one-element tuple for a counted resource.
	others := map[string]map[string]cty.Value{}
	for key, b := range m.resources {
		typ, name, _ := strings.Cut(key, ".")
		if typ == "aws_ssm_document" {
			continue
		}
		attrs := map[string]cty.Value{}
		for _, a := range []string{"id", "arn", "name", "association_id", "association_name"} {
			attrs[a] = cty.StringVal(key + "." + a)
		}
		v := cty.ObjectVal(attrs)
		if b.Body.Attributes["count"] != nil {
			v = cty.TupleVal([]cty.Value{v})
		}
		if others[typ] == nil {
			others[typ] = map[string]cty.Value{}
		}
		others[typ][name] = v
	}
	for typ, byName := range others {
		ctx.Variables[typ] = cty.ObjectVal(byName)
	}
	ctx.Variables["data"] = cty.ObjectVal(map[string]cty.Value{
		"aws_partition": cty.ObjectVal(map[string]cty.Value{"current": cty.ObjectVal(map[string]cty.Value{"partition": cty.StringVal("aws")})}),
	})
	// Locals may use one another: evaluate until all are known.
	locals := map[string]cty.Value{}
	for len(locals) < len(m.locals) {
		progress := false
		ctx.Variables["local"] = cty.ObjectVal(locals)
		for name, a := range m.locals {
			if _, done := locals[name]; done {
				continue
			}
			if v, diags := a.Expr.Value(ctx); !diags.HasErrors() {
				locals[name] = v
				progress = true
			}
		}
		if !progress {
			t.Fatalf("locals do not evaluate: %d of %d known", len(locals), len(m.locals))
		}
	}
	ctx.Variables["local"] = cty.ObjectVal(locals)
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
		if n := count(t, ctx, b); n != 1 {
			t.Errorf("association count %d with the default schedule_mode, want 1", n)
		}
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
		if got := stringMap(eval(t, ctx, attr(t, b, "parameters"))); !mapsEqual(got, want) {
			t.Errorf("parameters = %v, want %v", got, want)
		}
	}
	// The association gained a count: a moved block keeps the deployed one.
	moved := false
	for _, mb := range m.moved {
		from := string(attr(t, mb, "from").Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "main.tf"))))
		to := string(attr(t, mb, "to").Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "main.tf"))))
		moved = moved || from == "aws_ssm_association.patch" && to == "aws_ssm_association.patch[0]"
	}
	if !moved {
		t.Error("no moved block from aws_ssm_association.patch to aws_ssm_association.patch[0]")
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

func stringMap(v cty.Value) map[string]string {
	out := map[string]string{}
	for k, e := range v.AsValueMap() {
		out[k] = e.AsString()
	}
	return out
}

// count evaluates a resource's count (1 without one).
func count(t *testing.T, ctx *hcl.EvalContext, b *hclsyntax.Block) int64 {
	t.Helper()
	a, ok := b.Body.Attributes["count"]
	if !ok {
		return 1
	}
	n, _ := eval(t, ctx, a).AsBigFloat().Int64()
	return n
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
	"aws_ssm_association": {"name", "association_name", "parameters", "targets", "schedule_expression", "apply_only_at_cron_interval", "max_concurrency", "max_errors", "output_location", "compliance_severity", "sync_compliance", "calendar_names", "document_version", "automation_target_parameter_name", "wait_for_success_timeout_seconds", "tags", "instance_id", "count"},
	// r/ssm_maintenance_window, r/ssm_maintenance_window_target,
	// r/ssm_maintenance_window_task, r/cloudwatch_event_rule,
	// r/cloudwatch_event_target.
	"aws_ssm_maintenance_window":        {"name", "schedule", "duration", "cutoff", "allow_unassociated_targets", "description", "enabled", "end_date", "schedule_timezone", "schedule_offset", "start_date", "tags", "count"},
	"aws_ssm_maintenance_window_target": {"window_id", "resource_type", "targets", "name", "description", "owner_information", "count"},
	"aws_ssm_maintenance_window_task":   {"window_id", "task_arn", "task_type", "name", "description", "priority", "cutoff_behavior", "max_concurrency", "max_errors", "service_role_arn", "targets", "task_invocation_parameters", "count"},
	"aws_cloudwatch_event_rule":         {"name", "name_prefix", "description", "event_pattern", "event_bus_name", "schedule_expression", "role_arn", "state", "tags", "count"},
	"aws_cloudwatch_event_target":       {"rule", "target_id", "arn", "event_bus_name", "input", "input_path", "role_arn", "count"},
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
				case "local":
					if name := tr[1].(hcl.TraverseAttr).Name; m.locals[name] == nil {
						t.Errorf("%s: local.%s is not declared", where, name)
					}
				case "data":
					key := tr[1].(hcl.TraverseAttr).Name + "." + tr[2].(hcl.TraverseAttr).Name
					if _, ok := m.data[key]; !ok {
						t.Errorf("%s: data.%s is not declared", where, key)
					}
				case "path", "output_location", "parameter":
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
	for name, a := range m.locals {
		check("local "+name, &hclsyntax.Body{Attributes: hclsyntax.Attributes{name: a}})
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
		"tag_value":             {"", "a,b", "a;b", "a*"},
		"schedule_mode":         {"", "window", "Association"},
		"failure_topic_arn":     {"patch-alerts", "arn:aws:sqs:eu-west-1:123456789012:patch-alerts", "arn:aws:sns:eu-west-1:123456789012:"},
	}
	good := map[string][]string{
		"tag_value":         {"my-app", "Web Tier 1", "é_.:/=+-@"},
		"schedule_mode":     {"association", "maintenance-window"},
		"failure_topic_arn": {"", "arn:aws:sns:eu-west-1:123456789012:patch-alerts", "arn:aws-us-gov:sns:us-gov-west-1:123456789012:a_b-c"},
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
		for _, s := range good[name] {
			if !valid(cty.StringVal(s)) {
				t.Errorf("variable %s: validation refuses %q", name, s)
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
		"schedule_mode": "ScheduleMode", "failure_topic_arn": "FailureTopicArn",
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
	// The floor: aws_ssm_association's tags argument came with 5.58.0
	// (hashicorp/terraform-provider-aws#38271); an older provider rejects
	// main.tf. The association must still set tags, or the floor is moot.
	var floor string
	for _, c := range strings.Split(aws.GetAttr("version").AsString(), ",") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(c), ">="); ok {
			floor = strings.TrimSpace(v)
		}
	}
	if floor != "5.58.0" {
		t.Errorf("aws provider floor %q, want 5.58.0 (aws_ssm_association tags)", floor)
	}
	if m.resources["aws_ssm_association.patch"].Body.Attributes["tags"] == nil {
		t.Error("aws_ssm_association.patch sets no tags: revisit the provider floor")
	}
}

// TestTags: every taggable resource gets tag_key = tag_value (as the
// CloudFormation template tags its documents and window) merged with
// var.tags, which may add tags but not replace the nodes' one by accident.
func TestTags(t *testing.T) {
	m := load(t)
	ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "tags": cty.MapVal(map[string]cty.Value{"Team": cty.StringVal("web")})})
	want := map[string]string{"PatchGroup": "my-app", "Team": "web"}
	taggable := 0
	for key, b := range m.resources {
		typ, _, _ := strings.Cut(key, ".")
		if !slices.Contains(knownAttrs[typ], "tags") {
			continue
		}
		taggable++
		a, ok := b.Body.Attributes["tags"]
		if !ok {
			t.Errorf("%s: no tags", key)
			continue
		}
		if got := stringMap(eval(t, ctx, a)); !mapsEqual(got, want) {
			t.Errorf("%s: tags = %v, want %v", key, got, want)
		}
	}
	if taggable < 7 {
		t.Errorf("%d taggable resources, want the 3 documents, the association, the window, the rule and the 2 policies", taggable)
	}
}

// TestScheduleMode: schedule_mode "maintenance-window" replaces the
// association with a window on the same schedule, a target by the same tag
// and a Run Command task with the association's parameters and rate
// controls, run with the service-linked role (no service_role_arn).
func TestScheduleMode(t *testing.T) {
	m := load(t)
	window := []string{"aws_ssm_maintenance_window.patch", "aws_ssm_maintenance_window_target.patch", "aws_ssm_maintenance_window_task.patch"}
	for _, mode := range []string{"association", "maintenance-window"} {
		ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "schedule_mode": cty.StringVal(mode)})
		if n := count(t, ctx, m.resources["aws_ssm_association.patch"]); (n == 1) != (mode == "association") {
			t.Errorf("%s: association count %d", mode, n)
		}
		for _, key := range window {
			if n := count(t, ctx, m.resources[key]); (n == 1) != (mode == "maintenance-window") {
				t.Errorf("%s: %s count %d", mode, key, n)
			}
		}
	}
	vars := map[string]cty.Value{
		"tag_value": cty.StringVal("my-app"), "schedule_mode": cty.StringVal("maintenance-window"), "snapshot_id": cty.StringVal("4e8a3d0f-1c2b-4a5e-9f6d-7b8c9d0e1f2a"),
		"max_concurrency": cty.StringVal("2"), "max_errors": cty.StringVal("1"), "output_s3_bucket_name": cty.StringVal("my-ssm-output"),
	}
	ctx := m.evalContext(t, vars)
	str := func(key, name string) string { return eval(t, ctx, attr(t, m.resources[key], name)).AsString() }
	num := func(key, name string) int64 {
		n, _ := eval(t, ctx, attr(t, m.resources[key], name)).AsBigFloat().Int64()
		return n
	}
	if got := str(window[0], "schedule"); got != "cron(0 3 ? * SUN *)" {
		t.Errorf("window schedule %q, want var.schedule_expression", got)
	}
	if d, c := num(window[0], "duration"), num(window[0], "cutoff"); d != 4 || c != 1 {
		t.Errorf("window duration %d cutoff %d, want 4 and 1 (as the CloudFormation template)", d, c)
	}
	task := m.resources[window[2]]
	for name, want := range map[string]string{"task_arn": "AWS-RunPatchBaselineWithHooks", "task_type": "RUN_COMMAND", "cutoff_behavior": "CANCEL_TASK", "max_concurrency": "2", "max_errors": "1"} {
		if got := str(window[2], name); got != want {
			t.Errorf("task %s = %q, want %q", name, got, want)
		}
	}
	if task.Body.Attributes["service_role_arn"] != nil {
		t.Error("the task sets service_role_arn: the module documents the service-linked role")
	}
	blocks := func(b *hclsyntax.Block, typ string) []*hclsyntax.Block {
		var out []*hclsyntax.Block
		for _, nb := range b.Body.Blocks {
			if nb.Type == typ || nb.Type == "dynamic" && nb.Labels[0] == typ {
				out = append(out, nb)
			}
		}
		if len(out) != 1 {
			t.Fatalf("%s %v: %d %s blocks, want 1", b.Type, b.Labels, len(out), typ)
		}
		return out
	}
	target := blocks(m.resources[window[1]], "targets")[0]
	if k, v := eval(t, ctx, attr(t, target, "key")).AsString(), eval(t, ctx, attr(t, target, "values")); k != "tag:PatchGroup" || v.LengthInt() != 1 || v.Index(cty.NumberIntVal(0)).AsString() != "my-app" {
		t.Errorf("window target %s = %#v, want tag:PatchGroup = [my-app]", k, v)
	}
	tt := blocks(task, "targets")[0]
	if k, v := eval(t, ctx, attr(t, tt, "key")).AsString(), eval(t, ctx, attr(t, tt, "values")); k != "WindowTargetIds" || v.Index(cty.NumberIntVal(0)).AsString() != "aws_ssm_maintenance_window_target.patch.id" {
		t.Errorf("task targets %s = %#v, want WindowTargetIds = [the window target]", k, v)
	}
	rc := blocks(blocks(task, "task_invocation_parameters")[0], "run_command_parameters")[0]
	if got := eval(t, ctx, attr(t, rc, "output_s3_bucket")).AsString(); got != "my-ssm-output" {
		t.Errorf("task output_s3_bucket %q", got)
	}
	if got := eval(t, ctx, attr(t, rc, "output_s3_key_prefix")).AsString(); got != "patchagent/" {
		t.Errorf("task output_s3_key_prefix %q", got)
	}
	// One parameter block per association parameter: the same local.
	param := blocks(rc, "parameter")[0]
	fe := attr(t, param, "for_each").Expr.Variables()
	assoc := attr(t, m.resources["aws_ssm_association.patch"], "parameters").Expr.Variables()
	if len(fe) != 1 || len(assoc) != 1 || fe[0].RootName() != "local" || assoc[0].RootName() != "local" ||
		fe[0][1].(hcl.TraverseAttr).Name != "patch_parameters" || assoc[0][1].(hcl.TraverseAttr).Name != "patch_parameters" {
		t.Error("the task's parameter blocks and the association's parameters must both be local.patch_parameters")
	}
	if got := stringMap(ctx.Variables["local"].GetAttr("patch_parameters")); got["SnapshotId"] != "4e8a3d0f-1c2b-4a5e-9f6d-7b8c9d0e1f2a" || got["Operation"] != "Install" || len(got) != 6 {
		t.Errorf("local.patch_parameters = %v", got)
	}
	content := blocks(param, "content")[0]
	if n, v := string(attr(t, content, "name").Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "main.tf")))), string(attr(t, content, "values").Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "main.tf")))); n != "parameter.key" || v != "[parameter.value]" {
		t.Errorf("parameter content name = %s, values = %s; want parameter.key and [parameter.value]", n, v)
	}
	// Without a bucket the task names none (null, not "").
	ctx = m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "schedule_mode": cty.StringVal("maintenance-window")})
	if v := eval(t, ctx, attr(t, rc, "output_s3_bucket")); !v.IsNull() {
		t.Errorf("task output_s3_bucket %#v without output_s3_bucket_name, want null", v)
	}
}

// TestFailureRule: with failure_topic_arn, an EventBridge rule sends the
// failed and timed-out runs to the topic: the association's instance
// association events, or the patch document's Run Command invocations under
// a maintenance window. The same patterns as the CloudFormation template.
func TestFailureRule(t *testing.T) {
	m := load(t)
	topic := "arn:aws:sns:eu-west-1:123456789012:patch-alerts"
	rule, target := m.resources["aws_cloudwatch_event_rule.failure"], m.resources["aws_cloudwatch_event_target.failure"]
	if rule == nil || target == nil {
		t.Fatal("no aws_cloudwatch_event_rule.failure or aws_cloudwatch_event_target.failure")
	}
	ctx := m.evalContext(t, baseVars)
	if count(t, ctx, rule) != 0 || count(t, ctx, target) != 0 {
		t.Error("a failure rule without failure_topic_arn")
	}
	for mode, detail := range map[string]string{
		"association":        `{"detail":{"association-id":["aws_ssm_association.patch.association_id"],"status":["Failed","TimedOut"]},"detail-type":["EC2 State Manager Instance Association State Change"],"source":["aws.ssm"]}`,
		"maintenance-window": `{"detail":{"document-name":["AWS-RunPatchBaselineWithHooks"],"status":["Failed","TimedOut"]},"detail-type":["EC2 Command Invocation Status-change Notification"],"source":["aws.ssm"]}`,
	} {
		ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "schedule_mode": cty.StringVal(mode), "failure_topic_arn": cty.StringVal(topic)})
		if count(t, ctx, rule) != 1 || count(t, ctx, target) != 1 {
			t.Errorf("%s: no failure rule and target with failure_topic_arn", mode)
		}
		if got := eval(t, ctx, attr(t, rule, "event_pattern")).AsString(); got != detail {
			t.Errorf("%s: event_pattern\n%s\nwant\n%s", mode, got, detail)
		}
		if got := eval(t, ctx, attr(t, target, "arn")).AsString(); got != topic {
			t.Errorf("%s: target arn %q, want the topic", mode, got)
		}
		if got := eval(t, ctx, attr(t, target, "rule")).AsString(); got != "aws_cloudwatch_event_rule.failure.name" {
			t.Errorf("%s: target rule %q, want the failure rule", mode, got)
		}
	}
}

// TestOutputPolicy: with output_s3_bucket_name, a managed policy for the
// instance profile allows PutObject under the key prefix only, the
// bucket-owner-full-control ACL there and nothing else, and reading the
// bucket's encryption configuration, in the current partition.
func TestOutputPolicy(t *testing.T) {
	m := load(t)
	b := m.resources["aws_iam_policy.output"]
	if b == nil {
		t.Fatal("no aws_iam_policy.output")
	}
	if count(t, m.evalContext(t, baseVars), b) != 0 {
		t.Error("an output policy without output_s3_bucket_name")
	}
	for prefix, want := range map[string]string{
		"patchagent/": `{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output/patchagent/*"},{"Action":"s3:PutObjectAcl","Condition":{"StringEquals":{"s3:x-amz-acl":"bucket-owner-full-control"}},"Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output/patchagent/*"},{"Action":"s3:GetEncryptionConfiguration","Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output"}],"Version":"2012-10-17"}`,
		"":            `{"Statement":[{"Action":"s3:PutObject","Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output/*"},{"Action":"s3:PutObjectAcl","Condition":{"StringEquals":{"s3:x-amz-acl":"bucket-owner-full-control"}},"Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output/*"},{"Action":"s3:GetEncryptionConfiguration","Effect":"Allow","Resource":"arn:aws:s3:::my-ssm-output"}],"Version":"2012-10-17"}`,
	} {
		ctx := m.evalContext(t, map[string]cty.Value{"tag_value": cty.StringVal("my-app"), "output_s3_bucket_name": cty.StringVal("my-ssm-output"), "output_s3_key_prefix": cty.StringVal(prefix)})
		if count(t, ctx, b) != 1 {
			t.Errorf("prefix %q: no output policy with output_s3_bucket_name", prefix)
		}
		if got := eval(t, ctx, attr(t, b, "policy")).AsString(); got != want {
			t.Errorf("prefix %q: policy\n%s\nwant\n%s", prefix, got, want)
		}
	}
	if o := m.outputs["output_policy_arn"]; o == nil || !strings.Contains(string(attr(t, o, "value").Expr.Range().SliceBytes(mustRead(t, filepath.Join(m.dir, "outputs.tf")))), "aws_iam_policy.output[*].arn") {
		t.Error("no output output_policy_arn with the policy's ARN")
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
