package firewall

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestConnBusyIdleLoopback(t *testing.T) {
	peer := netip.MustParseAddrPort("192.0.2.10:50000")
	tests := []struct {
		name     string
		c        Conn
		busy     bool
		idleFor  time.Duration
		loopback bool
	}{
		{"idle keep-alive", Conn{Remote: peer, LastDataSent: 900 * time.Millisecond, LastDataRecv: 1000 * time.Millisecond}, false, 900 * time.Millisecond, false},
		{"same tick", Conn{Remote: peer, LastDataSent: 500 * time.Millisecond, LastDataRecv: 500 * time.Millisecond}, false, 500 * time.Millisecond, false},
		{"request pending", Conn{Remote: peer, LastDataSent: 900 * time.Millisecond, LastDataRecv: 100 * time.Millisecond}, true, 0, false},
		{"unread request", Conn{Remote: peer, RecvQ: 1, LastDataSent: 5000 * time.Millisecond, LastDataRecv: 5000 * time.Millisecond}, true, 0, false},
		{"unacked response", Conn{Remote: peer, SendQ: 10, LastDataSent: 10 * time.Millisecond, LastDataRecv: 20 * time.Millisecond}, true, 0, false},
		{"segments in flight", Conn{Remote: peer, Unacked: 1, LastDataSent: 10 * time.Millisecond, LastDataRecv: 20 * time.Millisecond}, true, 0, false},
		{"not sent", Conn{Remote: peer, NotSent: 4096, LastDataSent: 10 * time.Millisecond, LastDataRecv: 20 * time.Millisecond}, true, 0, false},
		{"fresh zero", Conn{Remote: peer}, false, 0, false},
		{"loopback v4", Conn{Remote: netip.MustParseAddrPort("127.0.0.1:1")}, false, 0, true},
		{"loopback 127/8", Conn{Remote: netip.MustParseAddrPort("127.1.2.3:1")}, false, 0, true},
		{"loopback v6", Conn{Remote: netip.MustParseAddrPort("[::1]:1")}, false, 0, true},
		{"loopback v4-mapped", Conn{Remote: netip.MustParseAddrPort("[::ffff:127.0.0.1]:1")}, false, 0, true},
		{"loopback v4-mapped 127/8", Conn{Remote: netip.MustParseAddrPort("[::ffff:127.9.9.9]:1")}, false, 0, true},
		{"not loopback v4-mapped", Conn{Remote: netip.MustParseAddrPort("[::ffff:192.0.2.1]:1")}, false, 0, false},
		{"not loopback ULA", Conn{Remote: netip.MustParseAddrPort("[fd70:7061:9::1]:1")}, false, 0, false},
		{"not loopback 128/8", Conn{Remote: netip.MustParseAddrPort("128.0.0.1:1")}, false, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.c.Busy(); got != tt.busy {
				t.Errorf("Busy() = %v, want %v", got, tt.busy)
			}
			if got := tt.c.IdleFor(); got != tt.idleFor {
				t.Errorf("IdleFor() = %v, want %v", got, tt.idleFor)
			}
			if got := tt.c.Loopback(); got != tt.loopback {
				t.Errorf("Loopback() = %v, want %v", got, tt.loopback)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	peer := netip.MustParseAddrPort("192.0.2.10:50000")
	lo4 := netip.MustParseAddrPort("[::ffff:127.0.0.1]:40000")
	lo6 := netip.MustParseAddrPort("[::1]:40000")
	idle := func(d time.Duration) Conn {
		return Conn{Remote: peer, HasInfo: true, LastDataSent: d, LastDataRecv: d + 5*time.Millisecond, BytesAcked: 100, BytesReceived: 50}
	}
	busy := Conn{Remote: peer, LastDataSent: 3000 * time.Millisecond, LastDataRecv: 10 * time.Millisecond}
	tests := []struct {
		name    string
		conns   []Conn
		idle    time.Duration
		want    Summary
		drained bool
	}{
		{"none", nil, time.Second, Summary{}, true},
		{"only loopback, busy ones too", []Conn{{Remote: lo4, RecvQ: 9}, {Remote: lo6}}, time.Second, Summary{Loopback: 2}, true},
		{"all idle long enough", []Conn{idle(2 * time.Second), idle(1 * time.Second)}, time.Second,
			Summary{Total: 2, Idle: 2}, true},
		{"one not idle long enough", []Conn{idle(2 * time.Second), idle(300 * time.Millisecond)}, time.Second,
			Summary{Total: 2, Idle: 1, NextIdle: 700 * time.Millisecond}, false},
		{"one busy", []Conn{idle(2 * time.Second), busy, {Remote: lo4}}, time.Second,
			Summary{Total: 2, Busy: 1, Idle: 1, Loopback: 1}, false},
		{"all busy", []Conn{busy, busy}, time.Second, Summary{Total: 2, Busy: 2}, false},
		{"zero idle period", []Conn{idle(0)}, 0, Summary{Total: 1, Idle: 1}, true},
		{"no tcp_info (procfs) never idle", []Conn{{Remote: peer}}, time.Second, Summary{Total: 1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NewTracker().Summarize(tt.conns, tt.idle, tt.idle)
			if got != tt.want {
				t.Errorf("Summarize() = %+v, want %+v", got, tt.want)
			}
			if got.Drained() != tt.drained {
				t.Errorf("Drained() = %v, want %v", got.Drained(), tt.drained)
			}
		})
	}
}

func TestSummaryDrained(t *testing.T) {
	tests := []struct {
		s    Summary
		want bool
	}{
		{Summary{}, true},
		{Summary{Loopback: 3}, true},
		{Summary{Total: 3, Idle: 3}, true},
		{Summary{Total: 3, Idle: 2}, false},
		{Summary{Total: 3, Idle: 2, Busy: 1}, false},
		{Summary{Total: 1, Busy: 1}, false},
	}
	for _, tt := range tests {
		if got := tt.s.Drained(); got != tt.want {
			t.Errorf("%+v.Drained() = %v, want %v", tt.s, got, tt.want)
		}
	}
}

// --- netlink fixtures, built byte by byte at the documented offsets ---

// diagTestSock describes one socket of a hand-built dump.
type diagTestSock struct {
	family         uint8
	state          uint8
	src, dst       string // addresses as in the kernel: 4 or 16 bytes
	sport, dport   uint16
	rqueue, wqueue uint32
	uid, inode     uint32
	info           []byte // tcp_info payload; nil: no INET_DIAG_INFO
	flags          uint16
	seq            uint32
}

func diagTestNlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := make([]byte, 16, 16+len(payload)+3)
	binary.NativeEndian.PutUint32(b[0:], uint32(16+len(payload)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func diagTestAttr(typ uint16, payload []byte) []byte {
	b := make([]byte, 4, 4+len(payload)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(payload)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, payload...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func diagTestMsg(s diagTestSock) []byte {
	p := make([]byte, 72)
	p[0], p[1] = s.family, s.state
	binary.BigEndian.PutUint16(p[4:], s.sport)
	binary.BigEndian.PutUint16(p[6:], s.dport)
	src, dst := netip.MustParseAddr(s.src), netip.MustParseAddr(s.dst)
	copy(p[8:24], src.AsSlice())
	copy(p[24:40], dst.AsSlice())
	binary.NativeEndian.PutUint32(p[56:], s.rqueue)
	binary.NativeEndian.PutUint32(p[60:], s.wqueue)
	binary.NativeEndian.PutUint32(p[64:], s.uid)
	binary.NativeEndian.PutUint32(p[68:], s.inode)
	// Attributes the kernel always adds (INET_DIAG_SHUTDOWN = 8), around INFO.
	p = append(p, diagTestAttr(8, []byte{0})...)
	if s.info != nil {
		p = append(p, diagTestAttr(2, s.info)...)
	}
	seq := s.seq
	if seq == 0 {
		seq = 1
	}
	return diagTestNlmsg(unix.SOCK_DIAG_BY_FAMILY, unix.NLM_F_MULTI|s.flags, seq, p)
}

// diagTestInfo returns a struct tcp_info (232 bytes) with the fields drain uses.
func diagTestInfo(unacked, lastSent, lastRecv uint32, acked, received uint64, notsent uint32) []byte {
	b := make([]byte, 232)
	b[0] = 1 // tcpi_state
	binary.NativeEndian.PutUint32(b[24:], unacked)
	binary.NativeEndian.PutUint32(b[44:], lastSent)
	binary.NativeEndian.PutUint32(b[48:], 77777) // last_ack_sent: must not be read
	binary.NativeEndian.PutUint32(b[52:], lastRecv)
	binary.NativeEndian.PutUint32(b[56:], 88888) // last_ack_recv: must not be read
	binary.NativeEndian.PutUint64(b[120:], acked)
	binary.NativeEndian.PutUint64(b[128:], received)
	binary.NativeEndian.PutUint32(b[144:], notsent)
	return b
}

func diagTestNeg(e unix.Errno) uint32 {
	v := -int32(e)
	return uint32(v)
}

func diagTestDone(seq uint32) []byte {
	return diagTestNlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, seq, make([]byte, 4))
}

func diagTestError(seq uint32, errno unix.Errno) []byte {
	p := make([]byte, 20)
	binary.NativeEndian.PutUint32(p, diagTestNeg(errno))
	return diagTestNlmsg(unix.NLMSG_ERROR, 0, seq, p)
}

func diagTestCollect(b []byte, seq uint32) ([]Conn, bool, bool, error) {
	var conns []Conn
	done, intr, err := diagParse(b, seq, func(m *diagMsg) { conns = append(conns, m.conn()) })
	return conns, done, intr, err
}

func diagTestConcat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

func TestDiagParse(t *testing.T) {
	v4 := diagTestSock{family: unix.AF_INET, state: 1, src: "192.0.2.1", dst: "192.0.2.10", sport: 443, dport: 50000,
		rqueue: 0, wqueue: 26, info: diagTestInfo(2, 40, 1500, 1000, 2000, 0)}
	v4Conn := Conn{Local: netip.MustParseAddrPort("192.0.2.1:443"), Remote: netip.MustParseAddrPort("192.0.2.10:50000"),
		SendQ: 26, Unacked: 2, LastDataSent: 40 * time.Millisecond, LastDataRecv: 1500 * time.Millisecond, BytesAcked: 1000, BytesReceived: 2000, HasInfo: true}
	mapped := diagTestSock{family: unix.AF_INET6, state: 1, src: "::ffff:192.0.2.1", dst: "::ffff:127.0.0.1", sport: 443, dport: 40000,
		rqueue: 5, info: diagTestInfo(0, 900, 100, 1, 2, 4096)}
	mappedConn := Conn{Local: netip.MustParseAddrPort("192.0.2.1:443"), Remote: netip.MustParseAddrPort("127.0.0.1:40000"),
		RecvQ: 5, LastDataSent: 900 * time.Millisecond, LastDataRecv: 100 * time.Millisecond, BytesAcked: 1, BytesReceived: 2, NotSent: 4096, HasInfo: true}
	v6 := diagTestSock{family: unix.AF_INET6, state: 1, src: "fd70:7061:9::1", dst: "fd70:7061:9::2", sport: 8443, dport: 50001}
	v6Conn := Conn{Local: netip.MustParseAddrPort("[fd70:7061:9::1]:8443"), Remote: netip.MustParseAddrPort("[fd70:7061:9::2]:50001")}
	short := v4
	short.info = diagTestInfo(2, 40, 1500, 1000, 2000, 0)[:104] // an old kernel's shorter tcp_info
	shortConn := v4Conn
	shortConn.BytesAcked, shortConn.BytesReceived = 0, 0
	intr := v6
	intr.flags = unix.NLM_F_DUMP_INTR
	other := v6
	other.seq = 9

	tests := []struct {
		name     string
		in       []byte
		want     []Conn
		done     bool
		intr     bool
		wantErr  error  // errors.Is target
		errMatch string // substring, when wantErr is nil
	}{
		{name: "multipart with done", in: diagTestConcat(diagTestMsg(v4), diagTestMsg(mapped), diagTestMsg(v6), diagTestDone(1)),
			want: []Conn{v4Conn, mappedConn, v6Conn}, done: true},
		{name: "first part, no done yet", in: diagTestConcat(diagTestMsg(v4), diagTestMsg(v6)), want: []Conn{v4Conn, v6Conn}},
		{name: "done only", in: diagTestDone(1), done: true},
		{name: "short tcp_info", in: diagTestMsg(short), want: []Conn{shortConn}},
		{name: "interrupted", in: diagTestConcat(diagTestMsg(intr), diagTestDone(1)), want: []Conn{v6Conn}, done: true, intr: true},
		{name: "other sequence skipped", in: diagTestConcat(diagTestMsg(other), diagTestMsg(v6), diagTestDone(1)), want: []Conn{v6Conn}, done: true},
		{name: "error EPERM", in: diagTestError(1, unix.EPERM), wantErr: unix.EPERM},
		{name: "error after messages", in: diagTestConcat(diagTestMsg(v4), diagTestError(1, unix.ENOBUFS)), want: []Conn{v4Conn}, wantErr: unix.ENOBUFS},
		{name: "done with errno", in: diagTestNlmsg(unix.NLMSG_DONE, 0, 1, binary.NativeEndian.AppendUint32(nil, diagTestNeg(unix.EINTR))), wantErr: unix.EINTR},
		{name: "truncated header", in: diagTestMsg(v4)[:10], errMatch: "truncated netlink header"},
		{name: "truncated message", in: diagTestMsg(v4)[:200], errMatch: "bad netlink message length"},
		{name: "length below header", in: func() []byte {
			b := diagTestMsg(v4)
			binary.NativeEndian.PutUint32(b, 8)
			return b
		}(), errMatch: "bad netlink message length"},
		{name: "short inet_diag_msg", in: diagTestNlmsg(unix.SOCK_DIAG_BY_FAMILY, 0, 1, make([]byte, 40)), errMatch: "truncated inet_diag_msg"},
		{name: "bad rtattr length", in: func() []byte {
			b := diagTestMsg(v4)
			binary.NativeEndian.PutUint16(b[16+72+8:], 0xfff0) // second attr (INFO) claims too much
			return b
		}(), want: nil, errMatch: "bad rtattr length"},
		{name: "unknown family", in: diagTestMsg(diagTestSock{family: 7, state: 1, src: "1.2.3.4", dst: "1.2.3.4"}), errMatch: "unexpected address family"},
		{name: "unknown type", in: diagTestNlmsg(99, 0, 1, nil), errMatch: "unexpected netlink message type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, done, intr, err := diagTestCollect(tt.in, 1)
			switch {
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			case tt.errMatch != "":
				if err == nil || !strings.Contains(err.Error(), tt.errMatch) {
					t.Fatalf("err = %v, want containing %q", err, tt.errMatch)
				}
			default:
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if done != tt.done || intr != tt.intr {
					t.Errorf("done, interrupted = %v, %v; want %v, %v", done, intr, tt.done, tt.intr)
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("conns:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestDiagParseCompatType(t *testing.T) {
	// TCPDIAG_GETSOCK answers carry type 18 and both families.
	m := diagTestMsg(diagTestSock{family: unix.AF_INET, state: 1, src: "192.0.2.1", dst: "192.0.2.2", sport: 443, dport: 1})
	binary.NativeEndian.PutUint16(m[4:], 18)
	got, done, _, err := diagTestCollect(diagTestConcat(m, diagTestDone(1)), 1)
	if err != nil || !done || len(got) != 1 || got[0].Local != netip.MustParseAddrPort("192.0.2.1:443") {
		t.Errorf("got %+v, done %v, err %v", got, done, err)
	}
}

func TestDiagCompatRefused(t *testing.T) {
	for err, want := range map[error]bool{
		diagClassify(unix.EINVAL): true,
		diagClassify(unix.ENOENT): true,
		unix.EOPNOTSUPP:           true,
		unix.EPERM:                false,
		nil:                       false,
		context.DeadlineExceeded:  false,
	} {
		if got := diagCompatRefused(err); got != want {
			t.Errorf("diagCompatRefused(%v) = %v, want %v", err, got, want)
		}
	}
}

func TestDiagParseListener(t *testing.T) {
	in := diagTestConcat(diagTestMsg(diagTestSock{family: unix.AF_INET6, state: 10, src: "::", dst: "::", sport: 443, uid: 1000, inode: 4242}),
		diagTestDone(1))
	var got []Listener
	done, _, err := diagParse(in, 1, func(m *diagMsg) { got = append(got, m.listener()) })
	if err != nil || !done {
		t.Fatalf("diagParse: done=%v err=%v", done, err)
	}
	want := []Listener{{Local: netip.MustParseAddrPort("[::]:443"), Inode: 4242, UID: 1000}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestDiagBuildRequest(t *testing.T) {
	t.Run("single port uses id.sport", func(t *testing.T) {
		b := diagBuildRequest(unix.AF_INET6, 1<<1, 2, []uint16{443})
		if len(b) != 16+56 {
			t.Fatalf("len = %d, want 72", len(b))
		}
		if got := binary.NativeEndian.Uint32(b); got != 72 {
			t.Errorf("nlmsg_len = %d", got)
		}
		if got := binary.NativeEndian.Uint16(b[4:]); got != unix.SOCK_DIAG_BY_FAMILY {
			t.Errorf("nlmsg_type = %d", got)
		}
		if got := binary.NativeEndian.Uint16(b[6:]); got != unix.NLM_F_REQUEST|unix.NLM_F_DUMP {
			t.Errorf("nlmsg_flags = %#x", got)
		}
		r := b[16:]
		if r[0] != unix.AF_INET6 || r[1] != unix.IPPROTO_TCP || r[2] != 2 {
			t.Errorf("family/protocol/ext = %d/%d/%d", r[0], r[1], r[2])
		}
		if got := binary.NativeEndian.Uint32(r[4:]); got != 2 {
			t.Errorf("idiag_states = %#x", got)
		}
		if r[8] != 0x01 || r[9] != 0xBB {
			t.Errorf("id.idiag_sport = % x, want 01 bb", r[8:10])
		}
	})
	t.Run("several ports use S_EQ bytecode", func(t *testing.T) {
		b := diagBuildRequest(unix.AF_INET, 1<<1, 0, []uint16{80, 443, 8443})
		if len(b) != 16+56+4+32 {
			t.Fatalf("len = %d", len(b))
		}
		r := b[16:]
		if r[8] != 0 || r[9] != 0 {
			t.Errorf("id.idiag_sport = % x, want 0", r[8:10])
		}
		a := r[56:]
		if l, typ := binary.NativeEndian.Uint16(a), binary.NativeEndian.Uint16(a[2:]); l != 36 || typ != 1 {
			t.Errorf("attr len/type = %d/%d, want 36/1", l, typ)
		}
		bc := a[4:]
		want := []byte{}
		op := func(code, yes uint8, no uint16) {
			want = append(want, code, yes)
			want = binary.NativeEndian.AppendUint16(want, no)
		}
		op(11, 8, 12)
		op(0, 0, 80)
		op(1, 4, 24) // JMP to the end: accept
		op(11, 8, 12)
		op(0, 0, 443)
		op(1, 4, 12)
		op(11, 8, 12) // last: yes reaches the end, no jumps past it
		op(0, 0, 8443)
		if !reflect.DeepEqual(bc, want) {
			t.Errorf("bytecode\n% x\nwant\n% x", bc, want)
		}
		if err := diagBCAudit(bc); err != nil {
			t.Errorf("kernel audit would reject: %v", err)
		}
		for port, accept := range map[uint16]bool{80: true, 443: true, 8443: true, 22: false, 0: false, 444: false} {
			if got := diagBCRun(bc, port); got != accept {
				t.Errorf("bytecode on sport %d: accept = %v, want %v", port, got, accept)
			}
		}
	})
	t.Run("compat request: struct inet_diag_req", func(t *testing.T) {
		b := diagBuildCompatRequest(1<<10, 0, []uint16{443})
		if len(b) != 16+60 || binary.NativeEndian.Uint32(b) != 76 {
			t.Fatalf("len = %d, nlmsg_len %d; want 76", len(b), binary.NativeEndian.Uint32(b))
		}
		if got := binary.NativeEndian.Uint16(b[4:]); got != 18 { // TCPDIAG_GETSOCK
			t.Errorf("nlmsg_type = %d, want 18", got)
		}
		if got := binary.NativeEndian.Uint16(b[6:]); got != unix.NLM_F_REQUEST|unix.NLM_F_DUMP {
			t.Errorf("nlmsg_flags = %#x", got)
		}
		r := b[16:]
		if r[4] != 0x01 || r[5] != 0xBB {
			t.Errorf("id.idiag_sport at 4 = % x, want 01 bb", r[4:6])
		}
		if got := binary.NativeEndian.Uint32(r[52:]); got != 1<<10 {
			t.Errorf("idiag_states at 52 = %#x", got)
		}
		bc := diagBuildCompatRequest(1<<1, 2, []uint16{443, 8443})
		if len(bc) != 16+60+4+20 || bc[16+3] != 2 {
			t.Errorf("with bytecode: len %d ext %d", len(bc), bc[16+3])
		}
		if !reflect.DeepEqual(bc[16+60:], diagBytecode([]uint16{443, 8443})) {
			t.Error("compat bytecode differs from v2 bytecode")
		}
	})
	t.Run("requests per family and port group", func(t *testing.T) {
		var ports []uint16
		for p := range uint16(2 * diagBCMaxPorts) {
			ports = append(ports, 1000+p, 1000+p) // duplicates are dropped
		}
		tests := []struct {
			name   string
			ports  []uint16
			compat bool
			want   int
		}{
			{"2 full groups, v2: x 2 families", ports, false, 4},
			{"2 full groups, compat: both families at once", ports, true, 2},
			{"one more port, v2", append(ports, 5), false, 6},
			{"one more port, compat", append(ports, 5), true, 3},
			{"all ports, v2", nil, false, 2},
			{"all ports, compat", nil, true, 1},
		}
		for _, tt := range tests {
			reqs := diagRequests(diagQuery{ports: tt.ports}, tt.compat)
			if len(reqs) != tt.want {
				t.Errorf("%s: %d requests, want %d", tt.name, len(reqs), tt.want)
			}
			wantType := uint16(unix.SOCK_DIAG_BY_FAMILY)
			if tt.compat {
				wantType = 18
			}
			for _, r := range reqs {
				if typ := binary.NativeEndian.Uint16(r[4:]); typ != wantType {
					t.Errorf("%s: type %d, want %d", tt.name, typ, wantType)
				}
			}
		}
	})
}

// diagBCRun evaluates S_EQ/JMP bytecode as inet_diag_bc_run does.
func diagBCRun(bc []byte, sport uint16) bool {
	l := len(bc)
	for l > 0 {
		op := bc[len(bc)-l:]
		yes := true
		switch op[0] {
		case 1: // JMP
			yes = false
		case 11: // S_EQ
			yes = binary.NativeEndian.Uint16(op[6:]) == sport
		}
		if yes {
			l -= int(op[1])
		} else {
			l -= int(binary.NativeEndian.Uint16(op[2:]))
		}
	}
	return l == 0
}

// diagBCAudit checks bytecode as inet_diag_bc_audit does (for the ops used).
func diagBCAudit(bc []byte) error {
	validCC := func(l, cc int) bool {
		for off := 0; l >= 0; {
			if cc > l {
				return false
			}
			if cc == l {
				return true
			}
			yes := int(bc[off+1])
			if yes < 4 || yes&3 != 0 {
				return false
			}
			l -= yes
			off += yes
		}
		return false
	}
	l := len(bc)
	for off := 0; l > 0; {
		op := bc[off:]
		minLen := 4
		if op[0] == 11 {
			minLen += 4
			if l < minLen {
				return fmt.Errorf("op at %d: short port comparison", off)
			}
		}
		no := int(binary.NativeEndian.Uint16(op[2:]))
		if no < minLen || no > l+4 || no&3 != 0 {
			return fmt.Errorf("op at %d: bad no %d", off, no)
		}
		if no < l && !validCC(len(bc), l-no) {
			return fmt.Errorf("op at %d: no %d not on the yes chain", off, no)
		}
		yes := int(op[1])
		if yes < minLen || yes > l+4 || yes&3 != 0 {
			return fmt.Errorf("op at %d: bad yes %d", off, yes)
		}
		off += yes
		l -= yes
	}
	if l != 0 {
		return fmt.Errorf("yes chain ends %d bytes off", l)
	}
	return nil
}

func TestDiagClassify(t *testing.T) {
	for _, e := range []error{unix.EPERM, unix.EPROTONOSUPPORT, unix.ENOENT} {
		if err := diagClassify(e); !errors.Is(err, ErrSockDiagUnavailable) || !errors.Is(err, e) {
			t.Errorf("diagClassify(%v) = %v, want wrapping ErrSockDiagUnavailable and the errno", e, err)
		}
	}
	if err := diagClassify(unix.ENOBUFS); errors.Is(err, ErrSockDiagUnavailable) {
		t.Errorf("diagClassify(ENOBUFS) = %v, must not be unavailable", err)
	}
}

func FuzzParseDiag(f *testing.F) {
	s := diagTestSock{family: unix.AF_INET6, state: 1, src: "::ffff:192.0.2.1", dst: "fd70:7061:9::2", sport: 443, dport: 1,
		info: diagTestInfo(1, 2, 3, 4, 5, 6)}
	f.Add(diagTestConcat(diagTestMsg(s), diagTestDone(1)))
	f.Add(diagTestError(1, unix.EPERM))
	f.Add(diagTestMsg(diagTestSock{family: unix.AF_INET, state: 1, src: "1.2.3.4", dst: "5.6.7.8"})[:90])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _, _, _ = diagTestCollect(b, 1)
	})
}

func TestProcNet(t *testing.T) {
	p := &ProcNet{Root: "testdata/proc"}
	ctx := t.Context()
	ap := netip.MustParseAddrPort
	t.Run("established 443", func(t *testing.T) {
		got, err := p.Established(ctx, []uint16{443})
		if err != nil {
			t.Fatal(err)
		}
		want := []Conn{
			{Local: ap("127.0.0.1:443"), Remote: ap("127.0.0.1:54321")},
			{Local: ap("192.0.2.1:443"), Remote: ap("192.0.2.10:50000"), SendQ: 26},
			{Local: ap("192.0.2.1:443"), Remote: ap("192.0.2.10:50003"), RecvQ: 5},
			{Local: ap("127.0.0.1:443"), Remote: ap("127.0.0.1:54322")},
			{Local: ap("[fd70:7061:9::1]:443"), Remote: ap("[fd70:7061:9::2]:50004")},
			{Local: ap("[::1]:443"), Remote: ap("[::1]:54323")},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got\n%+v\nwant\n%+v", got, want)
		}
		s := NewTracker().Summarize(got, time.Second, time.Second)
		if want := (Summary{Total: 3, Busy: 2, Loopback: 3}); s != want {
			t.Errorf("Summarize = %+v, want %+v", s, want)
		}
	})
	t.Run("established several ports", func(t *testing.T) {
		got, err := p.Established(ctx, []uint16{8443, 54321})
		if err != nil {
			t.Fatal(err)
		}
		var locals []string
		for _, c := range got {
			locals = append(locals, c.Local.String())
		}
		if want := []string{"127.0.0.1:54321", "192.0.2.1:8443", "[fd70:7061:9::1]:8443"}; !reflect.DeepEqual(locals, want) {
			t.Errorf("locals = %v, want %v", locals, want)
		}
	})
	t.Run("established all ports", func(t *testing.T) {
		got, err := p.Established(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 9 {
			t.Errorf("got %d conns, want 9 (state 01 only, TIME_WAIT excluded)", len(got))
		}
	})
	t.Run("listening", func(t *testing.T) {
		got, err := p.Listening(ctx, []uint16{443, 9000})
		if err != nil {
			t.Fatal(err)
		}
		want := []Listener{
			{Local: ap("127.0.0.1:443"), Inode: 21002, UID: 1000},
			{Local: ap("[::]:443"), Inode: 22001, UID: 1000},
			{Local: ap("[::1]:9000"), Inode: 22007},
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("got %+v, want %+v", got, want)
		}
	})
	t.Run("no match", func(t *testing.T) {
		got, err := p.Established(ctx, []uint16{1})
		if err != nil || len(got) != 0 {
			t.Errorf("got %v, %v; want none", got, err)
		}
	})
	t.Run("missing root", func(t *testing.T) {
		if _, err := (&ProcNet{Root: t.TempDir()}).Established(ctx, nil); err == nil {
			t.Error("want error for missing net/tcp")
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := p.Established(ctx, nil); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
}

func TestProcNetParse(t *testing.T) {
	line := func(local, remote, st, queues string) string {
		return "   0: " + local + " " + remote + " " + st + " " + queues + " 00:00000000 00000000  1000        0 77 1 0000000000000000 100 0 0 10 0\n"
	}
	tests := []struct {
		name    string
		in      string
		want    []string // local->remote rx/tx
		wantErr string
	}{
		{"header only", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n", nil, ""},
		{"lowercase hex and trailing spaces", line("0100007f:01bb", "0a0200c0:c350", "01", "00000001:00000002") + "   \n",
			[]string{"127.0.0.1:443->192.0.2.10:50000 2/1"}, ""},
		{"bad state", line("0100007F:01BB", "0A0200C0:C350", "ZZ", "0:0"), nil, "bad state"},
		{"bad address", line("0100007:01BB", "0A0200C0:C350", "01", "0:0"), nil, "bad local address"},
		{"bad remote", line("0100007F:01BB", "0A0200C0", "01", "0:0"), nil, "bad remote address"},
		{"bad queues", line("0100007F:01BB", "0A0200C0:C350", "01", "00000000"), nil, "bad queues"},
		{"short line", "   0: 0100007F:01BB 0A0200C0:C350 01\n", nil, "fields"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			err := procnetParse(t.Context(), strings.NewReader(tt.in), procnetEstablished, nil, func(e *procnetEntry) {
				got = append(got, e.local.String()+"->"+e.remote.String()+" "+
					fmt.Sprintf("%d/%d", e.rxQueue, e.txQueue))
			})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBusyFirstRequestInTheHandshakeTick(t *testing.T) {
	// Both timestamps stamped at the handshake, a request received, nothing
	// of ours ever acknowledged: busy.
	c := Conn{HasInfo: true, LastDataSent: 900 * time.Millisecond, LastDataRecv: 900 * time.Millisecond, BytesReceived: 18}
	if !c.Busy() || c.IdleFor() != 0 {
		t.Fatalf("unanswered first request looks idle: %+v", c)
	}
	// Same timestamps after a response was acknowledged: idle.
	c.BytesAcked = 120
	if c.Busy() || c.IdleFor() != 900*time.Millisecond {
		t.Fatalf("answered connection looks busy: %+v", c)
	}
	// No tcp_info (ProcNet): the byte counters say nothing.
	if (Conn{LastDataSent: time.Second, LastDataRecv: time.Second}).Busy() {
		t.Fatal("connection without tcp_info counted busy by the byte rule")
	}
}

func TestTrackerKeepAliveConnectionsAnsweredDuringTheDrain(t *testing.T) {
	const ms = time.Millisecond
	local := netip.MustParseAddrPort("192.0.2.1:443")
	conn := func(port uint16, recv, acked uint64, sent, rcvd time.Duration) Conn {
		return Conn{Local: local, Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), port), HasInfo: true,
			LastDataSent: sent, LastDataRecv: rcvd, BytesReceived: recv, BytesAcked: acked}
	}
	const idle, keepAlive = time.Second, 100 * time.Millisecond
	tr := NewTracker()
	steps := []struct {
		name           string
		conns          []Conn
		wantBusy, want int // busy, idle enough
	}{
		// A keep-alive connection idle 300ms when first seen: nothing known
		// about it, so the long rule. A fresh one, no request yet: long rule.
		{"first poll", []Conn{conn(1, 100, 500, 300*ms, 300*ms), conn(2, 0, 0, 500*ms, 500*ms)}, 0, 0},
		// A request arrives on the first: busy.
		{"request", []Conn{conn(1, 180, 500, 400*ms, 10*ms), conn(2, 0, 0, 600*ms, 600*ms)}, 1, 0},
		// Answered and acknowledged, idle 50ms: not yet.
		{"answered", []Conn{conn(1, 180, 900, 50*ms, 60*ms), conn(2, 0, 0, 700*ms, 700*ms)}, 0, 0},
		// Idle 150ms after its answer: drained; the fresh one is not.
		{"keep-alive idle", []Conn{conn(1, 180, 900, 150*ms, 160*ms), conn(2, 0, 0, 800*ms, 800*ms)}, 0, 1},
		// The fresh one reaches drain.idle.
		{"fresh idle", []Conn{conn(1, 180, 900, 350*ms, 360*ms), conn(2, 0, 0, 1100*ms, 1100*ms)}, 0, 2},
	}
	for _, st := range steps {
		s := tr.Summarize(st.conns, idle, keepAlive)
		if st.name == "answered" && s.NextIdle != 50*ms {
			t.Errorf("answered: NextIdle %s, want 50ms (the keep-alive one's)", s.NextIdle)
		}
		if s.Busy != st.wantBusy || s.Idle != st.want {
			t.Fatalf("%s: busy %d idle %d, want %d and %d (%+v)", st.name, s.Busy, s.Idle, st.wantBusy, st.want, s)
		}
	}
}

func TestTrackerSeesARequestWhoseTimestampsTie(t *testing.T) {
	local, remote := netip.MustParseAddrPort("192.0.2.1:443"), netip.MustParseAddrPort("192.0.2.2:5000")
	idleConn := func(recv, acked uint64, d time.Duration) Conn {
		return Conn{Local: local, Remote: remote, HasInfo: true, LastDataSent: d, LastDataRecv: d, BytesReceived: recv, BytesAcked: acked}
	}
	tr := NewTracker()
	steps := []struct {
		c        Conn
		wantBusy int
	}{
		{idleConn(100, 500, 2*time.Second), 0},         // answered, idle
		{idleConn(180, 500, 1500*time.Millisecond), 1}, // a request arrived, tie, no answer yet
		{idleConn(180, 500, 3*time.Second), 1},         // still unanswered: stays busy
		{idleConn(180, 900, 2*time.Second), 0},         // answered and acknowledged
	}
	for i, st := range steps {
		s := tr.Summarize([]Conn{st.c}, time.Second, time.Second)
		if s.Busy != st.wantBusy {
			t.Fatalf("poll %d: busy %d, want %d (%+v)", i, s.Busy, st.wantBusy, s)
		}
	}
	// A Tracker that did not see the request arrive cannot tell.
	if s := NewTracker().Summarize([]Conn{idleConn(180, 500, 3*time.Second)}, time.Second, time.Second); s.Busy != 0 {
		t.Fatalf("fresh tracker: %+v", s)
	}
	// A connection that disappeared is forgotten.
	tr.Summarize(nil, time.Second, time.Second)
	if len(tr.seen) != 0 {
		t.Fatalf("tracker kept %d closed connections", len(tr.seen))
	}
}
