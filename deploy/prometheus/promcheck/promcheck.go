// Package promcheck holds what the tests of deploy/prometheus and
// deploy/grafana share: finding promtool, the metric names patchagent
// exports, the metric names a PromQL expression uses, and which names the
// rules and the dashboard may use (Known).
package promcheck

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/firewall/lb"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.yaml.in/yaml/v3"
)

// Module is the module whose go.mod marks the repository root.
const Module = "github.com/patchagent/patchagent"

// SkipNoPromtool is the message of tests skipped for want of promtool.
const SkipNoPromtool = "promtool is not on PATH nor in .cache/bin: run `make setup` (deploy/setup.sh extracts it from Debian's prometheus package)"

// RepoRoot walks up from the working directory to the go.mod of Module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(strings.NewReader(string(b)))
			for sc.Scan() {
				if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" && f[1] == Module {
					return dir, nil
				}
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", Module)
		}
		dir = parent
	}
}

// Promtool is promtool on PATH, else the copy `make setup` extracts into
// <repo>/.cache/bin; "" when neither is there.
func Promtool() string {
	if p, err := exec.LookPath("promtool"); err == nil {
		return p
	}
	root, err := RepoRoot()
	if err != nil {
		return ""
	}
	p := filepath.Join(root, ".cache", "bin", "promtool")
	if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return p
	}
	return ""
}

// MetricNames returns every series name patchagent's registry exposes
// (agent.NewRegistry, Go and process collectors included), with the
// _bucket, _sum and _count series of histograms and the _sum and _count of
// summaries. Every patchagent metric is fed first, so that vectors without
// a child yet show up too; a metric of agent.Metrics that still does not is
// an error (feed it below).
func MetricNames() (map[string]bool, error) {
	reg, m := agent.NewRegistry("test")
	feed(m)
	// The readiness endpoint's metrics, which a daemon with lb.health_listen adds.
	agent.RegisterReadinessMetrics(reg, func() (lb.Stats, bool) { return lb.Stats{Checkers: 1, Ready: 1}, true })
	mfs, err := reg.Gather()
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		names[n] = true
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n+"_sum"], names[n+"_count"] = true, true
		}
	}
	declared, err := Declared(m)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, n := range declared {
		if !names[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("metrics of agent.Metrics not gathered (feed them in promcheck.feed): %s", strings.Join(missing, ", "))
	}
	return names, nil
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

// Declared lists the names of the collectors in the fields of m, from their
// descriptions (whether or not they have a child yet).
func Declared(m *agent.Metrics) ([]string, error) {
	var names []string
	v := reflect.ValueOf(m).Elem()
	for i := range v.NumField() {
		c, ok := v.Field(i).Interface().(prometheus.Collector)
		if !ok {
			continue
		}
		ch := make(chan *prometheus.Desc, 4)
		go func() { c.Describe(ch); close(ch) }()
		for d := range ch {
			sub := fqName.FindStringSubmatch(d.String())
			if sub == nil {
				return nil, fmt.Errorf("no fqName in %s", d)
			}
			names = append(names, sub[1])
		}
	}
	if len(names) == 0 {
		return nil, errors.New("agent.Metrics has no collector fields")
	}
	sort.Strings(names)
	return names, nil
}

// feed records a run of every phase with every optional part of a report.
func feed(m *agent.Metrics) {
	now := time.Unix(1_700_000_000, 0)
	m.ObserveStateUnrecorded(true)
	m.ObserveReload(false)
	m.ObserveDegraded(true)
	open := agent.State{Open: true, CycleID: "c1", Block: &agent.BlockRecord{Since: now}, LB: []byte(`{"registrations":[]}`),
		Last: map[string]agent.PhaseResult{"post": {Result: agent.ResultFailed, At: now, LastFailure: now}, "pre": {Result: agent.ResultOK, At: now}}}
	m.ObservePhase(&agent.Report{Phase: "pre", Result: agent.ResultOK, Duration: 3 * time.Second,
		Steps: []agent.StepReport{{Name: "lb-out", Result: agent.ResultOK}, {Name: "block", Result: agent.ResultOK, Dur: time.Millisecond}, {Name: "drain", Result: agent.ResultOK, Dur: 2 * time.Second}},
		Drain: &agent.DrainResult{Remaining: 3, Active: 1, Waited: 2 * time.Second, TimedOut: true}}, open, now)
	m.ObservePhase(&agent.Report{Phase: "post", Result: agent.ResultOK, Duration: time.Minute,
		Steps: []agent.StepReport{{Name: "update", Result: agent.ResultOK, Dur: time.Minute}}, Changes: []string{"a"}}, open, now)
	m.ObservePhase(&agent.Report{Phase: "exit", Result: agent.ResultFailed, RolledBack: 1, Reblocked: true,
		Steps:  []agent.StepReport{{Name: "health", Result: agent.ResultFailed}},
		Health: &agent.HealthSummary{Attempts: 2, LastLatency: 0.2}}, open, now)
	m.ObservePhase(&agent.Report{Phase: "exit", Result: agent.ResultOK, Health: &agent.HealthSummary{Healthy: true, Attempts: 1, LastLatency: 0.01}}, agent.State{}, now)
	m.ObservePhase(&agent.Report{Phase: "reconcile", Result: agent.ResultDryRun}, agent.State{}, now)
	m.ObserveBlock(false)
	m.ObserveReassert()
	m.ObserveDeadman()
	m.ObservePhaseRunning("pre", 3*time.Second)
}

// PromQL words that are not metric names: operators, modifiers and the
// aggregation operators (which "by (...)" may separate from their "(").
var keywords = map[string]bool{
	"and": true, "or": true, "unless": true, "atan2": true, "bool": true,
	"offset": true, "inf": true, "nan": true,
	"group_left": true, "group_right": true,
	"sum": true, "min": true, "max": true, "avg": true, "group": true,
	"stddev": true, "stdvar": true, "count": true, "count_values": true,
	"bottomk": true, "topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
}

// Words followed by a parenthesised list of label names.
var labelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true,
	"group_left": true, "group_right": true,
}

// ExprMetricNames returns the metric names a PromQL expression selects, in
// order of first use: the identifiers that are not functions (followed by
// "("), keywords, label names (inside {} or after by, without, on,
// ignoring, group_left, group_right), strings, numbers or durations.
func ExprMetricNames(expr string) ([]string, error) {
	sc := &exprScanner{s: expr, seen: map[string]bool{}}
	for i := 0; i < len(expr); {
		k, err := sc.next(i)
		if err != nil {
			return nil, err
		}
		i = k
	}
	return sc.names, nil
}

// exprScanner walks a PromQL expression for ExprMetricNames.
type exprScanner struct {
	s     string
	names []string
	seen  map[string]bool
}

// next reads the token at i and returns the index after it.
func (sc *exprScanner) next(i int) (int, error) {
	s := sc.s
	switch c := s[i]; {
	case c == '"' || c == '\'' || c == '`':
		return skipString(s, i)
	case c == '#':
		for i < len(s) && s[i] != '\n' {
			i++
		}
		return i, nil
	case c == '{':
		return sc.skipTo(i, '{', '}')
	case c == '[':
		return sc.skipTo(i, '[', ']')
	case c >= '0' && c <= '9' || c == '.':
		for i < len(s) && (isIdent(s[i]) || s[i] == '.') {
			i++
		}
		return i, nil
	case isIdentStart(c):
		return sc.word(i)
	}
	return i + 1, nil
}

// word reads the identifier at i: a metric name unless a keyword, a
// function or aggregation (followed by "("), or a label list's keyword,
// whose list it skips.
func (sc *exprScanner) word(i int) (int, error) {
	s := sc.s
	j := i
	for j < len(s) && isIdent(s[j]) {
		j++
	}
	word := s[i:j]
	next := j
	for next < len(s) && strings.ContainsRune(" \t\r\n", rune(s[next])) {
		next++
	}
	call := next < len(s) && s[next] == '('
	lower := strings.ToLower(word)
	switch {
	case labelLists[lower] && call:
		return sc.skipTo(next, '(', ')')
	case keywords[lower], call:
	case !sc.seen[word]:
		sc.seen[word] = true
		sc.names = append(sc.names, word)
	}
	return j, nil
}

// skipTo returns the index after the close matching the open at s[j],
// skipping strings.
func (sc *exprScanner) skipTo(j int, open, closer byte) (int, error) {
	s := sc.s
	depth := 0
	for j < len(s) {
		switch c := s[j]; {
		case c == '"' || c == '\'' || c == '`':
			k, err := skipString(s, j)
			if err != nil {
				return 0, err
			}
			j = k
			continue
		case c == open:
			depth++
		case c == closer:
			depth--
			if depth == 0 {
				return j + 1, nil
			}
		}
		j++
	}
	return 0, fmt.Errorf("unbalanced %c in %q", open, s)
}

func skipString(s string, i int) (int, error) {
	q := s[i]
	for j := i + 1; j < len(s); j++ {
		switch {
		case s[j] == '\\' && q != '`':
			j++
		case s[j] == q:
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("unterminated string in %q", s)
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdent(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// External are the series the rules and the dashboard may use besides
// patchagent's own: Prometheus' up and node_exporter's textfile collector.
var External = map[string]bool{
	"up":                          true,
	"node_textfile_mtime_seconds": true,
	"node_textfile_scrape_error":  true,
}

// Known is the set of series names the rules and the dashboard may use:
// patchagent's own (MetricNames), External, and the recording rules of the
// rules file.
type Known struct {
	own, recorded map[string]bool
	rulesPath     string
}

// LoadKnown reads the recording rules of the rules file at rulesPath (a
// Prometheus rule file: groups of rules, those with a record name) and
// gathers patchagent's metric names.
func LoadKnown(rulesPath string) (*Known, error) {
	own, err := MetricNames()
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(rulesPath)
	if err != nil {
		return nil, err
	}
	var rf struct {
		Groups []struct {
			Rules []struct {
				Record string `yaml:"record"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &rf); err != nil {
		return nil, fmt.Errorf("%s: %w", rulesPath, err)
	}
	k := &Known{own: own, recorded: map[string]bool{}, rulesPath: rulesPath}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				k.recorded[r.Record] = true
			}
		}
	}
	return k, nil
}

// Check returns nil if name is known, else an error saying why it is not.
func (k *Known) Check(name string) error {
	switch {
	case k.own[name], External[name], k.recorded[name]:
		return nil
	case strings.HasPrefix(name, "patchagent_"):
		return fmt.Errorf("%s is not a metric agent/metrics.go registers nor a recording rule of %s", name, filepath.Base(k.rulesPath))
	default:
		return fmt.Errorf("%s is neither patchagent's, in promcheck.External nor a recording rule of %s", name, filepath.Base(k.rulesPath))
	}
}
