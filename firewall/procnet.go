package firewall

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
)

// ProcNet reads sockets from /proc/net/tcp and /proc/net/tcp6. It is the
// fallback when NETLINK_SOCK_DIAG is unavailable and a reference for tests.
// The kernel formats every TCP socket of the network namespace on each read,
// so a poll costs time proportional to all sockets, and there is no tcp_info:
// Established fills only addresses and queue sizes (HasInfo false, LastData*
// zero), so a request in flight with empty queues looks idle-for-zero, never
// busy, and no connection ever counts as idle for a positive period.
type ProcNet struct {
	// Root is the proc directory (default "/proc"). The files read are
	// Root/net/tcp and Root/net/tcp6. /proc/net follows the network
	// namespace of the process's main thread; a thread that entered
	// another namespace with setns must use "/proc/thread-self".
	Root string
}

// procnet states (net/tcp_states.h, printed as %02X).
const (
	procnetEstablished = 0x01
	procnetListen      = 0x0A
)

// Established returns the ESTABLISHED TCP sockets whose local port is in
// ports (every port if ports is empty), with queue sizes only.
func (p *ProcNet) Established(ctx context.Context, ports []uint16) ([]Conn, error) {
	var conns []Conn
	err := p.scan(ctx, procnetEstablished, ports, func(e *procnetEntry) {
		conns = append(conns, Conn{Local: e.local, Remote: e.remote, RecvQ: e.rxQueue, SendQ: e.txQueue})
	})
	if err != nil {
		return nil, fmt.Errorf("listing established connections: %w", err)
	}
	return conns, nil
}

// Listening returns the LISTEN TCP sockets whose local port is in ports
// (every port if ports is empty).
func (p *ProcNet) Listening(ctx context.Context, ports []uint16) ([]Listener, error) {
	var ls []Listener
	err := p.scan(ctx, procnetListen, ports, func(e *procnetEntry) {
		ls = append(ls, Listener{Local: e.local, Inode: e.inode, UID: e.uid})
	})
	if err != nil {
		return nil, fmt.Errorf("listing listening sockets: %w", err)
	}
	return ls, nil
}

// scan reads tcp then tcp6 (a missing tcp6, IPv6 disabled, is skipped).
func (p *ProcNet) scan(ctx context.Context, state uint8, ports []uint16, fn func(*procnetEntry)) error {
	root := p.Root
	if root == "" {
		root = "/proc"
	}
	for _, name := range []string{"tcp", "tcp6"} {
		if err := ctx.Err(); err != nil {
			return err
		}
		path := filepath.Join(root, "net", name)
		f, err := os.Open(path)
		if err != nil {
			if name == "tcp6" && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return fmt.Errorf("opening %s: %w", path, err)
		}
		err = procnetParse(ctx, f, state, connPortSet(ports), fn)
		f.Close()
		if err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
	}
	return nil
}

// procnetEntry is one parsed line of /proc/net/tcp{,6}.
type procnetEntry struct {
	local, remote    netip.AddrPort
	txQueue, rxQueue uint32
	uid, inode       uint32
}

// procnetParse parses a /proc/net/tcp or tcp6 table and calls fn for each
// socket in state whose local port is in ports. The entry is reused.
func procnetParse(ctx context.Context, r io.Reader, state uint8, ports connPortSet, fn func(*procnetEntry)) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 256<<10), 1<<20)
	var e procnetEntry
	var f [10][]byte
	for line := 1; sc.Scan(); line++ {
		if line%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		n := procnetFields(sc.Bytes(), f[:])
		if n == 0 || (line == 1 && bytes.Equal(f[0], []byte("sl"))) {
			continue
		}
		if n < len(f) {
			return fmt.Errorf("line %d: %d fields, want at least %d", line, n, len(f))
		}
		st, ok := procnetHex(f[3])
		if !ok || st > 0xff {
			return fmt.Errorf("line %d: bad state %q", line, f[3])
		}
		if uint8(st) != state {
			continue
		}
		local, ok := procnetAddr(f[1])
		if !ok {
			return fmt.Errorf("line %d: bad local address %q", line, f[1])
		}
		if !ports.has(local.Port()) {
			continue
		}
		remote, ok := procnetAddr(f[2])
		if !ok {
			return fmt.Errorf("line %d: bad remote address %q", line, f[2])
		}
		tx, rx, ok := bytes.Cut(f[4], []byte(":"))
		txq, ok1 := procnetHex(tx)
		rxq, ok2 := procnetHex(rx)
		if !ok || !ok1 || !ok2 {
			return fmt.Errorf("line %d: bad queues %q", line, f[4])
		}
		uid, ok1 := procnetDec(f[7])
		inode, ok2 := procnetDec(f[9])
		if !ok1 || !ok2 {
			return fmt.Errorf("line %d: bad uid %q or inode %q", line, f[7], f[9])
		}
		e = procnetEntry{local: local, remote: remote, txQueue: txq, rxQueue: rxq, uid: uid, inode: inode}
		fn(&e)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return nil
}

// procnetFields splits line on spaces into f and returns how many fields
// it stored (at most len(f)).
func procnetFields(line []byte, f [][]byte) int {
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
	}
	return n
}

// procnetAddr decodes "0100007F:01BB" (IPv4) or 32 hex digits + port (IPv6).
// The kernel prints each 32-bit word of the address with %08X in host byte
// order, and the port in host order.
func procnetAddr(s []byte) (netip.AddrPort, bool) {
	h, p, ok := bytes.Cut(s, []byte(":"))
	if !ok || len(p) != 4 {
		return netip.AddrPort{}, false
	}
	port, ok := procnetHex(p)
	if !ok {
		return netip.AddrPort{}, false
	}
	var a [16]byte
	switch len(h) {
	case 8, 32:
	default:
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(h)/8; i++ {
		w, ok := procnetHex(h[8*i : 8*i+8])
		if !ok {
			return netip.AddrPort{}, false
		}
		binary.NativeEndian.PutUint32(a[4*i:], w)
	}
	var addr netip.Addr
	if len(h) == 8 {
		addr = netip.AddrFrom4([4]byte(a[:4]))
	} else {
		addr = netip.AddrFrom16(a).Unmap()
	}
	return netip.AddrPortFrom(addr, uint16(port)), true
}

// procnetHex parses up to 8 hex digits.
func procnetHex(s []byte) (uint32, bool) {
	if len(s) == 0 || len(s) > 8 {
		return 0, false
	}
	var v uint32
	for _, c := range s {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint32(c)
	}
	return v, true
}

// procnetDec parses a decimal uint32.
func procnetDec(s []byte) (uint32, bool) {
	if len(s) == 0 || len(s) > 10 {
		return 0, false
	}
	var v uint64
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if v > 1<<32-1 {
		return 0, false
	}
	return uint32(v), true
}
