package elbsim_test

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
)

// The router sends requests round-robin to healthy targets only, keeping the
// client's Host and adding X-Forwarded-For.
func TestRouterRoundRobinOverHealthy(t *testing.T) {
	t.Parallel()
	a, b, c := newApp(t, "a", 200), newApp(t, "b", 200), newApp(t, "c", 500)
	e := setup(t, fastGroup("tg-rr"))
	arn := arnOf(e, "tg-rr")
	e.register(t, arn, td(idA, a.port), td(idB, b.port), td(idC, c.port))
	e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)
	e.waitState(t, arn, idB, b.port, types.TargetHealthStateEnumHealthy)
	e.waitState(t, arn, idC, c.port, types.TargetHealthStateEnumUnhealthy)
	lb := e.router(t, arn, "")

	var seq string
	for range 12 {
		code, body := get(t, lb.URL+"/app")
		if code != 200 {
			t.Fatalf("routed request: %d %q, want 200 from a healthy target", code, body)
		}
		seq += body
	}
	if seq != "abababababab" {
		t.Errorf("bodies in order %q, want strict alternation of the healthy a and b", seq)
	}
	st := e.stats(t, arn)
	want := map[elbsim.Target]int{{ID: idA, Port: a.port}: 6, {ID: idB, Port: b.port}: 6}
	if len(st.Routed) != 2 || st.Routed[elbsim.Target{ID: idA, Port: a.port}] != 6 || st.Routed[elbsim.Target{ID: idB, Port: b.port}] != 6 || st.ELB5xx != 0 || st.Target5xx != 0 {
		t.Errorf("stats %+v, want routed %v and no 5xx", st, want)
	}

	resp, err := http.Get(lb.URL + "/app")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	u, _ := url.Parse(lb.URL)
	if got := resp.Header.Get("X-Seen-Host"); got != u.Host {
		t.Errorf("the target saw Host %q, want the client's %q", got, u.Host)
	}
	if got := resp.Header.Get("X-Seen-Forwarded-For"); got != "127.0.0.1" {
		t.Errorf("the target saw X-Forwarded-For %q, want 127.0.0.1", got)
	}
}

// With no healthy target the router fails open to every registered target
// that is not draining, initial ones included; with none at all it answers
// 503.
func TestRouterFailsOpen(t *testing.T) {
	t.Parallel()
	c, d, f := newApp(t, "c", 500), newApp(t, "d", 500), newApp(t, "f", 200)
	slow := fastGroup("tg-initial")
	slow.HealthyThreshold = 10 // stays initial for a second
	e := setup(t, fastGroup("tg-open"), slow, fastGroup("tg-empty"))
	arn := arnOf(e, "tg-open")
	e.register(t, arn, td(idC, c.port), td(idD, d.port))
	e.waitState(t, arn, idC, c.port, types.TargetHealthStateEnumUnhealthy)
	e.waitState(t, arn, idD, d.port, types.TargetHealthStateEnumUnhealthy)
	lb := e.router(t, arn, "")
	var seq string
	for range 4 {
		code, body := get(t, lb.URL+"/")
		if code != 500 {
			t.Errorf("fail-open request: %d, want the targets' own 500", code)
		}
		seq += body
	}
	if seq != "cdcd" {
		t.Errorf("fail-open bodies %q, want cdcd: every unhealthy target in turn", seq)
	}
	if st := e.stats(t, arn); st.Target5xx != 4 || st.ELB5xx != 0 {
		t.Errorf("stats %+v, want 4 target 5xx and no ELB 5xx", st)
	}

	iarn := arnOf(e, "tg-initial")
	e.register(t, iarn, td(idE, f.port))
	if code, body := get(t, e.router(t, iarn, "").URL+"/"); code != 200 || body != "f" {
		t.Errorf("only an initial target: %d %q, want 200 from it", code, body)
	}
	if st, _ := e.state(t, iarn, idE, f.port); st != types.TargetHealthStateEnumInitial {
		t.Errorf("the target is %s, want it still initial (else the test proves nothing)", st)
	}

	earn := arnOf(e, "tg-empty")
	if code, _ := get(t, e.router(t, earn, "").URL+"/"); code != http.StatusServiceUnavailable {
		t.Errorf("no target: %d, want 503", code)
	}
	if st := e.stats(t, earn); st.ELB5xx != 1 || len(st.Routed) != 0 {
		t.Errorf("stats %+v, want one ELB 5xx and nothing routed", st)
	}
}

// A deregistered target gets no new request at once; requests it already has
// finish within the delay, and one still running when the delay ends is cut.
func TestRouterDraining(t *testing.T) {
	t.Parallel()
	release := map[string]chan struct{}{"/1": make(chan struct{}), "/2": make(chan struct{})}
	started := make(chan string, 2)
	held := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if ch := release[r.URL.Path]; ch != nil {
			started <- r.URL.Path
			select {
			case <-ch:
			case <-r.Context().Done():
				return
			}
		}
		w.Write([]byte("held"))
	}))
	t.Cleanup(held.Close)
	t.Cleanup(func() { close(release["/2"]) })
	heldPort := held.Listener.Addr().(*net.TCPAddr).Port
	b := newApp(t, "b", 200)

	g := fastGroup("tg-route-drain")
	g.DeregistrationDelay = time.Second // room for the steps below before it ends
	e := setup(t, g)
	arn := arnOf(e, "tg-route-drain")
	e.register(t, arn, td(idA, int32(heldPort)))
	e.waitState(t, arn, idA, int32(heldPort), types.TargetHealthStateEnumHealthy)
	lb := e.router(t, arn, "")

	type answer struct {
		code int
		body string
	}
	answers := map[string]chan answer{"/1": make(chan answer, 1), "/2": make(chan answer, 1)}
	var wg sync.WaitGroup
	for path, ch := range answers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(lb.URL + path)
			if err != nil {
				ch <- answer{0, err.Error()}
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, 64)
			n, _ := resp.Body.Read(buf)
			ch <- answer{resp.StatusCode, string(buf[:n])}
		}()
	}
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("the held requests did not reach the target")
		}
	}

	e.deregister(t, arn, td(idA, int32(heldPort)))
	if code, _ := get(t, lb.URL+"/new"); code != http.StatusServiceUnavailable {
		t.Errorf("new request with only a draining target: %d, want 503", code)
	}
	e.register(t, arn, td(idB, b.port))
	e.waitState(t, arn, idB, b.port, types.TargetHealthStateEnumHealthy)
	for range 3 {
		if _, body := get(t, lb.URL+"/new"); body != "b" {
			t.Errorf("new request went to %q, want b: the draining target gets none", body)
		}
	}

	close(release["/1"])
	if a := <-answers["/1"]; a.code != 200 || a.body != "held" {
		t.Errorf("in-flight request released while draining: %d %q, want 200 held", a.code, a.body)
	}
	select {
	case a := <-answers["/2"]:
		if a.code != http.StatusBadGateway {
			t.Errorf("in-flight request at the delay's end: %d %q, want 502", a.code, a.body)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the request still running at the end of the delay was not cut")
	}
	wg.Wait()
	st := e.stats(t, arn)
	if got := st.Routed[elbsim.Target{ID: idA, Port: int32(heldPort)}]; got != 2 {
		t.Errorf("routed to the draining target %d times, want the 2 sent before deregistration", got)
	}
	if st.ELB5xx != 2 { // the 503 and the cut request
		t.Errorf("ELB 5xx %d, want 2", st.ELB5xx)
	}
}

// With cross-zone load balancing off, a zone's node routes only to targets
// in its zone; with it on, to all.
func TestRouterCrossZone(t *testing.T) {
	t.Parallel()
	a, b := newApp(t, "a", 200), newApp(t, "b", 200)
	on := fastGroup("tg-xz-on")
	on.CrossZone = true
	e := setup(t, fastGroup("tg-xz-off"), on)
	for _, name := range []string{"tg-xz-off", "tg-xz-on"} {
		arn := arnOf(e, name)
		e.register(t, arn,
			types.TargetDescription{Id: aws.String(idA), Port: aws.Int32(a.port), AvailabilityZone: aws.String("us-east-1a")},
			types.TargetDescription{Id: aws.String(idB), Port: aws.Int32(b.port), AvailabilityZone: aws.String("us-east-1b")})
		e.waitState(t, arn, idA, a.port, types.TargetHealthStateEnumHealthy)
		e.waitState(t, arn, idB, b.port, types.TargetHealthStateEnumHealthy)
		if z := aws.ToString(e.health(t, arn)[key(idB, b.port)].Target.AvailabilityZone); z != "us-east-1b" {
			t.Errorf("%s: AvailabilityZone %q, want the registered us-east-1b", name, z)
		}
		lb := e.router(t, arn, "us-east-1a")
		var seq string
		for range 4 {
			_, body := get(t, lb.URL+"/")
			seq += body
		}
		want := "aaaa"
		if name == "tg-xz-on" {
			want = "abab"
		}
		if seq != want {
			t.Errorf("%s: node in us-east-1a sent to %q, want %q", name, seq, want)
		}
	}
}
