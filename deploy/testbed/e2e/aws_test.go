//go:build integration

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/autoscaling"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/agent"
	"github.com/patchagent/patchagent/deploy/testbed/asgsim"
	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
	"github.com/patchagent/patchagent/firewall/lb/awslb"
)

// The simulated AWS side of TestPatchBehindELBv2, all in the node's client
// netns: IMDS (AEMM), the ELBv2 and Auto Scaling APIs on the client's veth
// address, the target group's listener (the LB the clients use) on its
// loopback.
const (
	awsNodeID     = "i-0e2e0000000000001" // this instance, the node
	awsOtherID    = "i-0e2e0000000000002" // the rest of the fleet
	awsRegion     = "eu-west-1"
	awsIMDSPort   = 18092
	awsELBv2Port  = 18091
	awsASGPort    = 18093
	awsRouterAddr = "127.0.0.1:18090"
	awsOtherPort  = 18081 // startOtherServer's
	awsGroup      = "pa-e2e-web"
	awsASG        = "pa-e2e-asg"    // the Auto Scaling group of both instances
	awsDrainDelay = 5 * time.Second // the group's deregistration delay
)

// awsEnv is the node's AWS: AEMM serving its identity and instance
// profile, the ELBv2 simulator with one target group of the node (traffic
// port 443) and the other server (port 18081), the Auto Scaling simulator
// with both instances in one group (health check type EC2, min = desired
// = 2) to which the target group is attached, and SDK clients of the
// test's own.
type awsEnv struct {
	n         *sandbox.Node
	sim       *elbsim.Server
	asg       *asgsim.Server
	arn       string
	api       *elbv2.Client
	asgAPI    *autoscaling.Client
	imdsURL   string
	elbv2URL  string
	asgURL    string
	routerURL string
}

// startAWSEnv starts it all in n's client netns; everything is stopped
// when t ends (health checks before the targets go).
func startAWSEnv(t *testing.T, n *sandbox.Node) *awsEnv {
	t.Helper()
	e := &awsEnv{n: n, routerURL: "http://" + awsRouterAddr + "/"}

	bin, err := sandbox.BuildAEMM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	aemm, err := sandbox.StartAEMM(n.ClientNS, bin, t.TempDir(), netip.AddrPortFrom(n.ClientV4, awsIMDSPort),
		sandbox.AEMMConfig{InstanceID: awsNodeID, Region: awsRegion, AvailabilityZone: awsRegion + "b"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		aemm.Stop()
		if t.Failed() {
			t.Logf("AEMM log:\n%s", lastBytes(aemm.Log(), 3000))
		}
	})
	e.imdsURL = aemm.URL()

	dial := netnsDial(n.InClient)
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{{
			Name:                awsGroup,
			Port:                443,
			HealthCheckPath:     "/health-check",
			HealthCheckInterval: time.Second,
			HealthCheckTimeout:  500 * time.Millisecond,
			HealthyThreshold:    2,
			UnhealthyThreshold:  2,
			DeregistrationDelay: awsDrainDelay,
			CrossZone:           true,
		}},
		Resolve: elbsim.StaticResolver(map[string]string{awsNodeID: n.ServerV4.String(), awsOtherID: "127.0.0.1"}),
		Dial:    dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	e.sim, e.arn = sim, sim.TargetGroupARN(awsGroup)
	router, err := sim.Router(e.arn)
	if err != nil {
		t.Fatal(err)
	}
	elbAddr := netip.AddrPortFrom(n.ClientV4, awsELBv2Port).String()
	serveIn(t, n.InClient, elbAddr, sim)
	serveIn(t, n.InClient, awsRouterAddr, router)
	e.elbv2URL = "http://" + elbAddr

	cfg := aws.Config{
		Region:      awsRegion,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDE2ETEST", "SECRET", ""),
		HTTPClient:  &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dial}},
	}
	e.api = elbv2.NewFromConfig(cfg, func(o *elbv2.Options) { o.BaseEndpoint = aws.String(e.elbv2URL) })

	// As a real group with an attached target group does: an instance
	// entering Standby is deregistered and stays EnteringStandby until its
	// draining ends; one leaving Standby is registered again.
	port := func(id string) int32 {
		if id == awsOtherID {
			return awsOtherPort
		}
		return 443
	}
	hook := asgsim.AttachTargetGroups(e.api, port, func(err error) { t.Error(err) })
	asg, err := asgsim.New(asgsim.Options{Groups: []asgsim.Group{{
		Name: awsASG, MinSize: 2, DesiredCapacity: 2, MaxSize: 4, HealthCheckType: asgsim.HealthCheckEC2,
		TargetGroupARNs: []string{e.arn},
		Instances:       []asgsim.Instance{{ID: awsNodeID, AvailabilityZone: awsRegion + "b"}, {ID: awsOtherID, AvailabilityZone: awsRegion + "b"}},
		OnTransition:    hook,
	}}, TransitionDelay: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := asg.Close(); err != nil {
			t.Error(err)
		}
	})
	e.asg = asg
	asgAddr := netip.AddrPortFrom(n.ClientV4, awsASGPort).String()
	serveIn(t, n.InClient, asgAddr, asg)
	e.asgURL = "http://" + asgAddr
	e.asgAPI = autoscaling.NewFromConfig(cfg, func(o *autoscaling.Options) { o.BaseEndpoint = aws.String(e.asgURL) })
	return e
}

// serveIn serves h on addr, listening inside the netns that in runs its
// function in (Node.InClient, LBNet.InLB), until t ends.
func serveIn(t *testing.T, in func(func() error) error, addr string, h http.Handler) {
	t.Helper()
	var ln net.Listener
	if err := in(func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
		t.Fatal(err)
	}
	serveOn(t, ln, h)
}

// netnsDial dials from the netns that in runs its function in
// (Node.InClient, LBNet.InLB).
func netnsDial(in func(func() error) error) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := in(func() (err error) {
			c, err = (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// serveOn serves h on ln until t ends.
func serveOn(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		_ = srv.Close()
		<-done
	})
}

func lastBytes(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lbSection is the config's lb section for the environment.
func (e *awsEnv) lbSection() string {
	return fmt.Sprintf("lb:\n  deadline: 60s\n  aws:\n    target_groups: [%q]\n    endpoints: {imds: %q, elbv2: %q, autoscaling: %q}\n", e.arn, e.imdsURL, e.elbv2URL, e.asgURL)
}

func awsCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func (e *awsEnv) register(t *testing.T, id string, port int32) {
	t.Helper()
	td := types.TargetDescription{Id: aws.String(id)}
	if port != 0 {
		td.Port = aws.Int32(port)
	}
	if _, err := e.api.RegisterTargets(awsCtx(t, 15*time.Second), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(e.arn), Targets: []types.TargetDescription{td}}); err != nil {
		t.Fatalf("RegisterTargets %s:%d: %v", id, port, err)
	}
}

func (e *awsEnv) deregister(t *testing.T, id string, port int32) {
	t.Helper()
	td := []types.TargetDescription{{Id: aws.String(id), Port: aws.Int32(port)}}
	if _, err := e.api.DeregisterTargets(awsCtx(t, 15*time.Second), &elbv2.DeregisterTargetsInput{TargetGroupArn: aws.String(e.arn), Targets: td}); err != nil {
		t.Fatalf("DeregisterTargets %s:%d: %v", id, port, err)
	}
}

// state is id:port's state in the group as DescribeTargetHealth of the
// whole group lists it (draining included), "absent" if not listed, with
// ELB's reason.
func (e *awsEnv) state(t *testing.T, id string, port int32) (state, reason string) {
	t.Helper()
	out, err := e.api.DescribeTargetHealth(awsCtx(t, 15*time.Second), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(e.arn)})
	if err != nil {
		t.Fatalf("DescribeTargetHealth: %v", err)
	}
	for _, d := range out.TargetHealthDescriptions {
		if aws.ToString(d.Target.Id) == id && aws.ToInt32(d.Target.Port) == port {
			return string(d.TargetHealth.State), string(d.TargetHealth.Reason)
		}
	}
	return "absent", ""
}

// waitState polls every 100 ms until id:port is in state want, for at most max.
func (e *awsEnv) waitState(t *testing.T, id string, port int32, want string, max time.Duration) {
	t.Helper()
	deadline := time.Now().Add(max)
	for {
		got, reason := e.state(t, id, port)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s:%d still %s (%s), not %s, after %s", id, port, got, reason, want, max)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (e *awsEnv) stats(t *testing.T) elbsim.Stats {
	t.Helper()
	st, err := e.sim.Stats(e.arn)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// lbRecord is the load balancer record of st.
func lbRecord(t *testing.T, st agent.State) awslb.Record {
	t.Helper()
	var rec awslb.Record
	if err := json.Unmarshal(st.LB, &rec); err != nil {
		t.Fatalf("state file's lb %s: %v", st.LB, err)
	}
	return rec
}

// readState is the state file in stateDir.
func readState(t *testing.T, stateDir string) agent.State {
	t.Helper()
	path := agent.NewStateStore(stateDir).Path
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st agent.State
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
	return st
}

// TestPatchBehindELBv2: one node behind an ELBv2 target group (the
// simulator, with its own health checks and round-robin listener) with a
// second server, the rest of the fleet, under a steady load through the
// listener. pre finds the instance from IMDSv2 (AEMM), with the instance
// profile's credentials, records its registration (port 443 from ELB, it
// was registered without one) in the state file, deregisters it and waits
// until the group says draining, then blocks; the daemon restarts (a crash
// or reboot: the new one knows only the journal); exit registers exactly
// that again and waits until healthy. No client sees an error, the
// listener routes nothing to the node while it is out and to both after.
// Then: a node not registered at all is nothing to deregister (and
// nothing is registered at exit); an AccessDenied from the API fails pre
// before anything is changed.
func TestPatchBehindELBv2(t *testing.T) {
	n := setupNode(t, "pa-e2aw", nil)
	other := startOtherServer(t, n)
	t.Cleanup(func() { other.Close() })
	e := startAWSEnv(t, n)
	e.register(t, awsNodeID, 0) // the group's port, 443
	e.register(t, awsOtherID, awsOtherPort)
	e.waitState(t, awsNodeID, 443, "healthy", 30*time.Second)
	e.waitState(t, awsOtherID, awsOtherPort, "healthy", 30*time.Second)

	cfg, stateDir := writeConfig(t, n, n.Opts.AppName, "  metrics_listen: 127.0.0.1:18757\n  watch_interval: 200ms\ndrain:\n  idle: 200ms\nhealth:\n  interval: 100ms\n"+e.lbSection())
	node := elbsim.Target{ID: awsNodeID, Port: 443}
	fleet := elbsim.Target{ID: awsOtherID, Port: awsOtherPort}

	t.Run("pre and exit across a daemon restart", func(t *testing.T) {
		d := startDaemon(t, n, cfg)
		load := startLoad(n, e.routerURL, 20*time.Millisecond)
		long := startLoad(n, e.routerURL+"slow?ms=800", 100*time.Millisecond)
		t.Cleanup(func() { load.stop(); long.stop() })
		time.Sleep(time.Second)
		if st := e.stats(t); st.Routed[node] == 0 || st.Routed[fleet] == 0 {
			t.Fatalf("before pre, the listener did not route to both targets: %v", st.Routed)
		}

		pre := patchagent(t, n, "pre", "--config", cfg)
		if pre.code != 0 {
			t.Fatalf("pre: exit %d\n%s\n%s", pre.code, pre.stdout, pre.stderr)
		}
		if want := "out of LB rotation (1 target group registration(s) draining)"; !strings.Contains(firstLine(pre.stdout), want) {
			t.Errorf("pre's first line %q lacks %q", firstLine(pre.stdout), want)
		}
		// Draining for the deregistration delay from the deregistration,
		// which was pre's first side effect.
		switch got, reason := e.state(t, awsNodeID, 443); {
		case got == "draining":
		case got == "absent" && pre.took > awsDrainDelay:
			t.Logf("pre took %s, longer than the deregistration delay %s: the target's draining is over", pre.took, awsDrainDelay)
		default:
			t.Errorf("after pre the node's target is %s (%s), want draining", got, reason)
		}
		if got, reason := e.state(t, awsOtherID, awsOtherPort); got != "healthy" {
			t.Errorf("the other target is %s (%s) after pre", got, reason)
		}
		assertBlocked(t, n)
		st := readState(t, stateDir)
		rec := lbRecord(t, st)
		if want := []awslb.Registration{{TargetGroup: e.arn, ID: awsNodeID, Port: 443}}; !st.Open || len(rec.Registrations) != 1 || rec.Registrations[0] != want[0] || rec.Standby != nil {
			t.Fatalf("state file: open %v, lb %s; want open with %+v and no Standby (the group checks EC2 health)", st.Open, st.LB, want)
		}
		body := scrape(t, n, "http://127.0.0.1:18757/metrics")
		if want := "\npatchagent_lb_waits_total{direction=\"out\",result=\"confirmed\"} 1\n"; !strings.Contains(body, want) {
			t.Errorf("no %q in the daemon's metrics", strings.TrimSpace(want))
		}
		out := e.stats(t)

		// A crash or reboot between pre and exit: the new daemon knows the
		// registration only from the state file.
		stopDaemon(t, d)
		startDaemon(t, n, cfg)
		time.Sleep(time.Second) // the node patched, the fleet serving

		before := e.stats(t)
		if before.Routed[node] != out.Routed[node] {
			t.Errorf("the listener routed %d request(s) to the node while it was out", before.Routed[node]-out.Routed[node])
		}
		exit := patchagent(t, n, "exit", "--config", cfg)
		if exit.code != 0 {
			t.Fatalf("exit: exit %d\n%s\n%s", exit.code, exit.stdout, exit.stderr)
		}
		if want := "back in LB rotation (1 target group registration(s) healthy)"; !strings.Contains(firstLine(exit.stdout), want) {
			t.Errorf("exit's first line %q lacks %q", firstLine(exit.stdout), want)
		}
		if got, reason := e.state(t, awsNodeID, 443); got != "healthy" {
			t.Errorf("after exit the node's target is %s (%s), want healthy", got, reason)
		}
		assertInService(t, n)
		if st := readState(t, stateDir); st.Open {
			t.Errorf("the cycle is still open after exit")
		}
		back := e.stats(t)
		time.Sleep(time.Second)
		errs, ok := load.stop()
		lerrs, lok := long.stop()
		after := e.stats(t)
		t.Logf("%d client errors, %d ok (%d and %d on /slow); routed %v; ELB 5xx %d, target 5xx %d",
			errs+lerrs, ok+lok, lerrs, lok, after.Routed, after.ELB5xx, after.Target5xx)
		if errs+lerrs != 0 || ok == 0 || lok == 0 {
			t.Errorf("%d client errors (%d ok), %d on /slow (%d ok), through the listener", errs, ok, lerrs, lok)
		}
		if after.ELB5xx != 0 || after.Target5xx != 0 {
			t.Errorf("ELB answered %d 5xx itself, passed on %d of targets", after.ELB5xx, after.Target5xx)
		}
		if after.Routed[node] == back.Routed[node] || after.Routed[fleet] == back.Routed[fleet] {
			t.Errorf("in the second after exit, the listener routed %d request(s) to the node and %d to the other",
				after.Routed[node]-back.Routed[node], after.Routed[fleet]-back.Routed[fleet])
		}
		body = scrape(t, n, "http://127.0.0.1:18757/metrics")
		if want := "\npatchagent_lb_waits_total{direction=\"in\",result=\"confirmed\"} 1\n"; !strings.Contains(body, want) {
			t.Errorf("no %q in the restarted daemon's metrics", strings.TrimSpace(want))
		}
	})

	t.Run("not registered", func(t *testing.T) {
		e.deregister(t, awsNodeID, 443)
		e.waitState(t, awsNodeID, 443, "absent", awsDrainDelay+10*time.Second)
		d := startDaemon(t, n, cfg)
		deregs := e.sim.Calls("DeregisterTargets")
		pre := patchagent(t, n, "pre", "--config", cfg)
		if pre.code != 0 {
			t.Fatalf("pre: exit %d\n%s\n%s", pre.code, pre.stdout, pre.stderr)
		}
		if want := "not registered in any of 1 target group(s): nothing to deregister"; !strings.Contains(firstLine(pre.stdout), want) {
			t.Errorf("pre's first line %q lacks %q", firstLine(pre.stdout), want)
		}
		if got := e.sim.Calls("DeregisterTargets"); got != deregs {
			t.Errorf("pre called DeregisterTargets %d time(s)", got-deregs)
		}
		assertBlocked(t, n)
		if st := readState(t, stateDir); !st.Open || len(lbRecord(t, st).Registrations) != 0 {
			t.Errorf("state file: open %v, lb %s; want open with no registration", st.Open, st.LB)
		}
		// Across a restart too, the journal says there is nothing to put
		// back.
		stopDaemon(t, d)
		startDaemon(t, n, cfg)
		regs := e.sim.Calls("RegisterTargets")
		exit := patchagent(t, n, "exit", "--config", cfg)
		if exit.code != 0 {
			t.Fatalf("exit: exit %d\n%s\n%s", exit.code, exit.stdout, exit.stderr)
		}
		if want := "nothing to register"; !strings.Contains(firstLine(exit.stdout), want) {
			t.Errorf("exit's first line %q lacks %q", firstLine(exit.stdout), want)
		}
		if got := e.sim.Calls("RegisterTargets"); got != regs {
			t.Errorf("exit called RegisterTargets %d time(s) for a node that was not registered", got-regs)
		}
		assertInService(t, n)
		if got, _ := e.state(t, awsNodeID, 443); got != "absent" {
			t.Errorf("the node's target is %s after exit, want still absent", got)
		}
		if got, _ := e.state(t, awsOtherID, awsOtherPort); got != "healthy" {
			t.Errorf("the other target is %s", got)
		}
	})

	t.Run("AccessDenied", func(t *testing.T) {
		e.register(t, awsNodeID, 0)
		e.waitState(t, awsNodeID, 443, "healthy", 30*time.Second)
		startDaemon(t, n, cfg)
		describes, deregs := e.sim.Calls("DescribeTargetHealth"), e.sim.Calls("DeregisterTargets")
		if err := e.sim.FailNext("DescribeTargetHealth", 1, awsquery.AccessDenied); err != nil {
			t.Fatal(err)
		}
		pre := patchagent(t, n, "pre", "--config", cfg)
		got := e.sim.Calls("DescribeTargetHealth") - describes
		if pre.code == 0 {
			t.Fatalf("pre succeeded with DescribeTargetHealth denied\n%s", pre.stdout)
		}
		all := pre.stdout + pre.stderr
		for _, want := range []string{"AccessDenied", "nothing was changed"} {
			if !strings.Contains(all, want) {
				t.Errorf("pre's output lacks %q", want)
			}
		}
		if got != 1 {
			t.Errorf("DescribeTargetHealth called %d time(s), want 1 (AccessDenied is not retried)", got)
		}
		if got := e.sim.Calls("DeregisterTargets"); got != deregs {
			t.Errorf("pre called DeregisterTargets %d time(s)", got-deregs)
		}
		if rules := iptablesS(t, n); strings.Contains(rules, "PATCHAGENT") {
			t.Errorf("rules of ours present after a failed pre:\n%s", rules)
		}
		assertInService(t, n)
		if got, reason := e.state(t, awsNodeID, 443); got != "healthy" {
			t.Errorf("the node's target is %s (%s) after a failed pre, want healthy", got, reason)
		}
		if st := readState(t, stateDir); st.Open {
			t.Errorf("a failed pre opened a cycle: %+v", st)
		}
	})

	// The capacity gate (lb.aws.min_healthy, default 1): with the rest of
	// the fleet gone from the group, this node is its last healthy target:
	// pre refuses, with the counts, and changes nothing.
	t.Run("capacity gate", func(t *testing.T) {
		e.deregister(t, awsOtherID, awsOtherPort)
		e.waitState(t, awsOtherID, awsOtherPort, "absent", awsDrainDelay+10*time.Second)
		startDaemon(t, n, cfg)
		deregs := e.sim.Calls("DeregisterTargets")
		pre := patchagent(t, n, "pre", "--config", cfg)
		all := pre.stdout + pre.stderr
		if pre.code == 0 || !strings.Contains(all, "nothing was changed") || !strings.Contains(all, "capacity gate: taking this instance out of "+awsGroup+"/") ||
			!strings.Contains(all, "would leave 0 healthy target(s) of 1 registered, fewer than lb.aws.min_healthy 1 (1)") {
			t.Fatalf("pre: exit %d\n%s", pre.code, all)
		}
		if got := e.sim.Calls("DeregisterTargets"); got != deregs {
			t.Errorf("pre called DeregisterTargets %d time(s)", got-deregs)
		}
		if rules := iptablesS(t, n); strings.Contains(rules, "PATCHAGENT") {
			t.Errorf("rules of ours present after a refused pre:\n%s", rules)
		}
		assertInService(t, n)
		if got, reason := e.state(t, awsNodeID, 443); got != "healthy" {
			t.Errorf("the node's target is %s (%s) after a refused pre, want healthy", got, reason)
		}
		if st := readState(t, stateDir); st.Open {
			t.Errorf("a refused pre opened a cycle: %+v", st)
		}
	})

	// The Auto Scaling group now checks health with ELB, and is at its
	// minimum size: pre lowers the minimum (journaled first) and puts the
	// node on Standby; exit's ExitStandby is denied once, so the exit
	// fails with the node still on Standby and the minimum lowered, both
	// kept in the state file; the next exit, from a restarted daemon,
	// takes it off Standby, sees it healthy and InService, and restores
	// the minimum.
	t.Run("Standby restored after a failed exit", func(t *testing.T) {
		e.register(t, awsOtherID, awsOtherPort)
		e.waitState(t, awsOtherID, awsOtherPort, "healthy", 30*time.Second)
		if _, err := e.asgAPI.UpdateAutoScalingGroup(awsCtx(t, 15*time.Second), &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(awsASG), HealthCheckType: aws.String(asgsim.HealthCheckELB)}); err != nil {
			t.Fatal(err)
		}
		d := startDaemon(t, n, cfg)
		pre := patchagent(t, n, "pre", "--config", cfg)
		if pre.code != 0 {
			t.Fatalf("pre: exit %d\n%s\n%s", pre.code, pre.stdout, pre.stderr)
		}
		if want := "Standby in Auto Scaling group " + awsASG + " (min size 2 → 1)"; !strings.Contains(firstLine(pre.stdout), want) {
			t.Errorf("pre's first line %q lacks %q", firstLine(pre.stdout), want)
		}
		want := awslb.StandbyRecord{Group: awsASG, Decrement: true, MinSize: &awslb.MinSizeChange{From: 2, To: 1}}
		if rec := lbRecord(t, readState(t, stateDir)); rec.Standby == nil || rec.Standby.Group != want.Group || !rec.Standby.Decrement || rec.Standby.MinSize == nil || *rec.Standby.MinSize != *want.MinSize {
			t.Fatalf("state file's standby = %+v, want %+v", rec.Standby, want)
		}
		g, _ := e.asg.Group(awsASG)
		in, _ := e.asg.Instance(awsNodeID)
		if g.MinSize != 1 || g.DesiredCapacity != 1 || (in.LifecycleState != asgsim.EnteringStandby && in.LifecycleState != asgsim.Standby) {
			t.Fatalf("after pre: min %d desired %d, node %s; want 1, 1, on Standby", g.MinSize, g.DesiredCapacity, in.LifecycleState)
		}
		assertBlocked(t, n)

		if err := e.asg.FailNext("ExitStandby", 1, awsquery.AccessDenied); err != nil {
			t.Fatal(err)
		}
		exit := patchagent(t, n, "exit", "--config", cfg)
		if exit.code == 0 || !strings.Contains(exit.stdout+exit.stderr, "out of Standby in "+awsASG) || !strings.Contains(exit.stdout+exit.stderr, "AccessDenied") {
			t.Fatalf("exit with ExitStandby denied: exit %d\n%s\n%s", exit.code, exit.stdout, exit.stderr)
		}
		if rec := lbRecord(t, readState(t, stateDir)); rec.Standby == nil || rec.Standby.MinSize == nil {
			t.Fatalf("after the failed exit the state file's lb is %s, want the Standby kept", readState(t, stateDir).LB)
		}
		g, _ = e.asg.Group(awsASG)
		if in, _ := e.asg.Instance(awsNodeID); in.LifecycleState != asgsim.Standby || g.MinSize != 1 {
			t.Fatalf("after the failed exit: node %s, min %d; want Standby, 1", in.LifecycleState, g.MinSize)
		}

		stopDaemon(t, d)
		startDaemon(t, n, cfg)
		exit = patchagent(t, n, "exit", "--config", cfg)
		if exit.code != 0 {
			t.Fatalf("the second exit: exit %d\n%s\n%s", exit.code, exit.stdout, exit.stderr)
		}
		if want := "InService in Auto Scaling group " + awsASG; !strings.Contains(firstLine(exit.stdout), want) {
			t.Errorf("exit's first line %q lacks %q", firstLine(exit.stdout), want)
		}
		g, _ = e.asg.Group(awsASG)
		in, _ = e.asg.Instance(awsNodeID)
		if g.MinSize != 2 || g.DesiredCapacity != 2 || g.Launched != 0 || in.LifecycleState != asgsim.InService {
			t.Errorf("after the second exit: min %d desired %d launched %d, node %s; want 2, 2, 0, InService", g.MinSize, g.DesiredCapacity, g.Launched, in.LifecycleState)
		}
		if got, reason := e.state(t, awsNodeID, 443); got != "healthy" {
			t.Errorf("after the second exit the node's target is %s (%s)", got, reason)
		}
		assertInService(t, n)
	})

	// pre killed (SIGKILL, as an SSM timeout kills it) once it has
	// deregistered the node and put it on Standby, before the block (no
	// daemon: the CLI runs the phase itself): exit, knowing only the state
	// file, registers the node again, takes it off Standby and restores the
	// minimum size.
	t.Run("pre killed after the deregistration", func(t *testing.T) {
		// The group checks ELB health (as the subtest above left it, set
		// again so this one runs alone): pre enters Standby too.
		if _, err := e.asgAPI.UpdateAutoScalingGroup(awsCtx(t, 15*time.Second), &autoscaling.UpdateAutoScalingGroupInput{
			AutoScalingGroupName: aws.String(awsASG), HealthCheckType: aws.String(asgsim.HealthCheckELB)}); err != nil {
			t.Fatal(err)
		}
		e.register(t, awsOtherID, awsOtherPort)
		e.waitState(t, awsOtherID, awsOtherPort, "healthy", 30*time.Second)
		killPreAt(t, n, cfg, "block")
		st := readState(t, stateDir)
		if rec := lbRecord(t, st); !st.Open || len(rec.Registrations) != 1 || rec.Standby == nil {
			t.Fatalf("state file after the killed pre: open %v, lb %s; want open, the registration and the Standby", st.Open, st.LB)
		}
		if got, _ := e.state(t, awsNodeID, 443); got != "draining" && got != "absent" {
			t.Fatalf("the node's target is %s after the killed pre, want draining", got)
		}
		if in, _ := e.asg.Instance(awsNodeID); in.LifecycleState != asgsim.EnteringStandby && in.LifecycleState != asgsim.Standby {
			t.Fatalf("the node is %s after the killed pre, want on Standby", in.LifecycleState)
		}
		exit := patchagent(t, n, "exit", "--config", cfg)
		if exit.code != 0 {
			t.Fatalf("exit after the killed pre: exit %d\n%s\n%s", exit.code, exit.stdout, exit.stderr)
		}
		g, _ := e.asg.Group(awsASG)
		in, _ := e.asg.Instance(awsNodeID)
		if g.MinSize != 2 || g.DesiredCapacity != 2 || in.LifecycleState != asgsim.InService {
			t.Errorf("after exit: min %d desired %d, node %s; want 2, 2, InService", g.MinSize, g.DesiredCapacity, in.LifecycleState)
		}
		if got, reason := e.state(t, awsNodeID, 443); got != "healthy" {
			t.Errorf("after exit the node's target is %s (%s)", got, reason)
		}
		assertInService(t, n)
	})
}
