//go:build integration

package sandbox

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestJoinLB: two nodes' server netns joined to an LB netns: from the LB,
// each node's listener answers on NodeAddr(i) and sees the LB as LBAddr(i)
// (the source a node's readiness endpoint counts); Teardown removes the LB
// netns and the node ends of the links, the nodes' own netns stay.
func TestJoinLB(t *testing.T) {
	needRoot(t)
	var nodes []*Node
	for _, p := range []string{"pa-lbt0", "pa-lbt1"} {
		o := Options{Prefix: p, AppUser: "pa-lbt-app"}
		teardownNow(t, o)
		n, err := Attach(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.SetupNetwork(t.Context()); err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	_ = DeleteNetns("pa-lbt")
	l, err := JoinLB(t.Context(), "pa-lbt", nodes)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Teardown(context.Background())
	for i, n := range nodes {
		var ln net.Listener
		if err := n.InServer(func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:8080"); return }); err != nil {
			t.Fatal(err)
		}
		peer := make(chan netip.Addr, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				peer <- netip.Addr{}
				return
			}
			peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			c.Close()
		}()
		err := l.InLB(func() error {
			c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(l.NodeAddr(i), 8080).String(), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
		if err != nil {
			t.Fatalf("node %d from the LB: %v", i, err)
		}
		if got := <-peer; got != l.LBAddr(i) {
			t.Fatalf("node %d saw the LB as %s, want %s", i, got, l.LBAddr(i))
		}
		ln.Close()
	}
	if err := l.Teardown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if NetnsExists("pa-lbt") {
		t.Fatal("the LB netns is left")
	}
	for i, n := range nodes {
		if _, nodeLink := l.links(i); linkExists(t.Context(), n.ServerNS, nodeLink) {
			t.Fatalf("node %d still has %s", i, nodeLink)
		}
		if !NetnsExists(n.ServerNS) {
			t.Fatalf("node %d's netns went with the LB", i)
		}
	}
	if _, err := JoinLB(t.Context(), "pa-lbt-much-too-long", nodes); err == nil {
		t.Fatal("a netns name too long for the veth names was taken")
	}
}
