package agent

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// StepNames are the names of every step a phase reports, the only values
// of the step label of patchagent_step_duration_seconds (a name not here
// is exported as "other": a label never grows with what a report holds).
var StepNames = []string{
	"block", "check", "drain", "extras", "force", "health", "lb-in", "lb-out", "prune", "reblock",
	"restore", "rollback", "snapshot", "start", "stop", "unblock", "undo-post", "update",
}

// stepLabel is name as the step label.
func stepLabel(name string) string {
	if slices.Contains(StepNames, name) {
		return name
	}
	return "other"
}

// stepOut is what a step's body reports for its line in the report.
type stepOut struct {
	detail string
	result string        // "" is ResultOK
	dur    time.Duration // 0 is the time the body took
}

// passed is the usual stepOut: the step passed, with detail.
func passed(detail string) (stepOut, error) { return stepOut{detail: detail}, nil }

// intentError is a failed save of a step's intent: nothing of the step was
// done.
type intentError struct {
	step string
	err  error
}

func (e *intentError) Error() string {
	return fmt.Sprintf("recording intent %q before acting: %v", e.step, e.err)
}
func (e *intentError) Unwrap() error { return e.err }

// isIntent reports whether err is a failed save of a step's intent.
func isIntent(err error) bool {
	var ie *intentError
	return errors.As(err, &ie)
}

// step runs one step of phase r the one way every phase does: its intent
// recorded first (saveRun; exit goes on when the disk cannot take it), then
// its body, timed, then its line in the report: the body's detail, or
// failed. The caller decides what a failure means for the node.
func (a *Agent) step(r *phaseRun, name string, body func() (stepOut, error)) error {
	if err := a.saveRun(r, name); err != nil {
		return err
	}
	t := time.Now()
	out, err := body()
	if err != nil {
		r.rep.addStep(name, ResultFailed, time.Since(t), "")
		return err
	}
	if out.result == "" {
		out.result = ResultOK
	}
	if out.dur == 0 {
		out.dur = time.Since(t)
	}
	r.rep.addStep(name, out.result, out.dur, out.detail)
	return nil
}
