package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
)

// LBNet is a load balancer's network namespace joined to the server netns
// of each of several nodes by a veth pair of its own, on 198.51.100.0/24
// (TEST-NET-2), one /30 per node: node i answers on NodeAddr(i) and sees
// the load balancer as LBAddr(i). Every node keeps its own client netns
// and addresses; the LB reaches each node's app (and patchagent's
// readiness endpoint) the way a load balancer in front of a fleet does,
// through an interface the node's block applies to.
type LBNet struct {
	NS    string
	nodes []*Node
}

// maxLBNodes is how many /30s the /24 holds.
const maxLBNodes = 64

// JoinLB creates the netns ns (loopback up) and a veth pair to every node's
// server netns (ns+"-l<i>" in ns, ns+"-n<i>" in node i's). The nodes must
// be set up. On an error it deletes what it made. Teardown removes it all.
func JoinLB(ctx context.Context, ns string, nodes []*Node) (_ *LBNet, err error) {
	if len(nodes) == 0 || len(nodes) > maxLBNodes {
		return nil, fmt.Errorf("joining nodes to an LB: %d nodes (want 1 to %d)", len(nodes), maxLBNodes)
	}
	if len(ns)+4 > 15 {
		return nil, fmt.Errorf("joining nodes to an LB: netns name %q too long for its veth names (at most 11 bytes)", ns)
	}
	if err := CreateNetns(ns); err != nil {
		return nil, err
	}
	l := &LBNet{NS: ns, nodes: nodes}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Teardown(context.WithoutCancel(ctx)))
		}
	}()
	for i, n := range nodes {
		lbLink, nodeLink := l.links(i)
		if linkExists(ctx, n.ServerNS, nodeLink) {
			if err := ipRun(ctx, "-n", n.ServerNS, "link", "del", nodeLink); err != nil {
				return nil, err
			}
		}
		if err := ipRun(ctx, "link", "add", lbLink, "netns", ns, "type", "veth", "peer", "name", nodeLink, "netns", n.ServerNS); err != nil {
			return nil, fmt.Errorf("joining node %d to the LB: %w", i, err)
		}
		for _, side := range []struct {
			ns, link string
			addr     netip.Addr
		}{{ns, lbLink, l.LBAddr(i)}, {n.ServerNS, nodeLink, l.NodeAddr(i)}} {
			if err := ipRun(ctx, "-n", side.ns, "addr", "replace", netip.PrefixFrom(side.addr, 30).String(), "dev", side.link); err != nil {
				return nil, fmt.Errorf("joining node %d to the LB: %w", i, err)
			}
			if err := ipRun(ctx, "-n", side.ns, "link", "set", side.link, "up"); err != nil {
				return nil, fmt.Errorf("joining node %d to the LB: %w", i, err)
			}
		}
	}
	return l, nil
}

func (l *LBNet) links(i int) (lbLink, nodeLink string) {
	return fmt.Sprintf("%s-l%d", l.NS, i), fmt.Sprintf("%s-n%d", l.NS, i)
}

// NodeAddr is node i's address on its link to the LB.
func (l *LBNet) NodeAddr(i int) netip.Addr { return lbNetAddr(i, 1) }

// LBAddr is the LB's address on its link to node i: the source of the
// LB's health checks and proxied requests as node i sees them.
func (l *LBNet) LBAddr(i int) netip.Addr { return lbNetAddr(i, 2) }

func lbNetAddr(i, host int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 51, 100, byte(4*i + host)})
}

// Teardown deletes the LB netns, and with it every veth pair (deleting one
// end deletes its peer in the node's netns).
func (l *LBNet) Teardown(ctx context.Context) error {
	var errs []error
	for i, n := range l.nodes {
		_, nodeLink := l.links(i)
		if NetnsExists(n.ServerNS) && linkExists(ctx, n.ServerNS, nodeLink) {
			if err := ipRun(ctx, "-n", n.ServerNS, "link", "del", nodeLink); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(append(errs, DeleteNetns(l.NS))...)
}

// InLB runs fn inside the LB netns (InNetns).
func (l *LBNet) InLB(fn func() error) error { return InNetns(l.NS, fn) }

// Load starts a load run (Node.Load's) from the LB netns against url, an
// IPv4 one (o.Path and o.V6 are not used), e.g. the LB's own frontend on its
// loopback.
func (l *LBNet) Load(ctx context.Context, url string, o LoadOptions) *Load {
	return startLoad(ctx, l.NS, url, o, "tcp4")
}
