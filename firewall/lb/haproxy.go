package lb

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"
)

// HAProxy takes the node out of an HAProxy backend through its runtime API
// (the stats socket at level admin): `set server B/S state drain` stops new
// traffic at once, and `state ready` puts the server back. Each waits for
// HAProxy's stats (`show stat`, the status column) to say it is done; see
// Out and InRotation for which statuses count.
//
// Taking out does not wait for the server's sessions to end, as the AWS
// backend does not wait for a target's draining to end: after lb-out the
// agent blocks new connections and its drain step waits, under
// drain.timeout, for the established ones (HAProxy's included) to finish.
// A WebSocket or a long download that outlived lb.deadline used to fail
// pre with the node drained and not patched. The drain counts connections
// from outside loopback only: an HAProxy on the node itself is not waited
// for.
//
// It puts back only what it took out. HAProxies.Record reads the admin
// state the server had before pre (`show servers state`) for the state
// journal: a
// server someone else had set to maint or drain (an operator, another
// tool) is left as it was by TakeOut, PutBack and SetOut, which report it
// in no rotation (Wait.NotIn). Before, pre's drain cleared an operator's
// maint, and exit (every one with no cycle open too) set the server ready.
type HAProxy struct {
	// Socket is the runtime API: a unix socket path, or host:port.
	Socket string
	// Backend and Server name this node in HAProxy's configuration.
	Backend, Server string
	// Poll is how often its stats are read while waiting (default 100ms).
	Poll time.Duration

	mu    sync.Mutex
	found string // the restored record's Admin; "" with none (a cycle of an earlier version)
}

// HAProxyRecord is what the state journal keeps of a take-out: the server
// and the admin state it was found in.
type HAProxyRecord struct {
	Socket string `json:"socket,omitempty"` // the runtime API ("" in the first records: any)
	Server string `json:"haproxy_server"`   // backend/server
	Admin  string `json:"admin"`            // AdminReady, AdminMaint or AdminDrain
}

// of reports whether r is a record of h's server.
func (r HAProxyRecord) of(h *HAProxy) bool {
	return r.Server == h.name() && (r.Socket == "" || r.Socket == h.Socket)
}

// The admin states a record can hold: what `set server ... state` sets.
const (
	AdminReady = "ready"
	AdminMaint = "maint"
	AdminDrain = "drain"
)

// HAProxy's srv_admin_state flags that `set server ... state maint|drain`
// sets (src/server.h SRV_ADMF_FMAINT, SRV_ADMF_FDRAIN; Debian 12's 2.6.12
// shows 1 and 8, and 5 for a server the config file starts "disabled",
// FMAINT with CMAINT). The others are inherited (a tracked server's, 2
// and 16), CMAINT left after a ready (4), or from DNS resolution: no
// state of ours to keep or undo.
const (
	adminForcedMaint = 0x01
	adminForcedDrain = 0x08
)

func (h *HAProxy) name() string { return h.Backend + "/" + h.Server }

// Command sends one runtime API command and returns HAProxy's answer.
func (h *HAProxy) Command(ctx context.Context, cmd string) (string, error) {
	network := "tcp"
	if strings.HasPrefix(h.Socket, "/") {
		network = "unix"
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	c, err := d.DialContext(ctx, network, h.Socket)
	if err != nil {
		return "", fmt.Errorf("HAProxy runtime API %s: %w", h.Socket, err)
	}
	defer c.Close()
	deadline := time.Now().Add(5 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	_ = c.SetDeadline(deadline)
	if _, err := c.Write([]byte(cmd + "\n")); err != nil {
		return "", fmt.Errorf("HAProxy runtime API %s: %w", h.Socket, err)
	}
	var b strings.Builder
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("HAProxy runtime API %s: reading the answer to %q: %w", h.Socket, cmd, err)
	}
	return b.String(), nil
}

// setState sets the server's admin state; HAProxy answers nothing when it
// took the command, else says why.
func (h *HAProxy) setState(ctx context.Context, state string) error {
	out, err := h.Command(ctx, fmt.Sprintf("set server %s state %s", h.name(), state))
	if err != nil {
		return err
	}
	if msg := strings.TrimSpace(out); msg != "" {
		return fmt.Errorf("HAProxy refused `set server %s state %s`: %s", h.name(), state, msg)
	}
	return nil
}

// ServerStat is what HAProxy's stats say of the server.
type ServerStat struct {
	Status   string // UP, DOWN, DRAIN, MAINT, "UP 1/2", "no check", ... (see Out)
	Sessions int    // current sessions (scur)
}

// Stat reads the server's line of `show stat`.
func (h *HAProxy) Stat(ctx context.Context) (ServerStat, error) {
	all, err := h.BackendStats(ctx)
	if err != nil {
		return ServerStat{}, err
	}
	s, ok := all[h.Server]
	if !ok {
		return ServerStat{}, fmt.Errorf("HAProxy has no server %s", h.name())
	}
	return s, nil
}

// BackendStats reads `show stat` once and returns what it says of every
// server of Backend, by server name (the BACKEND and FRONTEND lines left out).
func (h *HAProxy) BackendStats(ctx context.Context) (map[string]ServerStat, error) {
	out, err := h.Command(ctx, "show stat")
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(strings.NewReader(strings.TrimPrefix(out, "# ")))
	r.FieldsPerRecord = -1
	recs, err := r.ReadAll()
	if err != nil || len(recs) == 0 {
		return nil, fmt.Errorf("HAProxy `show stat`: %v", err)
	}
	status, scur := -1, -1
	for i, name := range recs[0] {
		switch name {
		case "status":
			status = i
		case "scur":
			scur = i
		}
	}
	if status < 0 || scur < 0 {
		return nil, fmt.Errorf("HAProxy `show stat` has no status or scur column")
	}
	all := map[string]ServerStat{}
	for _, rec := range recs[1:] {
		if len(rec) > max(status, scur) && rec[0] == h.Backend && rec[1] != "BACKEND" && rec[1] != "FRONTEND" {
			n, _ := strconv.Atoi(rec[scur])
			all[rec[1]] = ServerStat{Status: rec[status], Sessions: n}
		}
	}
	return all, nil
}

// Out reports whether status, HAProxy's stats status of a server, says
// HAProxy sends it no new load-balanced session. These are what HAProxy
// 2.x's stats_fill_sv_computestate and the MAINT cases before it write
// (src/stats.c; seen from Debian 12's 2.6.12 in the integration test):
//
//   - DRAIN, "DRAIN 1/3" (draining, with failed checks), "DRAIN (agent)"
//     (any drained server that has an agent-check): the admin drain
//     state, no new session but those persistence (cookies, stick tables)
//     still sends;
//   - MAINT, "MAINT (via be/s)", "MAINT (resolution)": no traffic at all;
//   - NOLB, "NOLB 1/2": soft-stopping (http-check disable-on-404, an
//     agent answering stopping), as DRAIN;
//   - DOWN, "DOWN 1/2" (going up, not yet in service), "DOWN (agent)":
//     its checks took it out (a drained node whose port the block closes
//     ends up there).
//
// UP, "UP 1/2" and "no check" (up, without a health check) take new
// sessions; anything else, such as a status a later HAProxy invents, is
// not taken for out.
func Out(status string) bool {
	switch word, _, _ := strings.Cut(status, " "); word {
	case "DRAIN", "MAINT", "NOLB", "DOWN":
		return true
	}
	return false
}

// InRotation reports whether status says HAProxy balances new sessions to
// the server and nothing says it should not: "UP", its checks all passing,
// or "no check", a server without a health check (HAProxy never reports
// such a server UP; with an agent-check only, it is "no check" too).
//
// "UP 1/2" is not in rotation yet: HAProxy reports it for a server that
// left maintenance before any check confirmed it (one failed check later
// it is DOWN) and for one whose checks have started failing; it becomes
// UP at the next passed check. "DOWN 1/2" is still down, going up. A
// DRAIN or "DRAIN (agent)" after `state ready` is an agent-check still
// answering drain (an agent answering "ready" would, likewise, undo
// lb-out's drain).
func InRotation(status string) bool {
	return status == "UP" || status == "no check"
}

// admin reads the server's admin state from `show servers state`: maint
// or drain if it was set so through the runtime API (forced), else ready.
func (h *HAProxy) admin(ctx context.Context) (string, error) {
	out, err := h.Command(ctx, "show servers state "+h.Backend)
	if err != nil {
		return "", err
	}
	var cols []string
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) > 1 && f[0] == "#" {
			cols = f[1:]
			continue
		}
		if cols == nil || len(f) != len(cols) {
			continue
		}
		row := map[string]string{}
		for i, c := range cols {
			row[c] = f[i]
		}
		if row["be_name"] != h.Backend || row["srv_name"] != h.Server {
			continue
		}
		flags, err := strconv.ParseUint(row["srv_admin_state"], 10, 32)
		if err != nil {
			return "", fmt.Errorf("HAProxy `show servers state %s`: server %s's srv_admin_state %q", h.Backend, h.Server, row["srv_admin_state"])
		}
		switch {
		case flags&adminForcedMaint != 0:
			return AdminMaint, nil
		case flags&adminForcedDrain != 0:
			return AdminDrain, nil
		}
		return AdminReady, nil
	}
	if cols == nil {
		return "", fmt.Errorf("HAProxy `show servers state %s`: %s", h.Backend, strings.TrimSpace(out))
	}
	return "", fmt.Errorf("HAProxy has no server %s", h.name())
}

// record reads the admin state the server is in before TakeOut, for the
// state journal (HAProxies.Record). carried, the entry of a record the
// last cycle could not put back (nil for none), stands if it names this
// server: the server is drained by us since then, and carried says what
// it was before.
func (h *HAProxy) record(ctx context.Context, carried *HAProxyRecord) (HAProxyRecord, error) {
	if carried != nil && carried.of(h) && carried.Admin != "" {
		return *carried, nil
	}
	admin, err := h.admin(ctx)
	if err != nil {
		return HAProxyRecord{}, err
	}
	return HAProxyRecord{Socket: h.Socket, Server: h.name(), Admin: admin}, nil
}

// restore makes r (from record) what TakeOut, PutBack and SetOut go by. A
// record of another server is refused.
func (h *HAProxy) restore(r HAProxyRecord) error {
	switch {
	case !r.of(h):
		return fmt.Errorf("the recorded HAProxy server state is of %q at %q, not %s at %s", r.Server, r.Socket, h.name(), h.Socket)
	case r.Admin != AdminReady && r.Admin != AdminMaint && r.Admin != AdminDrain:
		return fmt.Errorf("the recorded HAProxy server state: admin %q", r.Admin)
	}
	h.setFound(r.Admin)
	return nil
}

func (h *HAProxy) setFound(admin string) {
	h.mu.Lock()
	h.found = admin
	h.mu.Unlock()
}

// leftAlone says, for a server found in maint or drain (not by us), what
// TakeOut, PutBack and SetOut leave as it was.
func (h *HAProxy) leftAlone() (Wait, bool) {
	h.mu.Lock()
	found := h.found
	h.mu.Unlock()
	if found != AdminMaint && found != AdminDrain {
		return Wait{}, false
	}
	return Wait{NotIn: true, By: fmt.Sprintf("HAProxy %s was set to %s before pre: left so", h.name(), found)}, true
}

// TakeOut sets the server to drain and waits, up to deadline, until
// HAProxy reports it out (Out): it sends it no new session. It does not
// wait for the sessions left: the agent's drain does (see HAProxy).
func (h *HAProxy) TakeOut(ctx context.Context, deadline time.Duration) (Wait, error) {
	if w, ok := h.leftAlone(); ok {
		return w, nil
	}
	return h.change(ctx, deadline, "drain", func(s ServerStat) bool { return Out(s.Status) })
}

// PutBack sets the server ready and waits, up to deadline, until HAProxy
// reports it in rotation (InRotation): UP, or "no check". A server set to
// maint since TakeOut's drain (an operator stepping in during the cycle)
// is left so.
func (h *HAProxy) PutBack(ctx context.Context, deadline time.Duration) (Wait, error) {
	if w, ok := h.leftAlone(); ok {
		return w, nil
	}
	if a, err := h.admin(ctx); err == nil && a == AdminMaint {
		return Wait{NotIn: true, By: fmt.Sprintf("HAProxy %s was set to maint during the cycle: left so", h.name())}, nil
	}
	return h.change(ctx, deadline, "ready", func(s ServerStat) bool { return InRotation(s.Status) })
}

// SetOut sets the state without waiting (best effort: the break-glass, the
// boot).
func (h *HAProxy) SetOut(out bool) {
	if _, ok := h.leftAlone(); ok {
		return
	}
	state := "ready"
	if out {
		state = "drain"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = h.setState(ctx, state)
}

func (h *HAProxy) change(ctx context.Context, deadline time.Duration, state string, done func(ServerStat) bool) (Wait, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	if err := h.setState(ctx, state); err != nil {
		return Wait{}, err
	}
	poll := h.Poll
	if poll <= 0 {
		poll = 100 * time.Millisecond
	}
	var last ServerStat
	var statErr error
	err := Poll(ctx, poll, func() (bool, error) {
		s, err := h.Stat(ctx)
		statErr = err
		if err != nil {
			return false, nil // HAProxy busy or restarting: ask again
		}
		last = s
		return done(s), nil
	})
	if err != nil {
		return Wait{Took: time.Since(start)}, fmt.Errorf("%w: HAProxy %s still %q with %d session(s) %s after `state %s` (%v)", ErrNotConfirmed, h.name(), last.Status, last.Sessions, deadline, state, statErr)
	}
	return Wait{By: fmt.Sprintf("HAProxy %s %s, %d session(s)", h.name(), last.Status, last.Sessions), Took: time.Since(start)}, nil
}
