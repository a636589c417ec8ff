package firewall

import (
	"context"
	"net/netip"
	"time"
)

// Conn is one established TCP connection to a local port, as the kernel sees
// it. Addresses are unmapped: an IPv4 client of a dual-stack listener lives
// in the kernel as an AF_INET6 socket with ::ffff:a.b.c.d addresses, and is
// reported here with plain IPv4 addresses.
type Conn struct {
	Local, Remote netip.AddrPort

	// RecvQ is the number of bytes received and not yet read by the
	// application; SendQ the bytes written and not yet acknowledged by the
	// peer (inet_diag_msg idiag_rqueue / idiag_wqueue).
	RecvQ, SendQ uint32

	// Unacked is tcp_info tcpi_unacked (segments in flight); NotSent is
	// tcpi_notsent_bytes (bytes written but not yet sent).
	Unacked, NotSent uint32

	// LastDataSent and LastDataRecv are the time since the last data
	// segment was sent and received (tcp_info, millisecond resolution at
	// jiffies granularity).
	LastDataSent, LastDataRecv time.Duration

	// BytesReceived and BytesAcked are tcp_info tcpi_bytes_received and
	// tcpi_bytes_acked; their deltas between two polls are a second
	// activity signal.
	BytesReceived, BytesAcked uint64

	// HasInfo reports whether the tcp_info fields (Unacked, NotSent,
	// LastData*, Bytes*) were filled. SockDiag fills them; ProcNet cannot,
	// so its connections only carry queue sizes and never count as idle
	// for any positive idle period.
	HasInfo bool
}

// Loopback reports whether the peer is a loopback address (127.0.0.0/8, ::1,
// or ::ffff:127.0.0.0/104). Those are the node's own probes; drain ignores
// them.
func (c Conn) Loopback() bool {
	return c.Remote.Addr().Unmap().IsLoopback()
}

// Busy reports whether the connection is carrying a request or a response:
// unread or unacknowledged bytes in either direction, or a request received
// after the last byte sent (LastDataRecv < LastDataSent), which means a
// response is pending. This rule fits request/response protocols such as
// HTTP/1.1; HTTP/2, WebSocket and long-poll connections never look busy
// between frames.
//
// A request that arrives within the same clock tick (jiffy) as the
// handshake leaves LastDataRecv equal to LastDataSent, since the kernel
// stamps both at the handshake [measured: lastsnd == lastrcv on a connection
// with an unanswered first request]: data received on a connection that has
// never had a byte of ours acknowledged is therefore busy too.
func (c Conn) Busy() bool {
	return c.RecvQ > 0 || c.SendQ > 0 || c.Unacked > 0 || c.NotSent > 0 ||
		c.LastDataRecv < c.LastDataSent ||
		(c.HasInfo && c.BytesAcked == 0 && c.BytesReceived > 0)
}

// IdleFor returns how long a connection that is not busy has carried no
// data in either direction: min(LastDataSent, LastDataRecv). It returns 0
// for a busy connection.
func (c Conn) IdleFor() time.Duration {
	if c.Busy() {
		return 0
	}
	return min(c.LastDataSent, c.LastDataRecv)
}

// Listener is a listening TCP socket on a local port.
type Listener struct {
	Local netip.AddrPort
	Inode uint32
	UID   uint32
}

// ConnSource reads the kernel's view of TCP sockets on local ports. Both
// methods cover IPv4 and IPv6. An empty ports list means every port.
// SockDiag is the real one; ProcNet the fallback and reference.
type ConnSource interface {
	// Established returns the ESTABLISHED sockets whose local port is one
	// of ports.
	Established(ctx context.Context, ports []uint16) ([]Conn, error)
	// Listening returns the LISTEN sockets whose local port is one of
	// ports.
	Listening(ctx context.Context, ports []uint16) ([]Listener, error)
}

var (
	_ ConnSource = (*SockDiag)(nil)
	_ ConnSource = (*ProcNet)(nil)
)

// Summary classifies connections for drain. Loopback peers are counted in
// Loopback only; every other field covers non-loopback connections.
type Summary struct {
	// Total is the number of non-loopback connections.
	Total int
	// Busy counts those for which Conn.Busy is true.
	Busy int
	// Idle counts those not busy and idle for at least the idle period.
	Idle int
	// NextIdle is how long until the first of the non-busy connections
	// that are not idle enough yet becomes so, if none of them carries
	// data meanwhile; 0 if there is none (a connection without tcp_info
	// never becomes idle).
	NextIdle time.Duration
	// Loopback is the number of connections from loopback peers.
	Loopback int
}

// summarize classifies conns; rule gives, for conns[i], whether it carries a
// request Conn.Busy cannot see and how long it must be idle to count.
func summarize(conns []Conn, rule func(i int) (pending bool, idle time.Duration)) Summary {
	var s Summary
	for i := range conns {
		c := &conns[i]
		if c.Loopback() {
			s.Loopback++
			continue
		}
		s.Total++
		pending, idle := rule(i)
		if c.Busy() || pending {
			s.Busy++
			continue
		}
		d := c.IdleFor()
		if d >= idle {
			s.Idle++
		} else if w := idle - d; c.HasInfo && (s.NextIdle == 0 || w < s.NextIdle) {
			s.NextIdle = w
		}
	}
	return s
}

// Drained reports whether no non-loopback connection is busy and every one
// has been idle long enough (true when none is left).
func (s Summary) Drained() bool {
	return s.Busy == 0 && s.Idle == s.Total
}

// Tracker classifies connections across successive polls. Besides
// Conn.Busy, it counts as busy a connection that received bytes since an
// earlier poll while none of ours were acknowledged since: a request that is
// still unanswered, even when it arrived in the same clock tick as our last
// response so that the kernel's timestamps tie. It stays busy until bytes of
// ours are acknowledged again. A Tracker is for one goroutine.
type Tracker struct {
	seen map[connKey]connMark
}

type connKey struct{ local, remote netip.AddrPort }

type connMark struct {
	recv, acked uint64
	pending     bool
	// answered: bytes of ours were acknowledged since the Tracker first saw
	// the connection, so it carried a request and its answer meanwhile.
	answered bool
}

// NewTracker returns a Tracker that has seen nothing yet.
func NewTracker() *Tracker { return &Tracker{seen: map[connKey]connMark{}} }

// Summarize classifies conns: a non-loopback connection is busy (Conn.Busy,
// or a request the Tracker saw arrive since the previous polls and not yet
// answered), or idle long enough, or neither yet. A connection
// that answered a request while tracked counts as idle after answeredIdle
// (a keep-alive connection between requests, which servers close at once in
// a graceful shutdown), any other after idle (a client that connected and
// has not sent its request yet, or one the Tracker knows nothing about).
func (t *Tracker) Summarize(conns []Conn, idle, answeredIdle time.Duration) Summary {
	next := make(map[connKey]connMark, len(conns))
	marks := make([]connMark, len(conns))
	for i := range conns {
		c := &conns[i]
		if !c.HasInfo {
			continue
		}
		k := connKey{c.Local, c.Remote}
		m := connMark{recv: c.BytesReceived, acked: c.BytesAcked}
		if prev, ok := t.seen[k]; ok {
			m.answered = prev.answered || c.BytesAcked > prev.acked
			if c.BytesAcked == prev.acked {
				m.pending = prev.pending || c.BytesReceived > prev.recv
			}
		}
		next[k], marks[i] = m, m
	}
	t.seen = next
	return summarize(conns, func(i int) (bool, time.Duration) {
		if marks[i].answered {
			return marks[i].pending, answeredIdle
		}
		return marks[i].pending, idle
	})
}

// connPortSet is a small set of local ports; an empty set matches all.
type connPortSet []uint16

func (p connPortSet) has(port uint16) bool {
	if len(p) == 0 {
		return true
	}
	for _, q := range p {
		if q == port {
			return true
		}
	}
	return false
}
