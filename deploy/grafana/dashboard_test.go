package grafana_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/prometheus/promcheck"
	"go.yaml.in/yaml/v3"
)

const (
	dashboardFile = "patchagent.json"
	rulesFile     = "../prometheus/patchagent.rules.yml"
)

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type target struct {
	Expr       string      `json:"expr"`
	RefID      string      `json:"refId"`
	Datasource *datasource `json:"datasource"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    *struct {
		X int `json:"x"`
		Y int `json:"y"`
		W int `json:"w"`
		H int `json:"h"`
	} `json:"gridPos"`
	Targets []target `json:"targets"`
	Panels  []panel  `json:"panels"` // of a collapsed row
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Datasource *datasource     `json:"datasource"`
	Multi      bool            `json:"multi"`
	IncludeAll bool            `json:"includeAll"`
}

type dashboard struct {
	UID           string `json:"uid"`
	Title         string `json:"title"`
	SchemaVersion int    `json:"schemaVersion"`
	Time          struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
	Templating struct {
		List []variable `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

func load(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(b) {
		t.Fatalf("%s: not valid JSON", dashboardFile)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows (a collapsed row keeps its panels inside it).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

func dsRef(ds *datasource) bool {
	return ds != nil && (ds.UID == "${datasource}" || ds.UID == "$datasource")
}

// query is a variable's query: a string, or an object with a query field.
func (v variable) query() string {
	var s string
	if json.Unmarshal(v.Query, &s) == nil {
		return s
	}
	var o struct {
		Query string `json:"query"`
	}
	_ = json.Unmarshal(v.Query, &o)
	return o.Query
}

// TestDashboardModel: the classic JSON model's top level, the datasource,
// job and instance variables, and panels with a unique id, a gridPos inside
// the 24-column grid without overlaps, the ${datasource} datasource and at
// least one target with an expr.
func TestDashboardModel(t *testing.T) {
	d := load(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("uid %q, title %q", d.UID, d.Title)
	}
	if d.SchemaVersion < 36 || d.SchemaVersion > 41 {
		t.Errorf("schemaVersion %d, want the classic model's 36-41", d.SchemaVersion)
	}
	if d.Time.From == "" || d.Time.To == "" {
		t.Errorf("no time range")
	}
	vars := map[string]variable{}
	for _, v := range d.Templating.List {
		vars[v.Name] = v
	}
	if v, ok := vars["datasource"]; !ok || v.Type != "datasource" || v.query() != "prometheus" {
		t.Errorf("no datasource variable of type datasource, query prometheus: %+v", v)
	}
	for name, want := range map[string]string{
		"job":      "label_values(patchagent_build_info, job)",
		"instance": `label_values(patchagent_build_info{job=~"$job"}, instance)`,
	} {
		v, ok := vars[name]
		switch {
		case !ok:
			t.Errorf("no %s variable", name)
		case v.Type != "query" || v.query() != want:
			t.Errorf("variable %s: type %q query %q, want query %q", name, v.Type, v.query(), want)
		case !dsRef(v.Datasource):
			t.Errorf("variable %s: datasource %+v, want ${datasource}", name, v.Datasource)
		case !v.Multi || !v.IncludeAll:
			t.Errorf("variable %s: want multi and includeAll", name)
		}
	}

	ids := map[int]string{}
	type cell struct{ x, y int }
	used := map[cell]string{}
	for _, p := range allPanels(d.Panels) {
		if p.Type == "row" {
			continue
		}
		if p.ID <= 0 {
			t.Errorf("panel %q: no id", p.Title)
		} else if other, dup := ids[p.ID]; dup {
			t.Errorf("panel id %d used by %q and %q", p.ID, other, p.Title)
		}
		ids[p.ID] = p.Title
		if p.Title == "" {
			t.Errorf("panel %d: no title", p.ID)
		}
		if g := p.GridPos; g == nil || g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		} else {
			for x := g.X; x < g.X+g.W; x++ {
				for y := g.Y; y < g.Y+g.H; y++ {
					if other, ok := used[cell{x, y}]; ok {
						t.Errorf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
						x, y = g.X+g.W, g.Y+g.H
					}
					used[cell{x, y}] = p.Title
				}
			}
		}
		if !dsRef(p.Datasource) || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: datasource %+v, want prometheus ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no targets", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q target %s: no expr", p.Title, tg.RefID)
			}
			if tg.Datasource != nil && !dsRef(tg.Datasource) {
				t.Errorf("panel %q target %s: datasource %+v", p.Title, tg.RefID, tg.Datasource)
			}
		}
	}
	if len(ids) == 0 {
		t.Fatal("no panels")
	}
}

type expr struct {
	panel, ref, expr string
}

func exprs(t *testing.T) []expr {
	t.Helper()
	var out []expr
	for _, p := range allPanels(load(t).Panels) {
		for _, tg := range p.Targets {
			if tg.Expr != "" {
				out = append(out, expr{p.Title, tg.RefID, tg.Expr})
			}
		}
	}
	return out
}

var selector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)

// TestDashboardMetrics: every series a query selects is one patchagent
// exports (agent.NewRegistry), one of promcheck.External or a recording
// rule of the rules file; each selector filters on $job and $instance; and
// every metric agent.Metrics declares has a panel.
func TestDashboardMetrics(t *testing.T) {
	known, err := promcheck.LoadKnown(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	usedNames := map[string]bool{}
	for _, e := range exprs(t) {
		where := fmt.Sprintf("panel %q target %s", e.panel, e.ref)
		names, err := promcheck.ExprMetricNames(e.expr)
		if err != nil {
			t.Errorf("%s: %v", where, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("%s: no metric in %q", where, e.expr)
		}
		for _, n := range names {
			usedNames[n] = true
			if err := known.Check(n); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
		sels := selector.FindAllStringSubmatch(e.expr, -1)
		selected := map[string]bool{}
		for _, s := range sels {
			selected[s[1]] = true
			if !strings.Contains(s[2], `job=~"$job"`) || !strings.Contains(s[2], `instance=~"$instance"`) {
				t.Errorf("%s: selector %s does not filter on job=~\"$job\" and instance=~\"$instance\"", where, s[0])
			}
		}
		for _, n := range names {
			if !selected[n] {
				t.Errorf("%s: %s is selected without {job=~\"$job\", instance=~\"$instance\"}", where, n)
			}
		}
	}

	_, m := agent.NewRegistry("test")
	declared, err := promcheck.Declared(m)
	if err != nil {
		t.Fatal(err)
	}
	declared = append(declared, "patchagent_build_info", "up")
	for _, n := range declared {
		if !usedNames[n] && !usedNames[n+"_bucket"] {
			t.Errorf("no panel shows %s", n)
		}
	}
	var list []string
	for n := range usedNames {
		list = append(list, n)
	}
	sort.Strings(list)
	t.Logf("metrics on the dashboard: %s", strings.Join(list, ", "))
}

// substitutions replace Grafana's variables with values PromQL accepts.
var substitutions = strings.NewReplacer(
	"${job}", "patchagent", "$job", "patchagent",
	"${instance}", "node1", "$instance", "node1",
	"$__rate_interval", "2m", "$__interval", "1m", "$__range", "1d",
)

// TestDashboardPromQL: every query, its variables replaced by values, is
// valid PromQL by `promtool check rules` (each as a recording rule).
func TestDashboardPromQL(t *testing.T) {
	bin := promcheck.Promtool()
	if bin == "" {
		t.Skip(promcheck.SkipNoPromtool)
	}
	type rule struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rule
	for i, e := range exprs(t) {
		x := substitutions.Replace(e.expr)
		if strings.Contains(x, "$") {
			t.Errorf("panel %q target %s: variable left after substitution: %s", e.panel, e.ref, x)
			continue
		}
		rules = append(rules, rule{Record: fmt.Sprintf("dashboard:check_%d", i), Expr: x})
	}
	file := map[string]any{"groups": []map[string]any{{"name": "dashboard", "rules": rules}}}
	b, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules (dashboard queries): %v\n%s\n%s", err, out, b)
	}
	if want := fmt.Sprintf("SUCCESS: %d rules found", len(rules)); !bytes.Contains(out, []byte(want)) {
		t.Errorf("promtool check rules: want %q:\n%s", want, out)
	}
	t.Logf("promtool check rules (%d dashboard queries):\n%s", len(rules), out)
}

// TestDashboardPanels: the panels the operators need are there.
func TestDashboardPanels(t *testing.T) {
	types := map[string]string{}
	for _, p := range allPanels(load(t).Panels) {
		types[p.Title] = p.Type
	}
	for title, typ := range map[string]string{
		"Nodes out of service now":           "stat",
		"Patch cycles open":                  "stat",
		"Phase runs by result":               "timeseries",
		"Phase duration p95 (time range)":    "bargauge",
		"Health-check attempts":              "timeseries",
		"Drain: connections left":            "timeseries",
		"Drain duration":                     "timeseries",
		"Block re-applications":              "timeseries",
		"Dependencies updated / rolled back": "timeseries",
		"Dead-man triggers":                  "timeseries",
		"Targets up":                         "stat",
		"Build info":                         "table",
	} {
		if got, ok := types[title]; !ok {
			t.Errorf("no panel %q", title)
		} else if got != typ {
			t.Errorf("panel %q: type %s, want %s", title, got, typ)
		}
	}
}
