package prometheus_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/patchagent/patchagent/deploy/prometheus/promcheck"
	"go.yaml.in/yaml/v3"
)

const (
	rulesFile = "patchagent.rules.yml"
	scrape    = "scrape.yml"
)

// testFiles are the promtool unit tests of rulesFile.
var testFiles = []string{"patchagent.rules.test.yml", "patchagent.rules.stale.test.yml"}

// wantAlerts are the alerts the rules must define, with their severity.
var wantAlerts = map[string]string{
	"PatchagentHookFailed":             "warning",
	"PatchagentNodeOutOfService":       "critical",
	"PatchagentCycleOpenTooLong":       "warning",
	"PatchagentBlockReapplied":         "warning",
	"PatchagentDeadman":                "critical",
	"PatchagentDependenciesRolledBack": "warning",
	"PatchagentExitForced":             "warning",
	"PatchagentPhaseHung":              "critical",
	"PatchagentStateUnrecorded":        "warning",
	"PatchagentConfigReloadFailed":     "warning",
	"PatchagentDaemonDegraded":         "warning",
	"PatchagentLBNotConfirmed":         "warning",
	"PatchagentLBNoChecker":            "warning",
	"PatchagentLBNotPutBack":           "warning",
	"PatchagentDaemonDown":             "warning",
	"PatchagentTextfileStale":          "warning",
}

type rule struct {
	Alert       string            `yaml:"alert"`
	Record      string            `yaml:"record"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

func loadRules(t *testing.T) []rule {
	t.Helper()
	var rf ruleFile
	decodeFile(t, rulesFile, &rf)
	var rules []rule
	for _, g := range rf.Groups {
		rules = append(rules, g.Rules...)
	}
	if len(rules) == 0 {
		t.Fatalf("%s: no rules", rulesFile)
	}
	return rules
}

func decodeFile(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func promtool(t *testing.T) string {
	t.Helper()
	bin := promcheck.Promtool()
	if bin == "" {
		t.Skip(promcheck.SkipNoPromtool)
	}
	return bin
}

func run(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, out)
	}
	t.Logf("%s %s:\n%s", filepath.Base(bin), strings.Join(args, " "), out)
	return string(out)
}

// TestRulesPromtool: `promtool check rules` and `promtool test rules`.
func TestRulesPromtool(t *testing.T) {
	bin := promtool(t)
	out := run(t, bin, "check", "rules", rulesFile)
	if !strings.Contains(out, "SUCCESS") {
		t.Errorf("check rules: no SUCCESS")
	}
	out = run(t, bin, append([]string{"test", "rules"}, testFiles...)...)
	if n := strings.Count(out, "SUCCESS"); n != len(testFiles) {
		t.Errorf("test rules: %d SUCCESS for %d files", n, len(testFiles))
	}
}

// TestScrapeConfigPromtool: a prometheus.yml made of the scrape example and
// the rules passes `promtool check config`.
func TestScrapeConfigPromtool(t *testing.T) {
	bin := promtool(t)
	var sc struct {
		ScrapeConfigs []map[string]any `yaml:"scrape_configs"`
	}
	decodeFile(t, scrape, &sc)
	rules, err := filepath.Abs(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg := map[string]any{
		"global":         map[string]any{"scrape_interval": "30s", "evaluation_interval": "30s"},
		"rule_files":     []string{rules},
		"scrape_configs": sc.ScrapeConfigs,
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "prometheus.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, bin, "check", "config", path)
	if strings.Count(out, "SUCCESS") < 2 { // the config and the rule file
		t.Errorf("check config: want SUCCESS for the config and the rules")
	}
}

// TestScrapeConfig: the patchagent job scrapes the daemon's /metrics on
// 8741, sets instance to the host (the rules join on it) and the file says
// how to make the daemon reachable.
func TestScrapeConfig(t *testing.T) {
	var sc struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			MetricsPath   string `yaml:"metrics_path"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
			RelabelConfigs []struct {
				TargetLabel string `yaml:"target_label"`
			} `yaml:"relabel_configs"`
		} `yaml:"scrape_configs"`
	}
	b, err := os.ReadFile(scrape)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &sc); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, j := range sc.ScrapeConfigs {
		relabels := slices.ContainsFunc(j.RelabelConfigs, func(r struct {
			TargetLabel string `yaml:"target_label"`
		}) bool {
			return r.TargetLabel == "instance"
		})
		if !relabels {
			t.Errorf("job %s: no relabeling of instance (the rules match the daemon and node_exporter on it)", j.JobName)
		}
		if j.JobName != "patchagent" {
			continue
		}
		found = true
		if j.MetricsPath != "/metrics" {
			t.Errorf("job patchagent: metrics_path %q", j.MetricsPath)
		}
		for _, s := range j.StaticConfigs {
			for _, tg := range s.Targets {
				if !strings.HasSuffix(tg, ":8741") {
					t.Errorf("job patchagent: target %s is not on port 8741", tg)
				}
			}
		}
	}
	if !found {
		t.Errorf("%s: no job patchagent", scrape)
	}
	for _, want := range []string{"metrics_listen: 0.0.0.0:8741", "textfile", "patchagent.prom"} {
		if !strings.Contains(string(b), want) {
			t.Errorf("%s does not mention %q", scrape, want)
		}
	}
}

// TestRulesShape: the wanted alerts, each with for:, its severity and a
// summary and description naming $labels.instance; recording rules under
// patchagent:.
func TestRulesShape(t *testing.T) {
	seen := map[string]bool{}
	for _, r := range loadRules(t) {
		if r.Record != "" {
			if !strings.HasPrefix(r.Record, "patchagent:") {
				t.Errorf("recording rule %s: not under patchagent:", r.Record)
			}
			continue
		}
		seen[r.Alert] = true
		want, ok := wantAlerts[r.Alert]
		if !ok {
			t.Errorf("unexpected alert %s (add it to wantAlerts and to the unit tests)", r.Alert)
		}
		if r.For == "" {
			t.Errorf("%s: no for:", r.Alert)
		}
		if got := r.Labels["severity"]; got != want {
			t.Errorf("%s: severity %q, want %q", r.Alert, got, want)
		}
		for _, a := range []string{"summary", "description"} {
			if !strings.Contains(r.Annotations[a], "$labels.instance") {
				t.Errorf("%s: annotation %s does not name $labels.instance: %q", r.Alert, a, r.Annotations[a])
			}
		}
	}
	for a := range wantAlerts {
		if !seen[a] {
			t.Errorf("alert %s missing", a)
		}
	}
}

var seriesName = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{`)

// TestRulesMetricNames: every series the rules select is one patchagent
// exports, one of promcheck.External or a recording rule of the file; so is
// every input series of the unit tests.
func TestRulesMetricNames(t *testing.T) {
	known, err := promcheck.LoadKnown(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	rules := loadRules(t)
	check := func(where, name string) {
		if err := known.Check(name); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
	used := map[string]bool{}
	for _, r := range rules {
		names, err := promcheck.ExprMetricNames(r.Expr)
		if err != nil {
			t.Fatalf("%s%s: %v", r.Alert, r.Record, err)
		}
		if len(names) == 0 {
			t.Errorf("%s%s: no metric in %q", r.Alert, r.Record, r.Expr)
		}
		for _, n := range names {
			check(r.Alert+r.Record, n)
			used[n] = true
		}
	}
	for _, f := range testFiles {
		for _, g := range loadTests(t, f).Tests {
			for _, s := range g.InputSeries {
				m := seriesName.FindStringSubmatch(s.Series)
				if m == nil {
					t.Errorf("%s: cannot read the name of series %q", f, s.Series)
					continue
				}
				check(f, m[1])
			}
		}
	}
	var names []string
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("metrics used by the rules: %s", strings.Join(names, ", "))
}

type testFile struct {
	RuleFiles          []string `yaml:"rule_files"`
	EvaluationInterval string   `yaml:"evaluation_interval"`
	Tests              []struct {
		Name        string `yaml:"name"`
		Interval    string `yaml:"interval"`
		InputSeries []struct {
			Series string `yaml:"series"`
			Values string `yaml:"values"`
		} `yaml:"input_series"`
		AlertRuleTests []struct {
			EvalTime  string           `yaml:"eval_time"`
			Alertname string           `yaml:"alertname"`
			ExpAlerts []map[string]any `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func loadTests(t *testing.T, path string) testFile {
	t.Helper()
	var tf testFile
	decodeFile(t, path, &tf)
	if !slices.Equal(tf.RuleFiles, []string{rulesFile}) {
		t.Errorf("%s: rule_files %v, want [%s]", path, tf.RuleFiles, rulesFile)
	}
	return tf
}

// TestRulesCovered: the unit tests check every alert both firing and not.
func TestRulesCovered(t *testing.T) {
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range testFiles {
		for _, g := range loadTests(t, f).Tests {
			for _, a := range g.AlertRuleTests {
				if len(a.ExpAlerts) > 0 {
					fires[a.Alertname] = true
				} else {
					quiet[a.Alertname] = true
				}
			}
		}
	}
	for a := range wantAlerts {
		if !fires[a] {
			t.Errorf("%s: no unit test where it fires", a)
		}
		if !quiet[a] {
			t.Errorf("%s: no unit test where it does not fire", a)
		}
	}
}

func TestExprMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`up{job="patchagent"} == 0`: {"up"},
		`histogram_quantile(0.95, sum by (le, phase) (rate(patchagent_phase_duration_seconds_bucket{job=~"a|b"}[5m])))`:                 {"patchagent_phase_duration_seconds_bucket"},
		`time() - node_textfile_mtime_seconds{file=~".*x\\.prom"} > 8 * 86400 unless on (job, instance) patchagent:textfile_superseded`: {"node_textfile_mtime_seconds", "patchagent:textfile_superseded"},
		"sum(a) without (x) / ignoring(y) group_left(z) b offset 5m and bool c":                                                         {"a", "b", "c"},
		`label_replace(foo, "dst", "$1", "src", "(.*)") or max_over_time(bar [1h:5m])`:                                                  {"foo", "bar"},
		`count(patchagent_cycle_open)`: {"patchagent_cycle_open"},
	} {
		got, err := promcheck.ExprMetricNames(expr)
		if err != nil {
			t.Errorf("%s: %v", expr, err)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", expr, got, want)
		}
	}
	if _, err := promcheck.ExprMetricNames(`foo{a="b"`); err == nil {
		t.Errorf("unbalanced braces: no error")
	}
}

// TestMetricNamesComplete: the registry's names include every histogram
// series and the metrics only vectors with children show.
func TestMetricNamesComplete(t *testing.T) {
	known, err := promcheck.MetricNames()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{
		"patchagent_build_info", "patchagent_phase_duration_seconds_bucket", "patchagent_phase_duration_seconds_count",
		"patchagent_step_duration_seconds_sum", "patchagent_drain_connections", "patchagent_phase_last_success_timestamp_seconds",
	} {
		if !known[n] {
			t.Errorf("%s missing from promcheck.MetricNames", n)
		}
	}
	if known["patchagent_nonexistent"] {
		t.Error("nonsense name known")
	}
}
