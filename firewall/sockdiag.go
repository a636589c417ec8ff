package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrSockDiagUnavailable means the kernel's NETLINK_SOCK_DIAG interface
// cannot be used here (EPERM under seccomp, no inet_diag/tcp_diag support).
// Callers fall back to ProcNet.
var ErrSockDiagUnavailable = errors.New("netlink sock_diag unavailable")

// errDiagInterrupted reports a dump marked NLM_F_DUMP_INTR: the socket
// tables changed while the kernel walked them, so the result may be
// inconsistent and the dump is retried.
var errDiagInterrupted = errors.New("sock_diag dump interrupted")

// Kernel constants (include/uapi/linux/inet_diag.h, net/tcp_states.h).
const (
	diagTCPEstablished = 1
	diagTCPListen      = 10

	diagAttrInfo       = 2 // INET_DIAG_INFO: struct tcp_info
	diagReqBytecode    = 1 // INET_DIAG_REQ_BYTECODE
	diagBCJump         = 1
	diagBCSourceEq     = 11
	diagBCMaxPorts     = 256 // ports per bytecode request
	diagMsgLen         = 72  // sizeof(struct inet_diag_msg)
	diagReqLen         = 56  // sizeof(struct inet_diag_req_v2)
	diagReqV1Len       = 60  // sizeof(struct inet_diag_req)
	diagTCPDiagGetSock = 18  // TCPDIAG_GETSOCK
	diagNlmsgHdrLen    = unix.NLMSG_HDRLEN
	diagDefaultBuf     = 64 << 10 // netlink dump skbs are at most 32 KiB
	diagDefaultRetry   = 3

	// struct tcp_info offsets (include/uapi/linux/tcp.h).
	diagInfoUnacked       = 24
	diagInfoLastDataSent  = 44
	diagInfoLastDataRecv  = 52
	diagInfoBytesAcked    = 120
	diagInfoBytesReceived = 128
	diagInfoNotSent       = 144
)

// SockDiag reads sockets through netlink NETLINK_SOCK_DIAG (the interface
// ss uses). Requests are filtered in the kernel by state and local port, so
// a poll costs time proportional to the matching sockets (plus a fixed walk
// of the established hash), not to every socket on the node.
//
// Both families are read in one walk of the kernel's socket hash with the
// original TCPDIAG_GETSOCK request (struct inet_diag_req, family AF_UNSPEC),
// which the kernel still serves; a kernel that refuses it gets one
// SOCK_DIAG_BY_FAMILY (inet_diag_req_v2) request per family instead, and the
// SockDiag remembers that. Measured on a 2-core VM with 20,000 matching
// sockets out of 40,000: 24 ms per Established call instead of 34 ms, and
// 3 ms instead of 6 ms when nothing matches.
//
// Each call opens its own netlink socket, so it sees the network namespace
// of the calling thread. A SockDiag is safe for concurrent use; do not copy
// one after first use.
type SockDiag struct {
	// Timeout bounds each call when ctx has no earlier deadline
	// (NewSockDiag: 10s; 0 means 10s).
	Timeout time.Duration
	// Retries is how many times a dump the kernel marks interrupted
	// (NLM_F_DUMP_INTR) is retried before giving up (NewSockDiag: 3).
	Retries int

	noCompat atomic.Bool  // the kernel refused TCPDIAG_GETSOCK: use v2 requests
	forceV2  bool         // tests: never try TCPDIAG_GETSOCK
	connHint atomic.Int64 // size of the last Established result, to size the next
}

// NewSockDiag returns a SockDiag with default settings.
func NewSockDiag() *SockDiag {
	return &SockDiag{Timeout: 10 * time.Second, Retries: diagDefaultRetry}
}

// Established returns the ESTABLISHED TCP sockets, IPv4 and IPv6, whose
// local port is in ports (every port if ports is empty), with tcp_info.
func (s *SockDiag) Established(ctx context.Context, ports []uint16) ([]Conn, error) {
	conns := make([]Conn, 0, s.connHint.Load()*9/8)
	err := s.dump(ctx, diagQuery{states: 1 << diagTCPEstablished, ext: 1 << (diagAttrInfo - 1), ports: ports},
		func() { conns = conns[:0] },
		func(m *diagMsg) { conns = append(conns, m.conn()) })
	if err != nil {
		return nil, fmt.Errorf("listing established connections: %w", err)
	}
	s.connHint.Store(int64(len(conns)))
	return conns, nil
}

// Listening returns the LISTEN TCP sockets, IPv4 and IPv6, whose local port
// is in ports (every port if ports is empty). A dual-stack listener ([::])
// appears once, as IPv6.
func (s *SockDiag) Listening(ctx context.Context, ports []uint16) ([]Listener, error) {
	var ls []Listener
	err := s.dump(ctx, diagQuery{states: 1 << diagTCPListen, ports: ports},
		func() { ls = ls[:0] },
		func(m *diagMsg) { ls = append(ls, m.listener()) })
	if err != nil {
		return nil, fmt.Errorf("listing listening sockets: %w", err)
	}
	return ls, nil
}

// diagFillInfo copies the tcp_info fields of info into c. Older kernels
// send a shorter struct; fields beyond its end stay zero.
func diagFillInfo(c *Conn, info []byte) {
	if info == nil {
		return
	}
	c.HasInfo = true
	u32 := func(off int) uint32 {
		if len(info) < off+4 {
			return 0
		}
		return binary.NativeEndian.Uint32(info[off:])
	}
	u64 := func(off int) uint64 {
		if len(info) < off+8 {
			return 0
		}
		return binary.NativeEndian.Uint64(info[off:])
	}
	c.Unacked = u32(diagInfoUnacked)
	c.LastDataSent = time.Duration(u32(diagInfoLastDataSent)) * time.Millisecond
	c.LastDataRecv = time.Duration(u32(diagInfoLastDataRecv)) * time.Millisecond
	c.BytesAcked = u64(diagInfoBytesAcked)
	c.BytesReceived = u64(diagInfoBytesReceived)
	c.NotSent = u32(diagInfoNotSent)
}

// diagQuery is one logical dump: a state mask, the extensions wanted, and
// the local ports.
type diagQuery struct {
	states uint32
	ext    uint8
	ports  []uint16
}

// dump runs q for both families and calls fn for each socket. If the kernel
// reports an interrupted dump, it calls reset and starts over, at most
// s.Retries times.
func (s *SockDiag) dump(ctx context.Context, q diagQuery, reset func(), fn func(*diagMsg)) error {
	timeout, retries := s.Timeout, s.Retries
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if retries < 0 {
		retries = 0
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	compat := !s.forceV2 && !s.noCompat.Load()
	reqs := diagRequests(q, compat)
	for attempt := 0; ; attempt++ {
		reset()
		err := diagDumpOnce(ctx, reqs, fn)
		if compat && diagCompatRefused(err) {
			s.noCompat.Store(true)
			compat, reqs, attempt = false, diagRequests(q, false), -1
			continue
		}
		if errors.Is(err, errDiagInterrupted) && attempt < retries {
			continue
		}
		return err
	}
}

// diagCompatRefused reports an error with which a kernel would refuse a
// TCPDIAG_GETSOCK request it does not (or no longer) support.
func diagCompatRefused(err error) bool {
	return errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT)
}

// diagRequests builds the netlink requests for q: one per group of up to
// diagBCMaxPorts ports (a single port is filtered by id.idiag_sport, several
// by INET_DIAG_BC_S_EQ bytecode), as a TCPDIAG_GETSOCK request covering both
// families if compat, else one SOCK_DIAG_BY_FAMILY request per family.
func diagRequests(q diagQuery, compat bool) [][]byte {
	ports := slices.Clone(q.ports)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	var groups [][]uint16
	for len(ports) > diagBCMaxPorts {
		groups = append(groups, ports[:diagBCMaxPorts])
		ports = ports[diagBCMaxPorts:]
	}
	if len(ports) > 0 || len(groups) == 0 {
		groups = append(groups, ports) // empty: all ports
	}
	var reqs [][]byte
	if compat {
		for _, g := range groups {
			reqs = append(reqs, diagBuildCompatRequest(q.states, q.ext, g))
		}
		return reqs
	}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		for _, g := range groups {
			reqs = append(reqs, diagBuildRequest(family, q.states, q.ext, g))
		}
	}
	return reqs
}

// diagBuildRequest returns a SOCK_DIAG_BY_FAMILY dump request (nlmsghdr +
// inet_diag_req_v2 + optional bytecode). The sequence number is set later.
func diagBuildRequest(family uint8, states uint32, ext uint8, ports []uint16) []byte {
	bc := diagBytecode(ports)
	n := diagNlmsgHdrLen + diagReqLen + len(bc)
	b := make([]byte, n)
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	r := b[diagNlmsgHdrLen:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	r[2] = ext
	binary.NativeEndian.PutUint32(r[4:], states)
	if len(ports) == 1 {
		binary.BigEndian.PutUint16(r[8:], ports[0]) // id.idiag_sport
	}
	copy(r[diagReqLen:], bc)
	return b
}

// diagBuildCompatRequest returns a TCPDIAG_GETSOCK dump request (nlmsghdr
// + struct inet_diag_req + optional bytecode). The kernel serves it with
// family AF_UNSPEC: IPv4 and IPv6 sockets in one walk.
func diagBuildCompatRequest(states uint32, ext uint8, ports []uint16) []byte {
	bc := diagBytecode(ports)
	n := diagNlmsgHdrLen + diagReqV1Len + len(bc)
	b := make([]byte, n)
	binary.NativeEndian.PutUint32(b[0:], uint32(n))
	binary.NativeEndian.PutUint16(b[4:], diagTCPDiagGetSock)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	r := b[diagNlmsgHdrLen:]
	r[0] = unix.AF_INET // idiag_family: ignored by the dump, set as ss does
	r[3] = ext
	if len(ports) == 1 {
		binary.BigEndian.PutUint16(r[4:], ports[0]) // id.idiag_sport
	}
	binary.NativeEndian.PutUint32(r[52:], states)
	copy(r[diagReqV1Len:], bc)
	return b
}

// diagBytecode returns an INET_DIAG_REQ_BYTECODE attribute accepting the
// sockets whose local port is one of ports, or nil for fewer than two ports
// (id.idiag_sport does the job).
func diagBytecode(ports []uint16) []byte {
	var bc []byte
	if len(ports) > 1 {
		// The kernel's audit (inet_diag_bc_audit) requires every jump
		// target to lie on the chain of "yes" offsets, so an OR of ports is
		// written as ss writes it: for each port but the last,
		//	{S_EQ, yes 8, no 12} {0, 0, port} {JMP, yes 4, no: to the end}
		// (a match falls into the JMP, which always takes "no": accept; a
		// miss skips it to the next port), and for the last port
		//	{S_EQ, yes 8, no 12} {0, 0, port}
		// where yes reaches the end (accept) and no jumps 4 bytes past it
		// (reject).
		total := 12*(len(ports)-1) + 8
		bc = make([]byte, 4, 4+total)
		for i, p := range ports {
			bc = append(bc, diagBCSourceEq, 8)
			bc = binary.NativeEndian.AppendUint16(bc, 12)
			bc = append(bc, 0, 0)
			bc = binary.NativeEndian.AppendUint16(bc, p)
			if i < len(ports)-1 {
				bc = append(bc, diagBCJump, 4)
				bc = binary.NativeEndian.AppendUint16(bc, uint16(total-12*i-8))
			}
		}
		binary.NativeEndian.PutUint16(bc[0:], uint16(len(bc)))
		binary.NativeEndian.PutUint16(bc[2:], diagReqBytecode)
	}
	return bc
}

// diagDumpOnce sends each request in turn on a fresh netlink socket and
// streams the replies through fn.
func diagDumpOnce(ctx context.Context, reqs [][]byte, fn func(*diagMsg)) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return fmt.Errorf("opening NETLINK_SOCK_DIAG socket: %w", diagClassify(err))
	}
	defer unix.Close(fd)
	deadline, _ := ctx.Deadline()
	tv := unix.NsecToTimeval(max(time.Until(deadline), time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("setting netlink receive timeout: %w", err)
	}
	buf := make([]byte, diagDefaultBuf)
	sa := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for i, req := range reqs {
		seq := uint32(i + 1)
		binary.NativeEndian.PutUint32(req[8:], seq)
		if err := unix.Sendto(fd, req, 0, sa); err != nil {
			return fmt.Errorf("sending sock_diag request: %w", diagClassify(err))
		}
		interrupted := false
		for done := false; !done; {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("reading sock_diag dump: %w", err)
			}
			n, _, err := unix.Recvfrom(fd, buf, unix.MSG_TRUNC)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				if errors.Is(err, unix.EAGAIN) {
					err = context.DeadlineExceeded
				}
				return fmt.Errorf("reading sock_diag dump: %w", err)
			}
			if n > len(buf) {
				return fmt.Errorf("reading sock_diag dump: message of %d bytes exceeds %d-byte buffer", n, len(buf))
			}
			var intr bool
			done, intr, err = diagParse(buf[:n], seq, fn)
			if err != nil {
				return fmt.Errorf("reading sock_diag dump: %w", diagClassify(err))
			}
			interrupted = interrupted || intr
		}
		if interrupted {
			return errDiagInterrupted
		}
	}
	return nil
}

// diagClassify wraps errors meaning that sock_diag cannot be used at all
// with ErrSockDiagUnavailable.
func diagClassify(err error) error {
	for _, e := range []error{unix.EPERM, unix.EACCES, unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.ENOENT, unix.EOPNOTSUPP} {
		if errors.Is(err, e) {
			return fmt.Errorf("%w: %w", ErrSockDiagUnavailable, err)
		}
	}
	return err
}

// diagMsg is one parsed inet_diag_msg with its INET_DIAG_INFO payload.
type diagMsg struct {
	family         uint8
	local, remote  netip.AddrPort
	rqueue, wqueue uint32
	uid, inode     uint32
	info           []byte // struct tcp_info, nil if absent; aliases the buffer
}

// diagParse parses one datagram of a sock_diag dump: netlink messages, each
// an inet_diag_msg followed by rtattrs. It calls fn for each socket message
// whose sequence number is seq (the diagMsg is reused between calls), and
// reports whether NLMSG_DONE was seen and whether any message carried
// NLM_F_DUMP_INTR. NLMSG_ERROR yields the kernel's errno. Malformed input
// yields an error, never a panic.
func diagParse(b []byte, seq uint32, fn func(*diagMsg)) (done, interrupted bool, err error) {
	var m diagMsg
	for len(b) > 0 {
		var nl diagNlmsg
		nl, b, err = diagNextNlmsg(b)
		if err != nil {
			return false, interrupted, err
		}
		if nl.seq != seq {
			continue
		}
		if nl.flags&unix.NLM_F_DUMP_INTR != 0 {
			interrupted = true
		}
		if nl.typ != unix.SOCK_DIAG_BY_FAMILY && nl.typ != diagTCPDiagGetSock {
			if done, err := diagControl(nl.typ, nl.payload); done || err != nil {
				return done, interrupted, err
			}
			continue
		}
		if err := diagParseMsg(nl.payload, &m); err != nil {
			return false, interrupted, err
		}
		fn(&m)
	}
	return false, interrupted, nil
}

// diagNlmsg is one netlink message: its header's type, flags and sequence
// number, and its payload (aliasing the buffer).
type diagNlmsg struct {
	typ, flags uint16
	seq        uint32
	payload    []byte
}

// diagNextNlmsg splits the first netlink message off b, returning it and
// what follows it.
func diagNextNlmsg(b []byte) (diagNlmsg, []byte, error) {
	if len(b) < diagNlmsgHdrLen {
		return diagNlmsg{}, nil, fmt.Errorf("truncated netlink header: %d bytes", len(b))
	}
	l := int(binary.NativeEndian.Uint32(b[0:]))
	if l < diagNlmsgHdrLen || l > len(b) {
		return diagNlmsg{}, nil, fmt.Errorf("bad netlink message length %d (have %d bytes)", l, len(b))
	}
	nl := diagNlmsg{
		typ:     binary.NativeEndian.Uint16(b[4:]),
		flags:   binary.NativeEndian.Uint16(b[6:]),
		seq:     binary.NativeEndian.Uint32(b[8:]),
		payload: b[diagNlmsgHdrLen:l],
	}
	return nl, b[min(diagAlign(l), len(b)):], nil
}

// diagControl handles a message of the dump that describes no socket. It
// reports whether the dump ended (NLMSG_DONE, or NLMSG_ERROR with an errno)
// and the error the message means; an ACK, NLMSG_NOOP and NLMSG_OVERRUN
// mean neither.
func diagControl(typ uint16, payload []byte) (done bool, err error) {
	switch typ {
	case unix.NLMSG_DONE:
		// The payload may hold a negative errno for a dump that failed.
		if e, ok := diagErrno(payload); ok && e < 0 {
			return true, fmt.Errorf("dump ended with error: %w", unix.Errno(-e))
		}
		return true, nil
	case unix.NLMSG_ERROR:
		e, ok := diagErrno(payload)
		if !ok {
			return false, fmt.Errorf("truncated NLMSG_ERROR: %d bytes", len(payload))
		}
		if e == 0 {
			return false, nil // an ACK
		}
		if e < 0 {
			e = -e
		}
		return true, fmt.Errorf("kernel returned error: %w", unix.Errno(e))
	case unix.NLMSG_NOOP, unix.NLMSG_OVERRUN:
		return false, nil
	default:
		return false, fmt.Errorf("unexpected netlink message type %d", typ)
	}
}

// diagErrno reads the int32 that starts an NLMSG_DONE or NLMSG_ERROR
// payload (an errno, negative as the kernel sends it); ok is false when the
// payload is too short to hold one.
func diagErrno(payload []byte) (e int32, ok bool) {
	if len(payload) < 4 {
		return 0, false
	}
	return int32(binary.NativeEndian.Uint32(payload)), true
}

// conn is the established connection m describes.
func (m *diagMsg) conn() Conn {
	c := Conn{Local: m.local, Remote: m.remote, RecvQ: m.rqueue, SendQ: m.wqueue}
	diagFillInfo(&c, m.info)
	return c
}

// listener is the listening socket m describes.
func (m *diagMsg) listener() Listener {
	return Listener{Local: m.local, Inode: m.inode, UID: m.uid}
}

// diagParseMsg decodes an inet_diag_msg and its attributes into m.
func diagParseMsg(p []byte, m *diagMsg) error {
	if len(p) < diagMsgLen {
		return fmt.Errorf("truncated inet_diag_msg: %d bytes", len(p))
	}
	m.family = p[0]
	sport := binary.BigEndian.Uint16(p[4:])
	dport := binary.BigEndian.Uint16(p[6:])
	var src, dst netip.Addr
	switch m.family {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(p[8:12]))
		dst = netip.AddrFrom4([4]byte(p[24:28]))
	case unix.AF_INET6:
		src = netip.AddrFrom16([16]byte(p[8:24])).Unmap()
		dst = netip.AddrFrom16([16]byte(p[24:40])).Unmap()
	default:
		return fmt.Errorf("unexpected address family %d in inet_diag_msg", m.family)
	}
	m.local = netip.AddrPortFrom(src, sport)
	m.remote = netip.AddrPortFrom(dst, dport)
	m.rqueue = binary.NativeEndian.Uint32(p[56:])
	m.wqueue = binary.NativeEndian.Uint32(p[60:])
	m.uid = binary.NativeEndian.Uint32(p[64:])
	m.inode = binary.NativeEndian.Uint32(p[68:])
	m.info = nil
	for a := p[diagMsgLen:]; len(a) > 0; {
		if len(a) < 4 {
			return fmt.Errorf("truncated rtattr header: %d bytes", len(a))
		}
		al := int(binary.NativeEndian.Uint16(a[0:]))
		at := binary.NativeEndian.Uint16(a[2:])
		if al < 4 || al > len(a) {
			return fmt.Errorf("bad rtattr length %d (have %d bytes)", al, len(a))
		}
		if at&0x3fff == diagAttrInfo { // mask NLA_F_NESTED/NLA_F_NET_BYTEORDER
			m.info = a[4:al:al]
		}
		a = a[min(diagAlign(al), len(a)):]
	}
	return nil
}

func diagAlign(n int) int { return (n + 3) &^ 3 }
