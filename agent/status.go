package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// NodeStatus is what `patchagent status` shows: the cycle from the state
// file, the block as the kernel has it, the app as pm2 has it, and the last
// result of each phase.
type NodeStatus struct {
	Cycle struct {
		Open      bool      `json:"open"`
		ID        string    `json:"id,omitempty"`
		StartedAt time.Time `json:"started_at,omitzero"`
		Phase     string    `json:"phase,omitempty"`
		Step      string    `json:"step,omitempty"`
		Status    string    `json:"status,omitempty"`
		Error     string    `json:"error,omitempty"`
		ClosedAt  time.Time `json:"closed_at,omitzero"`
		// Forced: exit --force closed it (or removed a leftover block).
		Forced *ForceRecord `json:"forced,omitempty"`
		// Previous is how the cycle before this one ended.
		Previous *CycleSummary `json:"previous,omitempty"`
	} `json:"cycle"`
	Block struct {
		// Kernel is read from iptables: blocked, partial or none.
		Kernel   string   `json:"kernel"`
		Families []string `json:"families,omitempty"`
		// Recorded: the state file says a block should be in place.
		Recorded bool      `json:"recorded"`
		Since    time.Time `json:"since,omitzero"`
		Error    string    `json:"error,omitempty"`
	} `json:"block"`
	App struct {
		Name      string        `json:"name"`
		User      string        `json:"user"`
		Instances []AppInstance `json:"instances,omitempty"`
		Error     string        `json:"error,omitempty"`
		Post      *PostRecord   `json:"post,omitempty"`
	} `json:"app"`
	LB struct {
		// Backend is how the node leaves the load balancer ("" for none).
		Backend string `json:"backend,omitempty"`
		// Record is what the backend must put back (AWS target group
		// registrations), from the state file.
		Record json.RawMessage `json:"record,omitempty"`
	} `json:"lb"`
	Rebooted bool                   `json:"rebooted_since_last_phase"`
	Phases   map[string]PhaseResult `json:"phases"`
	// Consistent is false when the kernel and the state file disagree (a
	// cycle whose block was recorded open without it, or a block with no
	// cycle).
	Consistent bool   `json:"consistent"`
	StatePath  string `json:"state_file"`
	// StateError says why the state file could not be read ("" when it
	// was): the cycle and the phases are then unknown.
	StateError string `json:"state_error,omitempty"`
	// LBPending: the state file holds load balancer changes not put back
	// (State.LBPending), which keeps the node out of service.
	LBPending bool `json:"lb_pending"`
	// Service is the verdict: ServiceIn, ServiceOut or ServiceUnknown.
	Service string `json:"service"`
}

// The verdicts of a status (NodeStatus.Service).
const (
	// ServiceIn: no patch cycle open and no block of ours in the kernel.
	ServiceIn = "in"
	// ServiceOut: a cycle open, or a block of ours in the kernel.
	ServiceOut = "out"
	// ServiceUnknown: the state file or the block could not be read.
	ServiceUnknown = "unknown"
)

// ErrNeedsRoot is why status leaves the block unknown when not run as
// root: iptables needs root to list the rules.
var ErrNeedsRoot = errors.New("needs root")

// AppInstance is one pm2 instance as status shows it.
type AppInstance struct {
	ID       int    `json:"pm2_id"`
	PID      int    `json:"pid"`
	Status   string `json:"status"`
	Restarts int    `json:"restarts"`
}

// Status reads the node's patch state; it changes nothing and takes no lock.
// What it cannot read (the state file, the firewall, pm2) it says in the
// status, and reads the rest.
func (a *Agent) Status(ctx context.Context) *NodeStatus {
	st, err := a.d.State.Load()
	s := &NodeStatus{StatePath: a.d.State.Path, Phases: st.Last}
	if err != nil {
		s.StateError = err.Error()
	}
	if s.Phases == nil {
		s.Phases = map[string]PhaseResult{}
	}
	s.Cycle.Open, s.Cycle.ID, s.Cycle.StartedAt = st.Open, st.CycleID, st.CycleStartedAt
	s.Cycle.Phase, s.Cycle.Step, s.Cycle.Status, s.Cycle.Error, s.Cycle.ClosedAt = st.Phase, st.Step, st.Status, st.Error, st.ClosedAt
	s.Cycle.Forced, s.Cycle.Previous = st.Forced, st.Previous
	if boot, err := a.d.BootID(); err == nil && st.BootID != "" {
		s.Rebooted = boot != st.BootID
	}
	s.Block.Recorded = st.Open && st.Block != nil
	if s.Block.Recorded {
		s.Block.Since = st.Block.Since
	}
	fw, err := a.d.Firewall.Status(ctx)
	switch {
	case err != nil:
		s.Block.Kernel, s.Block.Error = "unknown", err.Error()
	case fw.Blocked():
		s.Block.Kernel = "blocked"
	case fw.Partial():
		s.Block.Kernel = "partial"
	default:
		s.Block.Kernel = "none"
	}
	for f, fs := range fw.Families {
		if fs.Present() {
			s.Block.Families = append(s.Block.Families, string(f))
		}
	}
	sort.Strings(s.Block.Families)
	s.App.Name, s.App.User = a.cfg.App.Name, a.d.AppUser
	if st.Post != nil && st.Post.CycleID == st.CycleID {
		s.App.Post = st.Post
	}
	procs, err := a.d.App.Processes(ctx, a.cfg.App.Name)
	if err != nil {
		s.App.Error = err.Error()
	}
	for _, p := range procs {
		s.App.Instances = append(s.App.Instances, AppInstance{ID: p.ID, PID: p.PID, Status: p.Status, Restarts: p.Restarts})
	}
	s.LB.Backend, s.LB.Record, s.LBPending = a.cfg.LB.backend(), st.LB, st.LBPending()
	inKernel := s.Block.Kernel == "blocked" || s.Block.Kernel == "partial"
	s.Consistent = s.Block.Kernel != "unknown" && s.StateError == "" && inKernel == st.Blocks()
	switch {
	case s.Block.Kernel == "unknown" || s.StateError != "":
		s.Service = ServiceUnknown
	case !s.Cycle.Open && s.Block.Kernel == "none" && !s.LBPending:
		s.Service = ServiceIn
	default:
		s.Service = ServiceOut
	}
	return s
}

// unknownVerdict is the verdict line of a status that could not read the
// state file or the block: what it could not read first, then what it
// knows; never "in service".
func (s *NodeStatus) unknownVerdict() string {
	var parts []string
	if s.Block.Kernel == "unknown" {
		parts = append(parts, "block state unknown: "+s.Block.Error)
	}
	switch {
	case s.StateError != "":
		parts = append(parts, "patch cycle unknown: "+s.StateError)
	case s.Cycle.Open:
		parts = append(parts, fmt.Sprintf("patch cycle %s open (last: %s %s at step %s)", s.Cycle.ID, s.Cycle.Phase, s.Cycle.Status, s.Cycle.Step))
	default:
		parts = append(parts, "no patch cycle open")
	}
	if s.Block.Kernel != "unknown" {
		parts = append(parts, "block "+s.Block.Kernel+" in the kernel")
	}
	return "patchagent status: " + strings.Join(parts, "; ") + "\n"
}

// Text renders the status for a terminal: a verdict line, then details.
func (s *NodeStatus) Text() string {
	var b strings.Builder
	switch {
	case s.Service == ServiceUnknown:
		b.WriteString(s.unknownVerdict())
	case !s.Cycle.Open && s.Block.Kernel == "none" && s.LBPending:
		b.WriteString("patchagent status: OUT OF LOAD BALANCER ROTATION (no patch cycle open): the last cycle could not put back its load balancer changes: `patchagent exit` puts them back once the app is healthy\n")
	case !s.Cycle.Open && s.Block.Kernel == "none" && s.Cycle.Forced != nil && s.Cycle.Forced.Cycle != "" && s.Cycle.Forced.Cycle == s.Cycle.ID:
		fmt.Fprintf(&b, "patchagent status: in service (no patch cycle open; cycle %s was closed FORCED, without a health check)\n", s.Cycle.ID)
	case !s.Cycle.Open && s.Block.Kernel == "none":
		b.WriteString("patchagent status: in service (no patch cycle open)\n")
	case s.Cycle.Open && s.Block.Kernel == "blocked":
		fmt.Fprintf(&b, "patchagent status: OUT OF SERVICE, patch cycle %s open (last: %s %s at step %s)\n", s.Cycle.ID, s.Cycle.Phase, s.Cycle.Status, s.Cycle.Step)
	case s.Cycle.Open && !s.Block.Recorded && s.Block.Kernel == "none":
		fmt.Fprintf(&b, "patchagent status: OUT OF LOAD BALANCER ROTATION, not blocked: patch cycle %s open, its pre stopped before the block (last: %s %s at step %s): `patchagent exit` puts the node back once the app is healthy\n", s.Cycle.ID, s.Cycle.Phase, s.Cycle.Status, s.Cycle.Step)
	case s.Cycle.Open:
		fmt.Fprintf(&b, "patchagent status: patch cycle %s open but the block is %s in the kernel (reboot or flush?): `patchagent reconcile` re-applies it\n", s.Cycle.ID, s.Block.Kernel)
	default:
		fmt.Fprintf(&b, "patchagent status: no patch cycle open but a block of ours is %s in the kernel: `patchagent exit` removes it once the app is healthy\n", s.Block.Kernel)
	}
	fmt.Fprintf(&b, "  block:  kernel %s", s.Block.Kernel)
	if len(s.Block.Families) > 0 {
		fmt.Fprintf(&b, " (%s)", strings.Join(s.Block.Families, ", "))
	}
	if !s.Block.Since.IsZero() {
		fmt.Fprintf(&b, ", since %s", s.Block.Since.Format(time.RFC3339))
	}
	if s.Block.Error != "" {
		fmt.Fprintf(&b, ", error: %s", s.Block.Error)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "  app:    %s (pm2 of %s):", s.App.Name, s.App.User)
	if s.App.Error != "" {
		fmt.Fprintf(&b, " %s", s.App.Error)
	}
	for _, in := range s.App.Instances {
		fmt.Fprintf(&b, " [%d] %s pid %d restarts %d;", in.ID, in.Status, in.PID, in.Restarts)
	}
	b.WriteString("\n")
	if p := s.App.Post; p != nil {
		fmt.Fprintf(&b, "  post:   %s, %d change(s), snapshot %s, rolled back %v", p.Status, len(p.Changes), p.Snapshot, p.RolledBack)
		if p.Interrupted {
			fmt.Fprintf(&b, ", interrupted mid-update (%s)", orNone(p.Undone))
		}
		b.WriteString("\n")
	}
	if f := s.Cycle.Forced; f != nil {
		what := "cycle " + f.Cycle + " closed"
		if f.Cycle == "" {
			what = "leftover block removed"
		}
		fmt.Fprintf(&b, "  forced: %s at %s by %s", what, f.At.Format(time.RFC3339), f.By)
		if f.Reason != "" {
			fmt.Fprintf(&b, ", reason %q", f.Reason)
		}
		b.WriteString("\n")
	}
	if p := s.Cycle.Previous; p != nil {
		fmt.Fprintf(&b, "  before: cycle %s ended %s (%s)", p.CycleID, orNone(p.Status), orNone(p.Phase))
		if p.Forced != nil {
			fmt.Fprintf(&b, ", forced by %s", p.Forced.By.Who())
		}
		if w := p.leftHalfUpdated(); w != "" {
			b.WriteString(", its post interrupted and never undone")
		} else if p.Post != nil && p.Post.Interrupted {
			b.WriteString(", its interrupted post undone by exit")
		}
		b.WriteString("\n")
	}
	if s.LB.Backend != "" {
		fmt.Fprintf(&b, "  lb:     %s", s.LB.Backend)
		if s.LBPending {
			var c bytes.Buffer
			if json.Compact(&c, s.LB.Record) == nil {
				fmt.Fprintf(&b, ", to put back: %s", c.String())
			}
		}
		b.WriteString("\n")
	}
	if s.Rebooted {
		b.WriteString("  boot:   the node rebooted since the last phase\n")
	}
	names := make([]string, 0, len(s.Phases))
	for n := range s.Phases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		p := s.Phases[n]
		fmt.Fprintf(&b, "  %-9s last %s at %s in %.1fs", n+":", p.Result, p.At.Format(time.RFC3339), p.Seconds)
		if p.Error != "" {
			fmt.Fprintf(&b, ": %s", p.Error)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "  state:  %s", s.StatePath)
	if s.StateError != "" {
		fmt.Fprintf(&b, ", unreadable: %s", s.StateError)
	}
	b.WriteString("\n")
	return b.String()
}
