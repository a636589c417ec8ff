package lb

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func (f *fakeHAProxy) sent(cmd string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Contains(f.cmds, cmd)
}

// twoHAProxies is an HA pair of fakes, their server be/node in each.
func twoHAProxies(t *testing.T, a, b *fakeHAProxy) HAProxies {
	return HAProxies{
		{Socket: a.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond},
		{Socket: b.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond},
	}
}

// TestHAProxiesTakeOutOfEach: both instances' admin states are recorded,
// the server is drained in each and readied in each; each says what it
// did, at its runtime API. An operator's maint in one is left there, the
// other drained and readied: in rotation somewhere, so not "in none".
func TestHAProxiesTakeOutOfEach(t *testing.T) {
	a, b := &fakeHAProxy{status: "UP"}, &fakeHAProxy{status: "UP"}
	hs := twoHAProxies(t, a, b)
	ctx := context.Background()
	rec, err := hs.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	var recs []HAProxyRecord
	if err := json.Unmarshal(rec, &recs); err != nil || !slices.Equal(recs, []HAProxyRecord{
		{Socket: hs[0].Socket, Server: "be/node", Admin: AdminReady}, {Socket: hs[1].Socket, Server: "be/node", Admin: AdminReady},
	}) {
		t.Fatalf("record %s (%v)", rec, err)
	}
	if err := hs.Restore(rec); err != nil {
		t.Fatal(err)
	}
	out, err := hs.TakeOut(ctx, time.Second)
	if want := "HAProxy be/node DRAIN, 0 session(s) at " + hs[0].Socket + "; HAProxy be/node DRAIN, 0 session(s) at " + hs[1].Socket; err != nil || out.NotIn || out.By != want {
		t.Fatalf("take out: %+v %v, want %q", out, err, want)
	}
	if in, err := hs.PutBack(ctx, time.Second); err != nil || !strings.Contains(in.By, "UP, 0 session(s) at "+hs[1].Socket) {
		t.Fatalf("put back: %+v %v", in, err)
	}

	a, b = &fakeHAProxy{status: "MAINT", admin: "1"}, &fakeHAProxy{status: "UP"}
	hs = twoHAProxies(t, a, b)
	rec, err = hs.Record(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.Restore(rec); err != nil {
		t.Fatal(err)
	}
	out, err = hs.TakeOut(ctx, time.Second)
	if err != nil || out.NotIn || !strings.HasPrefix(out.By, "HAProxy be/node was set to maint before pre: left so at "+hs[0].Socket+"; HAProxy be/node DRAIN") {
		t.Fatalf("take out: %+v %v", out, err)
	}
	if _, err := hs.PutBack(ctx, time.Second); err != nil {
		t.Fatal(err)
	}
	if a.sent("set server be/node state drain") || a.sent("set server be/node state ready") || !b.sent("set server be/node state ready") {
		t.Fatalf("commands: %q and %q", a.cmds, b.cmds)
	}
}

// TestHAProxiesPutBackEachWhatever: one instance gone at exit does not
// keep the server out of the other; the error names the one that failed.
func TestHAProxiesPutBackEachWhatever(t *testing.T) {
	a, b := &fakeHAProxy{status: "UP"}, &fakeHAProxy{status: "UP"}
	hs := twoHAProxies(t, a, b)
	gone := hs[0].Socket
	hs[0].Socket += ".gone"
	_, err := hs.PutBack(context.Background(), 200*time.Millisecond)
	if err == nil || !strings.HasPrefix(err.Error(), "HAProxy at "+gone+".gone: HAProxy runtime API") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("put back with one instance gone: %v", err)
	}
	if !b.sent("set server be/node state ready") {
		t.Fatalf("the other instance was not readied: %q", b.cmds)
	}
	// At pre, an instance that does not answer stops the record: it could
	// still route to the node.
	if _, err := hs.Record(context.Background(), nil); err == nil || !strings.HasPrefix(err.Error(), "HAProxy at "+gone+".gone: ") {
		t.Fatalf("record with one instance gone: %v", err)
	}
	hs[0].Socket = gone
	a.mu.Lock()
	a.ready = []string{"DOWN"}
	a.mu.Unlock()
	if _, err := hs.PutBack(context.Background(), 100*time.Millisecond); !errors.Is(err, ErrNotConfirmed) {
		t.Fatalf("not confirmed by one: %v", err)
	}
}

// TestHAProxiesRestore: a single HAProxy's record (no socket, as the first
// ones) is each instance's; an instance without an entry (added to the
// config since) forgets what an earlier cycle found, and is drained as by
// an earlier version; a record that is no list of them is refused.
func TestHAProxiesRestore(t *testing.T) {
	a, b := &fakeHAProxy{status: "UP"}, &fakeHAProxy{status: "UP"}
	hs := twoHAProxies(t, a, b)
	if err := hs.Restore(json.RawMessage(`{"haproxy_server":"be/node","admin":"maint"}`)); err != nil {
		t.Fatal(err)
	}
	if w, err := hs.TakeOut(context.Background(), time.Second); err != nil || !w.NotIn {
		t.Fatalf("a single record of maint: %+v %v", w, err)
	}
	rec, _ := json.Marshal([]HAProxyRecord{{Socket: hs[1].Socket, Server: "be/node", Admin: AdminMaint}})
	if err := hs.Restore(rec); err != nil {
		t.Fatal(err)
	}
	if _, err := hs.TakeOut(context.Background(), time.Second); err != nil || !a.sent("set server be/node state drain") || b.sent("set server be/node state drain") {
		t.Fatalf("%v: commands %q and %q", err, a.cmds, b.cmds)
	}
	if err := hs.Restore(json.RawMessage(`["web i-1:80"]`)); err == nil {
		t.Fatal("restored a record of target groups")
	}
}

// TestHAProxiesOfOne: one instance reads and says exactly what HAProxy
// does.
func TestHAProxiesOfOne(t *testing.T) {
	f := &fakeHAProxy{status: "UP", sessions: 2}
	hs := HAProxies{{Socket: f.serve(t), Backend: "be", Server: "node", Poll: time.Millisecond}}
	w, err := hs.TakeOut(context.Background(), time.Second)
	if err != nil || w.By != "HAProxy be/node DRAIN, 2 session(s)" {
		t.Fatalf("%+v %v", w, err)
	}
	hs[0].Socket += ".gone"
	if _, err := hs.TakeOut(context.Background(), time.Second); err == nil || strings.HasPrefix(err.Error(), "HAProxy at ") {
		t.Fatalf("one instance's error: %v", err)
	}
}
