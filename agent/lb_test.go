package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/patchagent/patchagent/firewall/lb"
	"github.com/patchagent/patchagent/healthcheck"
)

// fakeRotation is a load balancer's side: it records each change, and its
// waits end as told.
type fakeRotation struct {
	ev      *events
	outErr  error // TakeOut's
	inErr   error // PutBack's
	none    bool  // no checker seen
	out     bool
	waits   []time.Duration
	checker netip.Addr
}

func (f *fakeRotation) wait(deadline time.Duration, err error) (lb.Wait, error) {
	f.waits = append(f.waits, deadline)
	if err != nil {
		return lb.Wait{Checkers: []netip.Addr{f.checker}}, err
	}
	if f.none {
		return lb.Wait{NoChecker: true}, nil
	}
	return lb.Wait{Checkers: []netip.Addr{f.checker}, Took: 4 * time.Second, By: "1 checker(s)"}, nil
}
func (f *fakeRotation) TakeOut(ctx context.Context, d time.Duration) (lb.Wait, error) {
	f.out = true
	f.ev.add("lb out")
	return f.wait(d, f.outErr)
}
func (f *fakeRotation) PutBack(ctx context.Context, d time.Duration) (lb.Wait, error) {
	f.out = false
	f.ev.add("lb in")
	return f.wait(d, f.inErr)
}
func (f *fakeRotation) SetOut(out bool) { f.out = out; f.ev.add(fmt.Sprintf("lb set out=%v", out)) }

func withRotation(e *testEnv) *fakeRotation {
	f := &fakeRotation{ev: e.ev, checker: netip.MustParseAddr("10.0.1.5")}
	e.rotation = f
	e.cfg.LB.HealthListen = "0.0.0.0:8742"
	return f
}

// TestPreTakesTheNodeOutOfTheLBBeforeTheBlock: the LB is told first and
// waited for; only then does the block refuse anything.
func TestPreTakesTheNodeOutOfTheLBBeforeTheBlock(t *testing.T) {
	e := newTestEnv(t)
	f := withRotation(e)
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	evs := e.ev.all()
	if len(evs) < 2 || evs[0] != "lb out" || !strings.HasPrefix(evs[1], "block") {
		t.Fatalf("want the LB first, then the block: %q", evs)
	}
	if !slices.Equal(f.waits, []time.Duration{2 * time.Minute}) || !strings.Contains(rep.Verdict(), "out of LB rotation (1 checker(s))") {
		t.Fatalf("waits %v, verdict %q", f.waits, rep.Verdict())
	}
	if len(rep.Steps) < 3 || rep.Steps[1].Name != "lb-out" || rep.Steps[2].Name != "block" {
		t.Fatalf("want check, lb-out, block: %+v", rep.Steps)
	}
}

// TestPreStopsWhenTheLBDoesNotConfirm: the LB did not take the node out
// within lb.deadline: nothing is blocked (blocking would refuse what the
// LB still routes), pre fails, and the cycle stays open for exit, which
// puts the node back.
func TestPreStopsWhenTheLBDoesNotConfirm(t *testing.T) {
	e := newTestEnv(t)
	f := withRotation(e)
	f.outErr = lb.ErrNotConfirmed
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != ExitFailed || !strings.Contains(rep.Verdict(), "stays out of the load balancer's rotation, not blocked") {
		t.Fatal(rep.Text())
	}
	if evs := e.ev.all(); !slices.Equal(evs, []string{"lb out"}) {
		t.Fatalf("acted past the LB: %q", evs)
	}
	st, _ := e.state.Load()
	if !st.Open || st.Step != "lb-out" || st.Blocks() {
		t.Fatalf("state %+v", st)
	}
	// Neither the daemon's watch nor the boot blocks what pre did not
	// (the LB's checks of the app would fail, and it would never come back).
	a := e.agent(t)
	if re, err := a.Reassert(context.Background()); re || err != nil || e.fw.blocked {
		t.Fatalf("the watch re-blocked a node pre left unblocked: %v %v", re, err)
	}
	if rep := a.Reconcile(context.Background(), RunOptions{}); rep.ExitCode != 0 || e.fw.blocked || !strings.Contains(rep.Verdict(), "not blocked: the cycle's pre stopped before the block") {
		t.Fatalf("reconcile: %s", rep.Text())
	}
	f.outErr = nil
	e.ev.log = nil
	// exit does not block it either: the LB may still route to the node,
	// and nothing of the app was stopped or changed.
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 || !slices.Equal(e.ev.all(), []string{"unblock", "lb in"}) || strings.Contains(rep.Text(), "reblock") {
		t.Fatalf("exit after the failed pre: %v\n%s", e.ev.all(), rep.Text())
	}
}

// TestPreWithNoLBCheckerWarns: nothing checks the endpoint: the node is
// blocked after a warning that nothing confirmed the LB.
func TestPreWithNoLBCheckerWarns(t *testing.T) {
	e := newTestEnv(t)
	withRotation(e).none = true
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || len(rep.Warnings) != 1 || !strings.Contains(rep.Warnings[0], "no load balancer checker reached the readiness endpoint") {
		t.Fatal(rep.Text())
	}
}

// TestExitPutsTheNodeBackInTheLBLast: after the unblock, and exit ends
// only once the LB confirmed; when it does not, the node is unblocked but
// exit fails and says so, the cycle closed as failed.
func TestExitPutsTheNodeBackInTheLBLast(t *testing.T) {
	e := newTestEnv(t)
	f := withRotation(e)
	afterPre(t, e)
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || !slices.Equal(e.ev.all(), []string{"start web", "unblock", "lb in"}) || !strings.Contains(rep.Verdict(), "back in LB rotation") {
		t.Fatalf("%q\n%s", e.ev.all(), rep.Text())
	}

	afterPre(t, e)
	f.inErr = lb.ErrNotConfirmed
	rep = e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != ExitFailed || !strings.Contains(rep.Verdict(), "the load balancer did not confirm it routes to the node") || e.fw.blocked {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); st.Open || st.Status != StatusFailed {
		t.Fatalf("state %+v", st)
	}
}

// TestExitPutsTheNodeBackInTheLBWhenAnExtraFails: an exit command that
// fails after the unblock still lets lb-in run: the node is in service,
// and closing its cycle with it out of rotation would leave it there
// (the readiness endpoint answering 503, nothing to put it back).
func TestExitPutsTheNodeBackInTheLBWhenAnExtraFails(t *testing.T) {
	e := newTestEnv(t)
	f := withRotation(e)
	e.cfg.Steps.ExitCommands = [][]string{{"/usr/local/bin/cluster", "join"}}
	afterPre(t, e)
	e.cmdErr = errors.New("cluster join: exited with code 1")
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if want := []string{"start web", "unblock", "run [/usr/local/bin/cluster join]", "lb in"}; !slices.Equal(e.ev.all(), want) {
		t.Fatalf("events %q, want %q", e.ev.all(), want)
	}
	if rep.ExitCode != ExitFailed || f.out || !strings.HasPrefix(rep.Verdict(), "patchagent exit: FAILED, node back in service, but cluster join: exited with code 1") {
		t.Fatalf("out %v\n%s", f.out, rep.Text())
	}
	// Both failing: both named, in order.
	afterPre(t, e)
	f.inErr = lb.ErrNotConfirmed
	rep = e.agent(t).Exit(context.Background(), RunOptions{})
	if v := rep.Verdict(); !strings.Contains(v, "cluster join: exited with code 1; and unblocked, but the load balancer did not confirm it routes to the node") {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); st.Open || st.Status != StatusFailed {
		t.Fatalf("state %+v", st)
	}
}

// TestRollbackKeepsNoLBRecordOnceBack: exit rolls back a breaking update,
// the app is healthy again and lb-in puts the node back: the cycle closes
// failed (the update failed) but with nothing left to put back, so status
// says in service and the next exit touches no load balancer.
func TestRollbackKeepsNoLBRecordOnceBack(t *testing.T) {
	e := newTestEnv(t)
	withJournaledRotation(e)
	p := withPackages(t, e)
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if rep := e.agent(t).Post(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	e.health.onProbe = func(int) {}
	e.health.answers = []healthcheck.Result{unhealthy(500)}
	e.health.dynamic = func() healthcheck.Result {
		if p.restores() > 0 {
			return healthy()
		}
		return unhealthy(500)
	}
	e.ev.log = nil
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != ExitFailed || !strings.Contains(rep.Verdict(), "rolled back 2 packages") || !slices.Contains(e.ev.all(), "lb in") {
		t.Fatalf("%q\n%s", e.ev.all(), rep.Text())
	}
	if st, _ := e.state.Load(); st.Open || st.Status != StatusFailed || st.LB != nil {
		t.Fatalf("after the rollback: open %v status %s lb %s", st.Open, st.Status, st.LB)
	}
	if s := e.agent(t).Status(context.Background()); s.Service != ServiceIn {
		t.Fatalf("status %s after a rollback that put the node back\n%s", s.Service, s.Text())
	}
	e.ev.log = nil
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 || slices.Contains(e.ev.all(), "lb in") {
		t.Fatalf("the next exit: %q\n%s", e.ev.all(), rep.Text())
	}
}

// TestRotationFollowsTheCycleOutsideTheWaits: reconcile (the boot) holds
// an open cycle's node out of rotation; the break-glass puts it back
// without waiting.
func TestRotationFollowsTheCycleOutsideTheWaits(t *testing.T) {
	e := newTestEnv(t)
	f := withRotation(e)
	afterPre(t, e)
	f.out = false // a daemon starting after a reboot
	e.fw.blocked, e.boot = false, "boot-2"
	if rep := e.agent(t).Reconcile(context.Background(), RunOptions{}); rep.ExitCode != 0 || !f.out {
		t.Fatalf("reconcile left the node in rotation: %s", rep.Text())
	}
	if rep := e.agent(t).Exit(context.Background(), forceOpts("lb down")); rep.Result != ResultForced || f.out || len(f.waits) != 1 {
		t.Fatalf("forced exit: out %v, waits %v\n%s", f.out, f.waits, rep.Text())
	}
}

// journaledRotation is an LB backend that keeps a record (the AWS
// target groups): Record says what TakeOut will remove; PutBack puts
// back what was last restored or recorded.
type journaledRotation struct {
	fakeRotation
	present   []string // registrations the LB has now
	recordErr error
	restored  []string // what PutBack would register
}

func (j *journaledRotation) Record(ctx context.Context, carried json.RawMessage) (json.RawMessage, error) {
	j.ev.add("lb record")
	if j.recordErr != nil {
		return nil, j.recordErr
	}
	j.restored = slices.Clone(j.present)
	if carried != nil {
		var old []string
		if err := json.Unmarshal(carried, &old); err != nil {
			return nil, err
		}
		for _, o := range old {
			if !slices.Contains(j.restored, o) {
				j.restored = append(j.restored, o)
			}
		}
	}
	return json.Marshal(j.restored)
}
func (j *journaledRotation) Restore(rec json.RawMessage) error {
	j.ev.add("lb restore " + string(rec))
	return json.Unmarshal(rec, &j.restored)
}
func (j *journaledRotation) TakeOut(ctx context.Context, d time.Duration) (lb.Wait, error) {
	j.present = nil
	return j.fakeRotation.TakeOut(ctx, d)
}
func (j *journaledRotation) PutBack(ctx context.Context, d time.Duration) (lb.Wait, error) {
	j.present = slices.Clone(j.restored)
	return j.fakeRotation.PutBack(ctx, d)
}

func withJournaledRotation(e *testEnv) *journaledRotation {
	j := &journaledRotation{fakeRotation: fakeRotation{ev: e.ev, checker: netip.MustParseAddr("10.0.1.5")}, present: []string{"web i-1:8080", "api i-1:9090"}}
	e.rotation = j
	e.cfg.LB.AWS.TargetGroups = []string{"arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"}
	return j
}

// putBackRefused runs a cycle whose exit the backend refuses to put back
// (RegisterTargets denied): closed failed, the record kept. The refusal
// stays until the test clears j.inErr.
func putBackRefused(t *testing.T, e *testEnv) *journaledRotation {
	t.Helper()
	j := withJournaledRotation(e)
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	j.inErr = errors.New("AccessDenied: elasticloadbalancing:RegisterTargets")
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode == 0 {
		t.Fatal(rep.Text())
	}
	return j
}

// TestPreRecordsWhatTheLBBackendRemovesFirst: the registrations are in
// the state file before TakeOut removes them; a second pre in the same
// cycle (the first one killed after the take-out) keeps the first record
// rather than recording the nothing that is left; exit, from a fresh
// agent (a reboot), restores that record and puts exactly it back.
func TestPreRecordsWhatTheLBBackendRemovesFirst(t *testing.T) {
	e := newTestEnv(t)
	j := withJournaledRotation(e)
	j.outErr = lb.ErrNotConfirmed // pre ends after the take-out: a kill there
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != ExitFailed {
		t.Fatal(rep.Text())
	}
	if evs := e.ev.all(); !slices.Equal(evs, []string{"lb record", `lb restore ["web i-1:8080","api i-1:9090"]`, "lb out"}) {
		t.Fatalf("events %q", evs)
	}
	st, _ := e.state.Load()
	if compact(st.LB) != `["web i-1:8080","api i-1:9090"]` || !st.Open {
		t.Fatalf("state after the take-out: open=%v lb=%s", st.Open, st.LB)
	}
	j.outErr = nil
	e.ev.log = nil
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if slices.Contains(e.ev.all(), "lb record") {
		t.Fatalf("the second pre recorded again: %q", e.ev.all())
	}
	if st, _ := e.state.Load(); compact(st.LB) != `["web i-1:8080","api i-1:9090"]` {
		t.Fatalf("the second pre changed the record: %s", st.LB)
	}
	j.restored = nil // what a restarted daemon knows
	e.ev.log = nil
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if !slices.Equal(j.present, []string{"web i-1:8080", "api i-1:9090"}) || !slices.ContainsFunc(e.ev.all(), func(ev string) bool {
		return strings.HasPrefix(ev, "lb restore ") && compact(json.RawMessage(strings.TrimPrefix(ev, "lb restore "))) == `["web i-1:8080","api i-1:9090"]`
	}) {
		t.Fatalf("exit put back %q (events %q)", j.present, e.ev.all())
	}
	if st, _ := e.state.Load(); st.LB != nil || st.Open {
		t.Fatalf("the closed cycle keeps %s", st.LB)
	}
}

// TestPreWhoseLBRecordFailsChangesNothing: the backend cannot say what
// it would remove (no IMDS, the API refuses): pre fails before anything,
// no cycle opened.
func TestPreWhoseLBRecordFailsChangesNothing(t *testing.T) {
	e := newTestEnv(t)
	j := withJournaledRotation(e)
	j.recordErr = errors.New("AccessDenied: not allowed")
	rep := e.agent(t).Pre(context.Background(), RunOptions{})
	if rep.ExitCode == 0 || !strings.Contains(rep.Verdict(), "nothing was changed: finding what to take out of the load balancer: AccessDenied") {
		t.Fatal(rep.Text())
	}
	if evs := e.ev.all(); !slices.Equal(evs, []string{"lb record"}) {
		t.Fatalf("acted: %q", evs)
	}
	if st, _ := e.state.Load(); st.Open {
		t.Fatalf("a cycle opened: %+v", st)
	}
}

func compact(b json.RawMessage) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return string(b)
	}
	return buf.String()
}

// TestExitKeepsTheLBRecordWhenThePutBackFails: the backend refused to put
// the node back (RegisterTargets denied): the cycle closes failed but
// keeps the record, and the next exit, from a fresh agent, with no cycle
// open and the app healthy, hands it to the backend and puts it back.
func TestExitKeepsTheLBRecordWhenThePutBackFails(t *testing.T) {
	e := newTestEnv(t)
	j := putBackRefused(t, e)
	st, _ := e.state.Load()
	if st.Open || compact(st.LB) != `["web i-1:8080","api i-1:9090"]` {
		t.Fatalf("after the failed put back: open %v, lb %s", st.Open, st.LB)
	}
	// status: no cycle open, but out of the LB's rotation, not in service.
	if s := e.agent(t).Status(context.Background()); s.Service != ServiceOut ||
		!strings.HasPrefix(s.Text(), "patchagent status: OUT OF LOAD BALANCER ROTATION (no patch cycle open)") {
		t.Fatalf("status after the failed put back: %s\n%s", s.Service, s.Text())
	}
	// Still refused: the record stays.
	e.ev.log = nil
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode == 0 || !strings.Contains(rep.Verdict(), "the last cycle's load balancer record is still not put back") {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); st.LB == nil {
		t.Fatal("a refused put back dropped the record")
	}
	j.inErr, j.restored = nil, nil
	e.ev.log = nil
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || !strings.Contains(rep.Text(), "from the last cycle's record") {
		t.Fatal(rep.Text())
	}
	evs := e.ev.all()
	i := slices.IndexFunc(evs, func(ev string) bool { return strings.HasPrefix(ev, "lb restore ") })
	if i < 0 || !slices.Contains(evs[i:], "lb in") {
		t.Fatalf("the next exit did not put the record back, waiting: %q", evs)
	}
	if st, _ := e.state.Load(); st.LB != nil {
		t.Fatalf("the record put back is still in the state file: %s", st.LB)
	}
}

// TestExitWithNoCycleUnblocksBeforeThePutBack: no cycle open, a record
// the last cycle could not put back and a block of ours left on: exit
// removes the block first, then puts the record back, as a cycle's exit
// does (a target group that checks the app's port never saw the blocked
// node healthy, and the put back waited out its deadline with the node
// left blocked).
func TestExitWithNoCycleUnblocksBeforeThePutBack(t *testing.T) {
	e := newTestEnv(t)
	j := putBackRefused(t, e)
	j.inErr, j.restored = nil, nil
	e.fw.blocked = true
	e.ev.log = nil
	rep := e.agent(t).Exit(context.Background(), RunOptions{})
	if rep.ExitCode != 0 || !strings.Contains(rep.Verdict(), "leftover block removed") {
		t.Fatal(rep.Text())
	}
	evs := e.ev.all()
	if u, in := slices.Index(evs, "unblock"), slices.Index(evs, "lb in"); u < 0 || in < u {
		t.Fatalf("want the unblock, then the put back: %q", evs)
	}
	if st, _ := e.state.Load(); st.LB != nil {
		t.Fatalf("the record put back is still in the state file: %s", st.LB)
	}
}

// TestExitWithNoRecordLeavesTheLBAlone: a backend that keeps records
// (HAProxy's runtime API, ELBv2), no cycle open, no record: exit (SSM
// runs it when nothing needed patching) does not touch the LB, which may
// hold the server in an operator's maintenance. Before, it set the
// server ready.
func TestExitWithNoRecordLeavesTheLBAlone(t *testing.T) {
	e := newTestEnv(t)
	withJournaledRotation(e)
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 || !strings.Contains(rep.Verdict(), "nothing to do") {
		t.Fatal(rep.Text())
	}
	if evs := e.ev.all(); len(evs) != 0 {
		t.Fatalf("with no record, the LB was changed: %q", evs)
	}
}

// TestStatusShowsTheLBAndAPreStoppedBeforeTheBlock: a pre that stopped
// at lb-out: status says the node is out of the LB's rotation but not
// blocked (consistent: nothing is to be re-blocked), names the backend
// and what it must put back.
func TestStatusShowsTheLBAndAPreStoppedBeforeTheBlock(t *testing.T) {
	e := newTestEnv(t)
	j := withJournaledRotation(e)
	j.outErr = lb.ErrNotConfirmed
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != ExitFailed {
		t.Fatal(rep.Text())
	}
	s := e.agent(t).Status(context.Background())
	txt := s.Text()
	if !s.Consistent || s.Block.Recorded || !strings.HasPrefix(txt, "patchagent status: OUT OF LOAD BALANCER ROTATION, not blocked") ||
		!strings.Contains(txt, "  lb:     AWS ELBv2, 1 target group(s), min_healthy 1, standby auto, to put back: [\"web i-1:8080\",\"api i-1:9090\"]\n") {
		t.Fatalf("%+v\n%s", s, txt)
	}
}

// TestANewCycleCarriesWhatTheLastCouldNotPutBack: exit could not put the
// node back (RegisterTargets refused) and the next pre runs instead of
// an exit: its record carries the old registrations, and its exit puts
// them all back.
func TestANewCycleCarriesWhatTheLastCouldNotPutBack(t *testing.T) {
	e := newTestEnv(t)
	j := putBackRefused(t, e)
	j.inErr, j.present = nil, nil // the put back was refused: the LB has none of them
	if rep := e.agent(t).Pre(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if st, _ := e.state.Load(); compact(st.LB) != `["web i-1:8080","api i-1:9090"]` {
		t.Fatalf("the new cycle's record: %s", st.LB)
	}
	if rep := e.agent(t).Exit(context.Background(), RunOptions{}); rep.ExitCode != 0 {
		t.Fatal(rep.Text())
	}
	if !slices.Equal(j.present, []string{"web i-1:8080", "api i-1:9090"}) {
		t.Fatalf("put back %q", j.present)
	}
}
