package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"time"

	"github.com/patchagent/patchagent/agent"
)

// ErrNoDaemon means no daemon answers on the control socket: the CLI then
// runs the phase itself.
var ErrNoDaemon = errors.New("no patchagent daemon answering")

const (
	// callDialTimeout bounds connecting and sending the request.
	callDialTimeout = 5 * time.Second
	// maxMessageLine bounds one line of the daemon's answer (a report).
	maxMessageLine = 8 << 20
)

// Call sends req to the daemon listening at path, copies the progress lines
// to progress as they come, and returns the phase's report. Its wait ends
// with the report, the connection, or ctx; ending it leaves the phase
// running in the daemon (a later Call for the same phase joins it).
//
// Errors: no socket file, or nobody listening (ECONNREFUSED), or a daemon
// shutting down → wraps ErrNoDaemon. EACCES → a "not root" error wrapping
// it. An error message from the daemon → an error with its text.
func Call(ctx context.Context, path string, req Request, progress io.Writer) (*agent.Report, error) {
	if progress == nil {
		progress = io.Discard
	}
	d := net.Dialer{Timeout: callDialTimeout}
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, dialError(path, err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()

	line, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("encoding request: %w", err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(callDialTimeout))
	// A daemon that refuses the caller may answer and close before the
	// request is written: read its answer even when the write failed.
	_, werr := c.Write(append(line, '\n'))

	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 64<<10), maxMessageLine)
	for sc.Scan() {
		var m Message
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			return nil, fmt.Errorf("decoding the daemon's answer: %w", err)
		}
		switch {
		case m.Error == msgShuttingDown:
			return nil, fmt.Errorf("daemon at %s: %w (%s)", path, ErrNoDaemon, m.Error)
		case m.Error != "":
			return nil, fmt.Errorf("daemon refused the %s request: %s", req.Phase, m.Error)
		case m.Report != nil:
			return m.Report, nil
		case m.Joined:
			fmt.Fprintf(progress, "joined the %s already running in the patchagent daemon\n", req.Phase)
		case m.Progress != "":
			fmt.Fprintln(progress, m.Progress)
		}
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("waiting for the %s report from the daemon: %w", req.Phase, ctx.Err())
	}
	if werr != nil {
		return nil, fmt.Errorf("sending the request to %s: %w", path, werr)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading the daemon's answer: %w", err)
	}
	return nil, fmt.Errorf("the daemon closed the connection before the %s report", req.Phase)
}

func dialError(path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("connecting to %s: %w: %w", path, ErrNoDaemon, err)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("connecting to %s: the control socket is root-only, run patchagent as root: %w", path, err)
	}
	return fmt.Errorf("connecting to %s: %w", path, err)
}
