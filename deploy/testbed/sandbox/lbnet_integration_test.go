//go:build integration

package sandbox

import (
	"context"
	"fmt"
	"net"
	"net/http"
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
	// The open-loop load from the LB netns: one request every 10 ms, as
	// many against a port that refuses at once as against a server.
	var ln net.Listener
	if err := nodes[0].InServer(func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:8081"); return }); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(ln)
	defer srv.Close()
	for _, port := range []int{8081, 8082} {
		ld := l.Load(t.Context(), fmt.Sprintf("http://%s:%d/", l.NodeAddr(0), port), LoadOptions{Every: 10 * time.Millisecond, Timeout: time.Second})
		time.Sleep(500 * time.Millisecond)
		st := ld.Stop()
		if st.Total < 25 || st.Total > 60 || (port == 8081) != (st.OK == st.Total) || (port == 8082) != (st.Refused == st.Total) {
			t.Fatalf("port %d: %s: want about 50 requests in 500 ms, all ok on the server, all refused on the closed port", port, st)
		}
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
