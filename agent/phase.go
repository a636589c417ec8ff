package agent

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
)

// phaseRun is what a phase body works with: the recorded state (which it
// updates and saves before each side effect), the boot id, and its report.
type phaseRun struct {
	name string
	opt  RunOptions
	st   State
	boot string
	rep  *Report
	// booted: the node rebooted since the state was written before this run.
	booted bool
	// unrecorded: why exit went on without writing its state (nil if it
	// could write it).
	unrecorded error
}

// rebooted reports whether the node booted since the state was last written
// before this phase started.
func (r *phaseRun) rebooted() bool { return r.booted }

// runPhase is the frame every phase runs in: one phase at a time on the node
// (the lock, waited for a bounded time), the state file and boot id read
// before anything else, the report timed and its exit code set.
func (a *Agent) runPhase(ctx context.Context, name string, opt RunOptions, body func(context.Context, *phaseRun) error) *Report {
	start := time.Now()
	rep := &Report{Phase: name, App: a.cfg.App.Name, StatePath: a.d.State.Path, Steps: []StepReport{}}
	err := func() (err error) {
		if !opt.DryRun {
			wait := a.d.LockWait
			if opt.NoLockWait {
				wait = 0
			}
			release, lerr := a.d.Lock.Acquire(ctx, name, wait)
			if lerr != nil {
				return lerr
			}
			defer release()
			defer func() { a.recordLast(name, start, err) }()
		}
		st, err := a.d.State.Load()
		if err != nil {
			return fmt.Errorf("nothing was changed: %w", err)
		}
		boot, err := a.d.BootID()
		if err != nil {
			return fmt.Errorf("nothing was changed: %w", err)
		}
		rep.CycleID = st.CycleID
		booted := st.BootID != "" && st.BootID != boot
		return body(ctx, &phaseRun{name: name, opt: opt, st: st, boot: boot, rep: rep, booted: booted})
	}()
	switch {
	case isForced(err):
		a.log.Warn("phase forced", zap.String("phase", name), zap.Error(err))
	case err != nil:
		a.log.Error("phase failed", zap.String("phase", name), zap.Error(err))
	}
	rep.finish(time.Since(start), err, exitCode(err))
	if a.d.Metrics != nil {
		st, _ := a.d.State.Load()
		a.d.Metrics.ObservePhase(rep, st, time.Now())
		a.d.Metrics.ObserveStateUnrecorded(a.d.State.Unrecorded() != nil)
		if fw, err := a.d.Firewall.Status(ctx); err == nil {
			a.d.Metrics.ObserveBlock(fw.Present())
		}
	}
	return rep
}

// recordLast records how this run of phase ended, for status (best
// effort, under the lock, on top of whatever the phase saved).
func (a *Agent) recordLast(name string, start time.Time, err error) {
	st, lerr := a.d.State.Load()
	if lerr != nil {
		return
	}
	res := PhaseResult{Result: ResultOK, At: time.Now().UTC(), Seconds: time.Since(start).Seconds(), CycleID: st.CycleID,
		LastFailure: st.Last[name].LastFailure}
	if err != nil {
		res.Result, res.Error = ResultFailed, firstLine(err.Error())
		if isForced(err) {
			res.Result = ResultForced
		} else {
			res.LastFailure = res.At
		}
	}
	if st.Last == nil {
		st.Last = map[string]PhaseResult{}
	}
	st.Last[name] = res
	st.Version = StateVersion
	if serr := a.d.State.Save(st); serr != nil {
		a.log.Error("recording the phase result", zap.Error(serr))
	}
}

// begin marks that phase r starts acting in the cycle, opening one if none
// is open; the caller adds its intent and saves.
func (a *Agent) begin(r *phaseRun) {
	now := time.Now().UTC()
	warn := ""
	if !r.st.Open {
		// The cycle before keeps its ending in the new record (a forced
		// close, an interrupted post), and one left half-updated is said.
		prev := summarize(r.st)
		warn = prev.leftHalfUpdated()
		r.st = State{CycleID: newCycleID(now), Open: true, CycleStartedAt: now, Previous: prev}
	}
	if r.st.Phase != r.name {
		r.st.Attempts = 0
	}
	r.st.Phase, r.st.Status, r.st.Error, r.st.Warnings = r.name, StatusRunning, "", nil
	r.st.Attempts++
	r.st.BootID, r.st.PhaseStartedAt = r.boot, now
	r.rep.CycleID = r.st.CycleID
	if warn != "" {
		a.log.Warn(warn)
		r.rep.warn("%s", warn)
		r.st.Warnings = append(r.st.Warnings, warn)
	}
}

// saveRun is save for the phase r: exit, whose job is to put a healthy
// app's node back in service, goes on when the state cannot be written (a
// full or read-only state disk): each intent it records is idempotent to
// redo, so it keeps the state in memory (StateStore.Remember), warns once,
// and says in its verdict that the end of the cycle was not recorded.
// Other phases must record before they act and get the error.
func (a *Agent) saveRun(r *phaseRun, step string) error {
	err := a.save(&r.st, step)
	if err == nil || r.name != "exit" {
		return err
	}
	a.d.State.Remember(r.st, err)
	if r.unrecorded == nil {
		a.log.Error("state not written: exit goes on, the state kept in memory", zap.Error(err))
		r.rep.warn("the state could not be written, exit goes on without it: %v", err)
	}
	r.unrecorded = err
	return nil
}

// failed records err as the phase's outcome (best effort: the error itself
// is what the caller reports).
func (a *Agent) failed(r *phaseRun, err error) {
	r.st.Status, r.st.Error = StatusFailed, err.Error()
	if serr := a.saveRun(r, r.st.Step); serr != nil {
		a.log.Error("recording the failure", zap.Error(serr))
	}
}
