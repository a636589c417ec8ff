package hooks

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

// The pm2 CLI is a client of its daemon's RPC socket ($PM2_HOME/rpc.sock):
// an axon req/rep socket whose messages are AMP frames. PM2 talks to that
// socket directly, as the CLI does, so that each call costs a round trip on
// a unix socket instead of starting node and pm2's CLI (about half a second
// of CPU per call [measured: pm2 stop 0.45 s, jlist 0.13 s]).
//
// An AMP frame is one byte (version << 4 | argument count) followed by each
// argument as a 4-byte big-endian length and its bytes. axon prefixes an
// argument with "s:" for a string and "j:" for JSON. A request is
//
//	j:{"type":"call","method":M,"args":[...]}  s:<request id>
//
// and the reply to it
//
//	j:{"args":[...]} or j:{"error":...}        s:<request id>
//
// (pm2-axon's lib/sockets/req.js and rep.js, pm2-axon-rpc's client.js and
// server.js, amp and amp-message, as shipped in pm2's node_modules.)

const (
	ampVersion = 1
	// maxRPCArg bounds one reply argument: a process list is about 6 KB per
	// app (pm2_env holds the app's environment).
	maxRPCArg = 64 << 20
)

// ErrPM2RPC is wrapped by errors in pm2's RPC exchange itself (a broken
// frame, a reply that is not one), as opposed to an error pm2 reported.
var ErrPM2RPC = errors.New("pm2 rpc")

// rpcSeq numbers requests across clients of this process.
var rpcSeq atomic.Uint64

// pm2Call is one RPC to the pm2 daemon listening on sock: it calls method
// with args and decodes the reply's arguments into out (nil entries are
// skipped). An error pm2 replied with is returned as *PM2Error.
func pm2Call(ctx context.Context, sock pm2Sock, method string, args []any, out ...any) error {
	if args == nil {
		args = []any{}
	}
	req, err := json.Marshal(struct {
		Type   string `json:"type"`
		Method string `json:"method"`
		Args   []any  `json:"args"`
	}{"call", method, args})
	if err != nil {
		return fmt.Errorf("pm2 %s: encoding the request: %w", method, err)
	}
	id := "patchagent-" + strconv.Itoa(os.Getpid()) + ":" + strconv.FormatUint(rpcSeq.Add(1), 10)
	frame := encodeAMP(append([]byte("j:"), req...), []byte("s:"+id))

	conn, err := sock.dial(ctx)
	if err != nil {
		return fmt.Errorf("pm2 %s: %w", method, err)
	}
	defer conn.Close()
	// The context's end unblocks any read or write (and ctx.Err is set by
	// then, so the error names it).
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := conn.Write(frame); err != nil {
		return fmt.Errorf("pm2 %s: %w", method, ctxErr(ctx, err))
	}
	r := bufio.NewReader(conn)
	for {
		msg, err := readAMP(r)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("the daemon closed the connection without replying")
			}
			return fmt.Errorf("pm2 %s: %w", method, ctxErr(ctx, err))
		}
		if len(msg) < 2 || string(msg[len(msg)-1]) != "s:"+id {
			continue // not the reply to this request
		}
		return decodeReply(method, msg[0], out)
	}
}

// ctxErr prefers the context's error to the deadline-induced I/O error it
// caused.
func ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded // the timer has not told ctx yet
	}
	return err
}

// PM2Error is an error the pm2 daemon replied with.
type PM2Error struct {
	Method  string
	Message string
}

func (e *PM2Error) Error() string { return fmt.Sprintf("pm2 %s: %s", e.Method, e.Message) }

func decodeReply(method string, body []byte, out []any) error {
	if !bytes.HasPrefix(body, []byte("j:")) {
		return fmt.Errorf("pm2 %s: %w: reply is not JSON", method, ErrPM2RPC)
	}
	var rep struct {
		Args  []json.RawMessage `json:"args"`
		Error json.RawMessage   `json:"error"`
	}
	if err := json.Unmarshal(body[2:], &rep); err != nil {
		return fmt.Errorf("pm2 %s: %w: decoding the reply: %w", method, ErrPM2RPC, err)
	}
	if len(rep.Error) > 0 && string(rep.Error) != "null" {
		var msg string
		if json.Unmarshal(rep.Error, &msg) != nil {
			var obj struct {
				Message string `json:"message"`
				Msg     string `json:"msg"`
			}
			_ = json.Unmarshal(rep.Error, &obj)
			msg = cmp.Or(obj.Message, obj.Msg, "(an error without a message)")
		}
		// The user's daemon wrote it: redacted like any program's output
		// before it goes into an error (and before the cut).
		msg = redact(msg)
		if len(msg) > 300 {
			msg = msg[:300] + "..."
		}
		return &PM2Error{Method: method, Message: msg}
	}
	for i, o := range out {
		if o == nil {
			continue
		}
		if i >= len(rep.Args) {
			return fmt.Errorf("pm2 %s: %w: reply has %d argument(s), want %d", method, ErrPM2RPC, len(rep.Args), len(out))
		}
		if err := json.Unmarshal(rep.Args[i], o); err != nil {
			return fmt.Errorf("pm2 %s: %w: decoding reply argument %d: %w", method, ErrPM2RPC, i, err)
		}
	}
	return nil
}

// encodeAMP frames args as one AMP message.
func encodeAMP(args ...[]byte) []byte {
	n := 1
	for _, a := range args {
		n += 4 + len(a)
	}
	b := make([]byte, 1, n)
	b[0] = ampVersion<<4 | byte(len(args))
	for _, a := range args {
		b = binary.BigEndian.AppendUint32(b, uint32(len(a)))
		b = append(b, a...)
	}
	return b
}

// readAMP reads one AMP message from r. io.EOF means the peer closed the
// connection between messages.
func readAMP(r io.Reader) ([][]byte, error) {
	var meta [1]byte
	if _, err := io.ReadFull(r, meta[:]); err != nil {
		return nil, err
	}
	if v := meta[0] >> 4; v != ampVersion {
		return nil, fmt.Errorf("%w: frame of protocol version %d, want %d", ErrPM2RPC, v, ampVersion)
	}
	argc := int(meta[0] & 0xf)
	args := make([][]byte, argc)
	for i := range args {
		var l [4]byte
		if _, err := io.ReadFull(r, l[:]); err != nil {
			return nil, truncated(err)
		}
		n := binary.BigEndian.Uint32(l[:])
		if n > maxRPCArg {
			return nil, fmt.Errorf("%w: frame argument of %d bytes (limit %d)", ErrPM2RPC, n, maxRPCArg)
		}
		// Grown as the bytes arrive: a bogus length allocates nothing.
		var b bytes.Buffer
		if _, err := io.CopyN(&b, r, int64(n)); err != nil {
			return nil, truncated(err)
		}
		args[i] = b.Bytes()
	}
	return args, nil
}

func truncated(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: frame cut short", ErrPM2RPC)
	}
	return err
}
