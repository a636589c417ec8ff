package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Phase results.
const (
	ResultOK     = "ok"
	ResultFailed = "failed"
	ResultDryRun = "dry-run"
	// ResultForced: exit --force returned the node without a health
	// check (exit code 1).
	ResultForced = "forced"
)

// Exit codes of the hook commands. SSM gives 137, 168, 169 and 194 their
// own meanings: never use them.
const (
	ExitOK     = 0
	ExitFailed = 1
	ExitUsage  = 2
	ExitLocked = 3
	// ExitUnknown: status could not read the node's state (not root, the
	// state file unreadable). It shares ExitLocked's code, the one code
	// left for "not known" that SSM does not give a meaning of its own.
	ExitUnknown = ExitLocked
)

// Output limits: SSM shows the first 2,500 characters in its console.
const consoleLimit = 2500

// nodeError is a phase failure that says where it left the node.
type nodeError struct {
	state string
	err   error
}

func (e *nodeError) Error() string {
	if strings.HasSuffix(e.state, ", but") {
		return "node " + e.state + " " + e.err.Error()
	}
	return "node " + e.state + ": " + e.err.Error()
}
func (e *nodeError) Unwrap() error { return e.err }

// Where a failure can leave the node.
const (
	nodeStillOut = "still out of service"
	nodeBackBut  = "back in service, but"
)

// nodeLeft wraps err with where the failure left the node.
func nodeLeft(state string, err error) error { return &nodeError{state: state, err: err} }

// Report is what one phase run tells its caller: a verdict first, then the
// steps. It renders as text (first line = verdict) or as one JSON object.
type Report struct {
	Phase    string        `json:"phase"`
	App      string        `json:"app,omitempty"`
	Result   string        `json:"result"`
	ExitCode int           `json:"exit_code"`
	Duration time.Duration `json:"-"` // JSON: duration_seconds
	// Summary is the short list of what was done, shown in the verdict.
	Summary  []string `json:"summary,omitempty"`
	Error    string   `json:"error,omitempty"`
	Warnings []string `json:"warnings,omitempty"`
	// Unrecorded says that the phase's outcome is true on the node but not
	// in the state file (a full or read-only state disk).
	Unrecorded string       `json:"unrecorded,omitempty"`
	Steps      []StepReport `json:"steps"`
	// Plan lists what a dry run would do.
	Plan []string `json:"plan,omitempty"`
	// Changes lists the dependencies post changed.
	Changes []string `json:"changes,omitempty"`
	// Drain is how pre's drain ended.
	Drain *DrainResult `json:"drain,omitempty"`
	// Health is exit's health wait.
	Health *HealthSummary `json:"health,omitempty"`
	// RolledBack counts the packages exit's rollback restored.
	RolledBack int `json:"rolled_back,omitempty"`
	// Node says where a failed phase left the node ("still out of
	// service", "back in service, but"), when the phase says so.
	Node string `json:"node,omitempty"`
	// Reblocked: the block had to be put back (after a reboot or a flush).
	Reblocked bool   `json:"reblocked,omitempty"`
	CycleID   string `json:"cycle_id,omitempty"`
	StatePath string `json:"state_file,omitempty"`
}

// HealthSummary is a health wait as reported.
type HealthSummary struct {
	Healthy  bool    `json:"healthy"`
	Attempts int     `json:"attempts"`
	Seconds  float64 `json:"duration_seconds"`
	// LastLatency is the last attempt's latency.
	LastLatency float64 `json:"last_latency_seconds"`
}

// StepReport is one step of a phase.
type StepReport struct {
	Name   string        `json:"name"`
	Result string        `json:"result"`
	Dur    time.Duration `json:"-"` // JSON: duration_seconds
	Detail string        `json:"detail,omitempty"`
}

// Reports keep their durations as time.Duration; JSON carries them as
// seconds, in "duration_seconds".

type (
	reportJSON      Report
	stepReportJSON  StepReport
	drainResultJSON DrainResult
)

func (r Report) MarshalJSON() ([]byte, error) { return withSeconds(reportJSON(r), r.Duration) }

func (r *Report) UnmarshalJSON(b []byte) error {
	return unmarshalWithSeconds(b, (*reportJSON)(r), &r.Duration)
}

func (s StepReport) MarshalJSON() ([]byte, error) { return withSeconds(stepReportJSON(s), s.Dur) }

func (s *StepReport) UnmarshalJSON(b []byte) error {
	return unmarshalWithSeconds(b, (*stepReportJSON)(s), &s.Dur)
}

func (d DrainResult) MarshalJSON() ([]byte, error) { return withSeconds(drainResultJSON(d), d.Waited) }

func (d *DrainResult) UnmarshalJSON(b []byte) error {
	return unmarshalWithSeconds(b, (*drainResultJSON)(d), &d.Waited)
}

// withSeconds is plain's JSON object with "duration_seconds": d added.
func withSeconds(plain any, d time.Duration) ([]byte, error) {
	b, err := json.Marshal(plain)
	if err != nil {
		return nil, err
	}
	secs, err := json.Marshal(d.Seconds())
	if err != nil {
		return nil, err
	}
	b = b[:len(b)-1] // the closing brace
	if len(b) > 1 {
		b = append(b, ',')
	}
	b = append(append(b, `"duration_seconds":`...), secs...)
	return append(b, '}'), nil
}

// unmarshalWithSeconds decodes b into plain and its "duration_seconds"
// into d.
func unmarshalWithSeconds(b []byte, plain any, d *time.Duration) error {
	var v struct {
		Seconds float64 `json:"duration_seconds"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	if err := json.Unmarshal(b, plain); err != nil {
		return err
	}
	*d = fromSeconds(v.Seconds)
	return nil
}

func fromSeconds(s float64) time.Duration { return time.Duration(math.Round(s * float64(time.Second))) }

func (r *Report) addStep(name, result string, d time.Duration, detail string) {
	r.Steps = append(r.Steps, StepReport{Name: name, Result: result, Dur: d, Detail: detail})
}

// StepSpan is when the step named name began and ended, as offsets from
// the phase's start (its steps run one after another, in order); ok is
// false if the report has no such step.
func (r *Report) StepSpan(name string) (start, end time.Duration, ok bool) {
	for _, s := range r.Steps {
		if s.Name == name {
			return start, start + s.Dur, true
		}
		start += s.Dur
	}
	return 0, 0, false
}

func (r *Report) warn(format string, args ...any) {
	r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...))
}

// finish sets the verdict fields.
func (r *Report) finish(d time.Duration, err error, code int) {
	r.Duration = d
	switch {
	case r.Result == ResultDryRun && err != nil:
		// A dry run whose check failed: its plan, and pre's exit code.
		r.Error, r.ExitCode = err.Error(), code
	case r.Result == ResultDryRun:
		r.ExitCode = ExitOK
	case isForced(err):
		r.Result, r.Error, r.ExitCode = ResultForced, err.Error(), code
		r.Node = "back in service without a health check"
	case err != nil:
		r.Result, r.Error, r.ExitCode = ResultFailed, err.Error(), code
		var ne *nodeError
		if errors.As(err, &ne) {
			r.Node = ne.state
		}
	default:
		r.Result, r.ExitCode = ResultOK, ExitOK
	}
}

// Verdict is the first line of the text output; it ends with what the
// state file could not be told, if anything.
func (r *Report) Verdict() string {
	v := r.verdict()
	if r.Unrecorded != "" {
		v += "; " + r.Unrecorded
	}
	return v
}

func (r *Report) verdict() string {
	d := r.Duration.Round(100 * time.Millisecond)
	switch r.Result {
	case ResultDryRun:
		v := fmt.Sprintf("patchagent %s: dry run, nothing changed (%d planned actions)", r.Phase, len(r.Plan))
		if r.Error != "" {
			v += ", but the check FAILED: " + firstLine(r.Error)
		}
		return v
	case ResultOK:
		w := ""
		if n := len(r.Warnings); n > 0 {
			w = fmt.Sprintf(" with %d warning(s)", n)
		}
		return fmt.Sprintf("patchagent %s: ok in %s%s (%s)", r.Phase, d, w, strings.Join(r.Summary, ", "))
	}
	if r.Result == ResultForced {
		return fmt.Sprintf("patchagent %s: FORCED, %s", r.Phase, firstLine(r.Error))
	}
	if r.Node != "" {
		// The failure says where it left the node: "FAILED, node still
		// out of service: <why>".
		return fmt.Sprintf("patchagent %s: FAILED, %s", r.Phase, firstLine(r.Error))
	}
	return fmt.Sprintf("patchagent %s: FAILED in %s: %s", r.Phase, d, firstLine(r.Error))
}

// Text renders the report for a console that shows only its first 2,500
// characters: the verdict, then steps, warnings and the plan, cut with a
// pointer to the full record when too long.
func (r *Report) Text() string {
	var b strings.Builder
	b.WriteString(printable(r.Verdict()))
	b.WriteByte('\n')
	var rest []string
	if r.Result == ResultFailed && strings.Contains(r.Error, "\n") {
		rest = append(rest, "error: "+printableLines(r.Error))
	}
	for _, w := range r.Warnings {
		rest = append(rest, "warning: "+w)
	}
	for _, s := range r.Steps {
		line := fmt.Sprintf("  %-6s %-7s %6.2fs", s.Result, s.Name, s.Dur.Seconds())
		if s.Detail != "" {
			line += "  " + s.Detail
		}
		rest = append(rest, line)
	}
	for _, p := range r.Plan {
		rest = append(rest, "  would: "+p)
	}
	for _, c := range r.Changes {
		rest = append(rest, "  changed: "+c)
	}
	if r.StatePath != "" {
		rest = append(rest, fmt.Sprintf("state: %s (cycle %s)", r.StatePath, orNone(r.CycleID)))
	}
	tail := ""
	if r.StatePath != "" {
		tail = fmt.Sprintf("... (cut: full record in %s and the journal)\n", r.StatePath)
	} else {
		tail = "... (cut: run again with --output json for everything)\n"
	}
	for i, l := range rest {
		if i > 0 || !strings.HasPrefix(l, "error: ") {
			l = printable(l)
		}
		if b.Len()+len(l)+1+len(tail) > consoleLimit {
			b.WriteString(tail)
			break
		}
		b.WriteString(l)
		b.WriteByte('\n')
	}
	return b.String()
}

// JSON renders the report as one JSON object.
func (r *Report) JSON() []byte {
	out, err := json.Marshal(r)
	if err != nil {
		// Only strings, numbers and slices of them: cannot fail.
		panic(fmt.Sprintf("encoding report: %v", err))
	}
	return append(out, '\n')
}

// printable escapes what a terminal would act on: control characters
// (ESC and its sequences, carriage return, newline) and invalid UTF-8, as
// \x1b, \r, \n, \ufffd... A report quotes text the app user controls
// (package names and versions from its lockfile, npm's stderr): on the
// operator's terminal or the SSM console it must read as text, not move
// the cursor or forge a line of its own.
func printable(s string) string {
	if !strings.ContainsFunc(s, needsEscape) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == utf8.RuneError:
			b.WriteString(`\ufffd`)
		case needsEscape(r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

func needsEscape(r rune) bool { return r != '\t' && unicode.IsControl(r) || r == utf8.RuneError }

// printableLines is printable for each line of a text meant to span
// several (a multi-line error).
func printableLines(s string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = printable(l)
	}
	return strings.Join(lines, "\n")
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
