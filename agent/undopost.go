package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/patchagent/patchagent/hooks"
)

// A post killed during its update (the daemon killed, the node crashed, an
// SSM timeout on a node without the daemon) leaves its record at "taken,
// running": the snapshot is complete, the tree may be half-updated. Both
// phases that can come next undo it the same way, through interruptedPost
// and restoreInterruptedPost: the next post before it updates again, and
// exit (SSM runs it after a failed post) before it starts the app.

// interruptedPost returns this cycle's post record when that post died
// after its snapshot and before its update finished; nil otherwise.
func interruptedPost(st State) *PostRecord { return interruptedPostRecord(st.Post, st.CycleID) }

func interruptedPostRecord(pr *PostRecord, cycle string) *PostRecord {
	if pr == nil || pr.CycleID != cycle || !pr.Taken || pr.Status != StatusRunning {
		return nil
	}
	return pr
}

// restoreInterruptedPost records step as the intent, puts back the
// snapshot of the interrupted post pr and reports step, with detail when it
// succeeded. The caller records a failure (a.failed) as its own.
func (a *Agent) restoreInterruptedPost(r *phaseRun, pr *PostRecord, step, detail string) error {
	return a.step(r, step, func() (stepOut, error) {
		if err := a.d.Packages.Restore(pr.Snapshot); err != nil {
			return stepOut{}, fmt.Errorf("restoring the dependencies the interrupted post of cycle %s left half-updated, from its snapshot %s: %w", pr.CycleID, pr.Snapshot, err)
		}
		return passed(detail)
	})
}

// undoPostPlan is the dry run's line for exit when this cycle's post was
// interrupted.
func (a *Agent) undoPostPlan(st State) []string {
	pr := interruptedPost(st)
	if pr == nil {
		return nil
	}
	return []string{fmt.Sprintf("undo-post: stop %s if it runs, restore %s (this cycle's post was interrupted during its update) before starting it; stay blocked if that fails", a.cfg.App.Name, pr.Snapshot)}
}

// undoInterruptedPost is exit's step before it starts the app: when this
// cycle's post was interrupted mid-update, the app must not start (or keep
// running) on the half-updated tree, so the snapshot goes back first, the
// app stopped before if pm2 brought it up (at boot). When that fails the
// node stays blocked whatever exit.on_failure says: the app was never
// started on a tree anyone checked.
func (a *Agent) undoInterruptedPost(ctx context.Context, r *phaseRun) error {
	pr := interruptedPost(r.st)
	if pr == nil {
		return nil
	}
	const step = "undo-post"
	app := a.cfg.App.Name
	closed := func(err error) error {
		err = fmt.Errorf("this cycle's post was interrupted during its dependency update and is not undone, so %s is not started on a half-updated tree: %w", app, err)
		a.failed(r, err)
		return stillOut(err)
	}
	fail := func(t time.Time, err error) error {
		r.rep.addStep(step, ResultFailed, time.Since(t), "")
		return closed(err)
	}
	t := time.Now()
	if a.d.Packages == nil {
		return fail(t, fmt.Errorf("app.dir is not set: cannot restore the snapshot %s", pr.Snapshot))
	}
	a.progress("undo-post: this cycle's post was interrupted during its update: restoring its snapshot %s before %s starts", pr.Snapshot, app)
	if err := a.saveRun(r, step); err != nil {
		return stillOut(err)
	}
	stopped := ""
	procs, err := a.d.App.Processes(ctx, app)
	switch {
	case errors.Is(err, hooks.ErrUnknownApp):
	case err != nil:
		return fail(t, fmt.Errorf("reading %s in pm2 before the restore: %w", app, err))
	default:
		if online, pids := onlinePIDs(procs); online > 0 {
			if _, err := a.d.App.Stop(ctx, app); err != nil && !errors.Is(err, hooks.ErrUnknownApp) {
				return fail(t, fmt.Errorf("stopping %s (it runs on the half-updated tree) before the restore: %w", app, err))
			}
			stopped = fmt.Sprintf("; %s stopped first (pid(s) %v ran on the half-updated tree)", app, pids)
		}
	}
	detail := fmt.Sprintf("restored the snapshot of the interrupted post (%s, cycle %s)%s", pr.Snapshot, pr.CycleID, stopped)
	if err := a.restoreInterruptedPost(r, pr, step, detail); err != nil {
		return closed(err) // the step is reported
	}
	pr.Status, pr.Interrupted = StatusFailed, true
	pr.Undone = fmt.Sprintf("exit restored the snapshot at %s", time.Now().UTC().Format(time.RFC3339))
	if err := a.saveRun(r, step); err != nil {
		return stillOut(err)
	}
	r.rep.Summary = append(r.rep.Summary, "interrupted post undone: dependencies as before post")
	return nil
}
