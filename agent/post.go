package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/patchagent/patchagent/hooks"
)

// Packages updates the app's dependencies and keeps snapshots of them
// (npm: see wire.go).
type Packages interface {
	// Check is a read-only preflight (package.json, lockfile in sync, npm).
	Check(ctx context.Context) error
	Update(ctx context.Context) error
	// UpgradeMajor moves declared ranges across major versions and installs.
	UpgradeMajor(ctx context.Context) ([]string, error)
	// Lockfile returns the lockfile npm uses (npm-shrinkwrap.json, else
	// package-lock.json).
	Lockfile() ([]byte, error)
	// Snapshot saves the dependency state into dst, replacing what an
	// earlier, failed post of the cycle left there; Restore puts it back.
	Snapshot(dst string) (SnapshotInfo, error)
	Restore(snapshot string) error
	// Prune keeps the newest keep snapshots under root.
	Prune(root string, keep int) (removed int, freed int64, err error)
}

// SnapshotInfo says what a snapshot cost.
type SnapshotInfo struct {
	Files      int
	Bytes      int64 // logical size
	Copied     int64 // bytes actually copied (0 when hardlinked)
	Hardlinked bool
	Took       time.Duration
}

// Post updates the app's dependencies while the node is out of service,
// after a snapshot that restores them exactly if the update fails or, later,
// if exit finds the app unhealthy.
func (a *Agent) Post(ctx context.Context, opt RunOptions) *Report {
	return a.runPhase(ctx, "post", opt, a.post)
}

func (a *Agent) snapshotRoot() string { return filepath.Join(a.cfg.Daemon.StateDir, "snapshots") }

func (a *Agent) post(ctx context.Context, r *phaseRun) error {
	rep := r.rep
	if !a.cfg.Post.NPM.Enabled {
		rep.Summary = append(rep.Summary, "nothing to do: post.npm.enabled is false")
		return nil
	}
	if a.cfg.App.Dir == "" || a.d.Packages == nil {
		return configError(errors.New("app.dir is not set: post updates the dependencies of the app in app.dir; nothing changed"))
	}
	if !r.st.Open {
		return errors.New("no patch cycle open: pre takes the node out of service before post changes its dependencies; nothing changed")
	}
	pr := r.st.Post
	if pr != nil && pr.CycleID != r.st.CycleID {
		pr = nil
	}
	if pr != nil && pr.Status == StatusOK {
		rep.Summary = append(rep.Summary, fmt.Sprintf("already done in this cycle: %s", changeCount(len(pr.Changes))))
		rep.Changes = pr.Changes
		return nil
	}
	// Only a post that died during its update left a tree to undo (exit
	// undoes it the same way, undopost.go); after a failed (and restored)
	// one the next run takes a fresh snapshot.
	interrupted := interruptedPost(r.st) != nil
	t := time.Now()
	if err := a.d.Packages.Check(ctx); err != nil {
		rep.addStep("check", ResultFailed, time.Since(t), "")
		return fmt.Errorf("nothing changed: %w", err)
	}
	rep.addStep("check", ResultOK, time.Since(t), fmt.Sprintf("%s: package.json and lockfile in sync", a.cfg.App.Dir))
	snap := filepath.Join(a.snapshotRoot(), r.st.CycleID)
	if r.opt.DryRun {
		a.postPlan(r, pr, interrupted, snap)
		return nil
	}

	a.begin(r)
	// A post that died during the update left a half-installed tree: put
	// the snapshot back before anything else.
	if interrupted {
		if err := a.restoreInterruptedPost(r, pr, "restore", "a previous post died during the update: dependencies restored first"); err != nil {
			a.failed(r, err)
			return err
		}
		snap = pr.Snapshot
	} else if err := a.snapshotStep(r, snap); err != nil {
		return err
	}
	r.st.Post = &PostRecord{CycleID: r.st.CycleID, Snapshot: snap, Taken: true, Status: StatusRunning}
	var lines []string
	err := a.step(r, "update", func() (out stepOut, err error) {
		out, lines, err = a.update(ctx)
		return out, err
	})
	switch {
	case isIntent(err):
		return err
	case err != nil:
		return a.postFailed(ctx, r, err)
	}
	rep.Summary = append(rep.Summary, changeCount(len(lines)))
	rep.Changes = lines
	r.st.Post.Status, r.st.Post.Changes = StatusOK, lines
	r.st.Status = StatusOK
	if err := a.save(&r.st, "done"); err != nil {
		return err
	}

	// Older cycles' snapshots: keep the newest few (this cycle's is newest).
	if removed, freed, err := a.d.Packages.Prune(a.snapshotRoot(), a.cfg.Post.KeepSnapshots); err != nil {
		rep.warn("pruning old snapshots: %v", err)
	} else if removed > 0 {
		rep.addStep("prune", ResultOK, 0, fmt.Sprintf("%d old snapshot(s) removed, %s freed (post.keep_snapshots %d)", removed, mib(freed), a.cfg.Post.KeepSnapshots))
	}
	return nil
}

// postPlan is a dry run's plan of post.
func (a *Agent) postPlan(r *phaseRun, pr *PostRecord, interrupted bool, snap string) {
	rep := r.rep
	rep.Result = ResultDryRun
	if interrupted {
		rep.Plan = append(rep.Plan, "restore "+pr.Snapshot+" (a previous post died during the update)")
	} else {
		rep.Plan = append(rep.Plan, fmt.Sprintf("snapshot package.json, package-lock.json and node_modules of %s into %s", a.cfg.App.Dir, snap))
	}
	if a.cfg.Post.NPM.Major {
		rep.Plan = append(rep.Plan, fmt.Sprintf("as user %s: raise every dependency to its latest major (as npm-check-updates), npm install", a.d.AppUser))
	}
	rep.Plan = append(rep.Plan, fmt.Sprintf("as user %s: npm update in %s (deadline %s, fetch timeout %s), report the changes; restore the snapshot on failure",
		a.d.AppUser, a.cfg.App.Dir, a.cfg.Post.NPM.Timeout, a.cfg.Post.NPM.FetchTimeout))
}

// snapshotStep takes the snapshot the update can be undone from; if it
// fails, nothing changed.
func (a *Agent) snapshotStep(r *phaseRun, snap string) error {
	r.st.Post = &PostRecord{CycleID: r.st.CycleID, Snapshot: snap, Status: StatusRunning}
	err := a.step(r, "snapshot", func() (stepOut, error) {
		info, err := a.d.Packages.Snapshot(snap)
		if err != nil {
			return stepOut{}, err
		}
		how := "node_modules hardlinked"
		if !info.Hardlinked {
			how = fmt.Sprintf("%s copied, nothing hardlinked (no node_modules, or another filesystem)", mib(info.Copied))
		}
		return stepOut{dur: info.Took, detail: fmt.Sprintf("%d files, %s, %s", info.Files, mib(info.Bytes), how)}, nil
	})
	switch {
	case isIntent(err):
		return fmt.Errorf("nothing changed: %w", err)
	case err != nil:
		r.st.Post = nil
		a.failed(r, err)
		return fmt.Errorf("nothing changed: taking the snapshot: %w", err)
	}
	return nil
}

// update runs npm (a major upgrade first if configured) under
// post.npm.timeout and returns the changes the lockfile shows.
func (a *Agent) update(ctx context.Context) (stepOut, []string, error) {
	before, err := a.d.Packages.Lockfile()
	if err != nil {
		return stepOut{}, nil, fmt.Errorf("reading the lockfile: %w", err)
	}
	uctx, cancel := context.WithTimeout(ctx, a.cfg.Post.NPM.Timeout.D())
	defer cancel()
	a.progress("update: npm update in %s as %s (deadline %s)", a.cfg.App.Dir, a.d.AppUser, a.cfg.Post.NPM.Timeout)
	var raised []string // package.json ranges moved to a new major
	if a.cfg.Post.NPM.Major {
		if raised, err = a.d.Packages.UpgradeMajor(uctx); err != nil {
			return stepOut{}, nil, deadlineErr(uctx, a.cfg.Post.NPM.Timeout, err)
		}
	}
	if err := a.d.Packages.Update(uctx); err != nil {
		return stepOut{}, nil, deadlineErr(uctx, a.cfg.Post.NPM.Timeout, err)
	}
	after, err := a.d.Packages.Lockfile()
	if err != nil {
		return stepOut{}, nil, fmt.Errorf("reading the lockfile after the update: %w", err)
	}
	ch, err := hooks.DiffLockfiles(before, after)
	if err != nil {
		return stepOut{}, nil, fmt.Errorf("comparing the lockfiles: %w", err)
	}
	detail := fmt.Sprintf("%d updated, %d added, %d removed", len(ch.Updated), len(ch.Added), len(ch.Removed))
	if len(raised) > 0 {
		detail += "; package.json ranges raised: " + strings.Join(raised, ", ")
	}
	return stepOut{detail: detail}, ch.Lines(), nil
}

// postFailed restores the snapshot so nothing is left half-installed.
func (a *Agent) postFailed(ctx context.Context, r *phaseRun, cause error) error {
	if err := a.d.Packages.Restore(r.st.Post.Snapshot); err != nil {
		err = fmt.Errorf("%w; RESTORING THE SNAPSHOT %s FAILED TOO: %w", cause, r.st.Post.Snapshot, err)
		a.failed(r, err)
		return err
	}
	r.st.Post.Status = StatusFailed
	a.failed(r, cause)
	r.rep.addStep("restore", ResultOK, 0, "dependencies restored from the snapshot")
	return fmt.Errorf("dependency update failed, the app's dependencies are restored as they were: %w", cause)
}

func deadlineErr(ctx context.Context, d Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("npm did not finish within post.npm.timeout %s (its process group was killed): %w", d, err)
	}
	return err
}

func changeCount(n int) string {
	switch n {
	case 0:
		return "no dependency changed"
	case 1:
		return "1 dependency changed"
	}
	return fmt.Sprintf("%d dependencies changed", n)
}

func packages(n int) string {
	if n == 1 {
		return "1 package"
	}
	return fmt.Sprintf("%d packages", n)
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// tryRollback undoes this cycle's dependency update when the app came back
// unhealthy after it (exit.rollback): stop the app, restore the snapshot,
// start it, check again. done reports whether it took over the outcome.
func (a *Agent) tryRollback(ctx context.Context, r *phaseRun, cause error) (err error, done bool) {
	p := r.st.Post
	if !a.cfg.Exit.Rollback || a.d.Packages == nil || p == nil || p.CycleID != r.st.CycleID ||
		p.Status != StatusOK || len(p.Changes) == 0 || p.RolledBack {
		return nil, false
	}
	rep, app := r.rep, a.cfg.App.Name
	what := fmt.Sprintf("rolled back %s (%s)", packages(len(p.Changes)), strings.Join(p.Changes, ", "))
	a.progress("rollback: the app is unhealthy after this cycle's update of %s: restoring %s", packages(len(p.Changes)), p.Snapshot)
	if err := a.saveRun(r, "rollback"); err != nil {
		return a.exitFailed(ctx, r, errors.Join(cause, err)), true
	}
	t := time.Now()
	if _, err := a.d.App.Stop(ctx, app); err != nil && !errors.Is(err, hooks.ErrUnknownApp) {
		rep.addStep("rollback", ResultFailed, time.Since(t), "")
		return a.exitFailed(ctx, r, fmt.Errorf("%w; rollback: stopping %s: %w", cause, app, err)), true
	}
	if err := a.d.Packages.Restore(p.Snapshot); err != nil {
		rep.addStep("rollback", ResultFailed, time.Since(t), "")
		return a.exitFailed(ctx, r, fmt.Errorf("%w; rollback: restoring %s: %w", cause, p.Snapshot, err)), true
	}
	p.RolledBack = true
	if err := a.saveRun(r, "rollback"); err != nil {
		return a.exitFailed(ctx, r, errors.Join(cause, err)), true
	}
	if _, _, err := a.startApp(ctx); err != nil {
		rep.addStep("rollback", ResultFailed, time.Since(t), "")
		return a.exitFailed(ctx, r, fmt.Errorf("%w; %s, but starting %s failed: %w", cause, what, app, err)), true
	}
	out, err := a.waitHealthyAndStable(ctx, nil)
	if err != nil {
		rep.addStep("rollback", ResultFailed, time.Since(t), "")
		return a.exitFailed(ctx, r, fmt.Errorf("%w; %s, and the app is still unhealthy: %w", cause, what, err)), true
	}
	rep.addStep("rollback", ResultOK, time.Since(t), fmt.Sprintf("%s; healthy after %d attempt(s)", what, out.Attempts))
	rep.RolledBack = len(p.Changes)
	rep.Summary = append(rep.Summary, what)
	if err := a.unblockAndRestore(ctx, r); err != nil {
		return err, true
	}
	err = nodeLeft(nodeBackBut, fmt.Errorf("the dependency update broke the app: %s after %w", what, cause))
	a.closeCycle(r, StatusFailed, err.Error())
	return err, true
}
