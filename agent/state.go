package agent

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/patchagent/patchagent/firewall"
)

// StateVersion is the state file's schema version.
const StateVersion = 1

// Phase step results recorded in State.Status.
const (
	StatusRunning = "running"
	StatusOK      = "ok"
	StatusFailed  = "failed"
	// StatusForced: exit --force closed the cycle without a health check.
	StatusForced = "forced"
)

// State is the crash-safe record of the patch cycle. Each phase writes its
// intent here before the side effect it names, so a later phase, a restarted
// daemon or an operator can always tell what was done.
type State struct {
	Version int `json:"version"`
	// CycleID names the open patch cycle; empty when none was ever opened.
	CycleID string `json:"cycle_id,omitempty"`
	// Open is true from the moment pre decides to block until exit returns
	// the node to service: while true the node may be out of service.
	Open bool `json:"open"`
	// BootID is the kernel boot id at the last write: a different one now
	// means the node rebooted and every iptables rule is gone.
	BootID string `json:"boot_id,omitempty"`
	// Phase, Step and Status say where the last phase got to.
	Phase  string `json:"phase,omitempty"`
	Step   string `json:"step,omitempty"`
	Status string `json:"status,omitempty"`
	Error  string `json:"error,omitempty"`
	// Attempts counts runs of Phase in this cycle.
	Attempts int `json:"attempts,omitempty"`
	// Block is what pre set out to install (written before the block).
	Block *BlockRecord `json:"block,omitempty"`
	// LB is what the load balancer backend must undo, if it keeps a
	// record (JournaledRotation: written before the take-out).
	LB json.RawMessage `json:"lb,omitempty"`
	// Stopped is the app pre set out to stop (written before pm2 stop).
	Stopped *StopRecord `json:"stopped,omitempty"`
	// Post is this cycle's dependency update (written before the snapshot).
	Post *PostRecord `json:"post,omitempty"`
	// Forced is the break-glass (exit --force) that closed the cycle, or
	// removed a leftover block, without a health check.
	Forced *ForceRecord `json:"forced,omitempty"`
	// Previous is how the cycle before this one ended, kept when pre
	// opens a new cycle over its record.
	Previous *CycleSummary `json:"previous,omitempty"`
	// Warnings of the last phase run.
	Warnings []string `json:"warnings,omitempty"`
	// Last is the last result of each phase, by phase name.
	Last map[string]PhaseResult `json:"last,omitempty"`

	CycleStartedAt time.Time `json:"cycle_started_at,omitzero"`
	PhaseStartedAt time.Time `json:"phase_started_at,omitzero"`
	UpdatedAt      time.Time `json:"updated_at,omitzero"`
	// ClosedAt is when exit ended the cycle (the node back in service).
	ClosedAt time.Time `json:"closed_at,omitzero"`
}

// Blocks reports whether the open cycle is one whose block the boot and
// the daemon's watch keep in place: pre got as far as recording the
// block's intent (a pre that stopped at lb-out, before it, left the node
// unblocked).
func (s State) Blocks() bool { return s.Open && s.Block != nil }

// PhaseResult is how a phase run ended.
type PhaseResult struct {
	Result  string    `json:"result"`
	At      time.Time `json:"at"`
	Seconds float64   `json:"duration_seconds"`
	Error   string    `json:"error,omitempty"`
	CycleID string    `json:"cycle_id,omitempty"`
	// LastFailure is when the phase last failed, this run or an earlier
	// one (zero: never): a later success does not erase it, so the
	// metrics of a run without the daemon still show a failure the next
	// run followed.
	LastFailure time.Time `json:"last_failure_at,omitzero"`
}

// LBPending reports whether the state file holds load balancer changes
// pre made that no put back has undone yet (a JournaledRotation's record).
func (s State) LBPending() bool { return len(s.LB) > 0 && string(s.LB) != "null" }

// BlockRecord describes the block pre installs.
type BlockRecord struct {
	Chain    string            `json:"chain"`
	Ports    []uint16          `json:"ports"`
	Action   string            `json:"action"`
	Families []firewall.Family `json:"families"`
	BootID   string            `json:"boot_id"`
	Since    time.Time         `json:"since"`
}

// StopRecord describes the app pre stops, so exit knows what to start.
type StopRecord struct {
	App       string    `json:"app"`
	User      string    `json:"user"`
	WasOnline []int     `json:"was_online_pids,omitempty"`
	At        time.Time `json:"at"`
}

// PostRecord describes post's dependency update, so that a crash can be
// undone and exit can roll the update back.
type PostRecord struct {
	CycleID string `json:"cycle_id"`
	// Snapshot is where the dependency tree was saved before the update.
	Snapshot string `json:"snapshot"`
	// Taken: the snapshot is complete (a crash before this leaves nothing
	// to restore and nothing changed).
	Taken bool `json:"taken"`
	// Status: running (the update may be half done), ok, failed (restored).
	Status string `json:"status"`
	// Changes lists "name old -> new", "+ name new", "- name old".
	Changes []string `json:"changes,omitempty"`
	// RolledBack: exit restored the snapshot.
	RolledBack bool `json:"rolled_back,omitempty"`
	// Interrupted: the post died during its update (the tree may have been
	// left half-updated) and exit found it so; Undone says how exit
	// restored the snapshot ("exit restored the snapshot at ...").
	Interrupted bool   `json:"interrupted,omitempty"`
	Undone      string `json:"undone,omitempty"`
}

// ForceRecord is a break-glass exit: who asked, why, and when.
type ForceRecord struct {
	// Cycle is the cycle it closed; "" when none was open (it removed a
	// leftover block).
	Cycle  string    `json:"cycle_id,omitempty"`
	At     time.Time `json:"at"`
	By     Caller    `json:"by"`
	Reason string    `json:"reason,omitempty"`
	// Warnings: what the forced exit could not do, or left as it was.
	Warnings []string `json:"warnings,omitempty"`
}

// CycleSummary is how a closed cycle ended, as the next cycle keeps it.
type CycleSummary struct {
	CycleID   string       `json:"cycle_id"`
	StartedAt time.Time    `json:"started_at,omitzero"`
	ClosedAt  time.Time    `json:"closed_at,omitzero"`
	Phase     string       `json:"phase,omitempty"`
	Status    string       `json:"status,omitempty"`
	Error     string       `json:"error,omitempty"`
	Forced    *ForceRecord `json:"forced,omitempty"`
	Post      *PostRecord  `json:"post,omitempty"`
}

// summarize is how st's cycle ended, for the cycle that replaces it (nil
// when st never had one).
func summarize(st State) *CycleSummary {
	if st.CycleID == "" {
		return nil
	}
	s := &CycleSummary{CycleID: st.CycleID, StartedAt: st.CycleStartedAt, ClosedAt: st.ClosedAt,
		Phase: st.Phase, Status: st.Status, Error: firstLine(st.Error)}
	if st.Forced != nil && st.Forced.Cycle == st.CycleID {
		s.Forced = st.Forced
	}
	if st.Post != nil && st.Post.CycleID == st.CycleID {
		s.Post = st.Post
	}
	return s
}

// leftHalfUpdated says, for the cycle that replaces it, that the cycle
// summarized by s closed with its post interrupted mid-update and never
// undone ("" otherwise).
func (s *CycleSummary) leftHalfUpdated() string {
	if s == nil || interruptedPostRecord(s.Post, s.CycleID) == nil {
		return ""
	}
	return fmt.Sprintf("the previous cycle %s closed (%s) with its post interrupted during the dependency update and never undone: app.dir may hold a half-updated node_modules (the snapshot taken before that update is %s)",
		s.CycleID, orNone(s.Status), s.Post.Snapshot)
}

// StateStore reads and atomically writes the state file. A state that
// could not be written but describes what is true on the node (exit put
// the node back in service on a read-only or full state disk) is kept in
// memory with Remember: Load returns it, ahead of the file, until a Save
// succeeds again.
type StateStore struct {
	Path string

	// writeFile replaces the file with its argument; nil is write (tests
	// make it fail as a read-only or full disk would).
	writeFile func([]byte) error

	mu      sync.Mutex
	unsaved []byte // Remember's state, encoded; nil when the file is current
	cause   error  // why it could not be written
}

// NewStateStore returns the store for state.json in dir.
func NewStateStore(dir string) *StateStore {
	return &StateStore{Path: filepath.Join(dir, "state.json")}
}

// ErrStateUnreadable is wrapped by Load when the state file is there but
// cannot be understood (corrupt, or written by a newer patchagent): whether
// a cycle is open is then unknown.
var ErrStateUnreadable = errors.New("state file unreadable")

// Load returns the recorded state; a missing file is the zero state (no
// cycle was ever opened). A file that cannot be parsed is an error: it is
// left untouched for the operator to read.
func (s *StateStore) Load() (State, error) {
	s.mu.Lock()
	kept := s.unsaved
	s.mu.Unlock()
	if kept != nil {
		var st State
		err := json.Unmarshal(kept, &st)
		return st, err
	}
	data, err := os.ReadFile(s.Path)
	if errors.Is(err, os.ErrNotExist) {
		return State{Version: StateVersion}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("reading state %s: %w", s.Path, err)
	}
	var st State
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&st); err != nil {
		return State{}, fmt.Errorf("%w: parsing state %s (left as it is; move it away only once the node's firewall and app are checked by hand): %w", ErrStateUnreadable, s.Path, err)
	}
	if st.Version > StateVersion {
		return State{}, fmt.Errorf("%w: state %s has version %d, newer than this patchagent understands (%d)", ErrStateUnreadable, s.Path, st.Version, StateVersion)
	}
	return st, nil
}

// Save writes st atomically: a temp file in the same directory, fsync,
// rename over the old file, fsync of the directory. A failed save leaves the
// previous state in place.
func (s *StateStore) Save(st State) error {
	data, err := encodeState(st)
	if err != nil {
		return err
	}
	write := s.write
	if s.writeFile != nil {
		write = s.writeFile
	}
	if err := write(data); err != nil {
		return err
	}
	s.mu.Lock()
	s.unsaved, s.cause = nil, nil
	s.mu.Unlock()
	return nil
}

// Remember keeps st, which a failed Save (cause) could not write, as the
// state Load returns from now on in this process: the daemon then does not
// re-block a node that exit returned to service. A later successful Save
// writes the file again and forgets it.
func (s *StateStore) Remember(st State, cause error) {
	data, err := encodeState(st)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.unsaved, s.cause = data, cause
	s.mu.Unlock()
}

// Unrecorded is why the state Load returns is not the file's (nil when it
// is): a Remember since the last successful Save.
func (s *StateStore) Unrecorded() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cause
}

func encodeState(st State) ([]byte, error) {
	st.Version = StateVersion
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding state: %w", err)
	}
	return append(data, '\n'), nil
}

// write replaces the file with data atomically.
func (s *StateStore) write(data []byte) error {
	dir := filepath.Dir(s.Path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating state dir %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("writing state %s: %w", s.Path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing state %s: %w", s.Path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing state %s: %w", s.Path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing state %s: %w", s.Path, err)
	}
	if err := os.Rename(tmp, s.Path); err != nil {
		return fmt.Errorf("replacing state %s: %w", s.Path, err)
	}
	ok = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing state dir %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing state dir %s: %w", dir, err)
	}
	return nil
}

// BootIDFile is where the kernel exposes the id of the current boot.
const BootIDFile = "/proc/sys/kernel/random/boot_id"

// ReadBootID returns the current boot id from path.
func ReadBootID(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading boot id: %w", err)
	}
	id := strings.TrimSpace(string(b))
	if id == "" {
		return "", fmt.Errorf("reading boot id: %s is empty", path)
	}
	return id, nil
}
