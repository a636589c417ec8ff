//go:build integration

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	elbv2 "github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2"
	"github.com/aws/aws-sdk-go-v2/service/elasticloadbalancingv2/types"

	"github.com/patchagent/patchagent/deploy/testbed/awsquery"
	"github.com/patchagent/patchagent/deploy/testbed/elbsim"
	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// The AWS side of TestFleetBehindELBv2, in the LB netns: each node's IMDS
// (AEMM, its own instance id) on the LB's address on that node's link, the
// ELBv2 API on all of them, the target group's listener on the LB's
// loopback.
const (
	fleetIMDSPort   = 18192
	fleetELBv2Port  = 18191
	fleetRouterAddr = "127.0.0.1:18190"
	fleetGroup      = "pa-e2e-fleet"
)

// fleetID is node i's instance id.
func fleetID(i int) string { return fmt.Sprintf("i-0e2ef1ee700000%03d", i) }

// TestFleetBehindELBv2: two sandbox nodes, each with its own daemon and
// IMDS, in one ELBv2 target group (the simulator health-checks them and
// routes clients to the healthy ones from the LB netns, as an ALB in
// front of a fleet does). Under a steady open-loop load through the
// listener, each node in turn is patched (pre, exit): no client sees an
// error and the listener always has a node. Then, with one node's app
// failing its health check, the capacity gate refuses the other's pre with
// the counts, and nothing changes.
func TestFleetBehindELBv2(t *testing.T) {
	nodes := []*sandbox.Node{setupNode(t, "pa-e2f0", nil), setupNode(t, "pa-e2f1", nil)}
	l, err := sandbox.JoinLB(t.Context(), "pa-e2fl", nodes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Teardown(ctx); err != nil {
			t.Errorf("LB netns teardown: %v", err)
		}
	})

	bin, err := sandbox.BuildAEMM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	hosts := map[string]string{}
	for i := range nodes {
		hosts[fleetID(i)] = l.NodeAddr(i).String()
		a, err := sandbox.StartAEMM(l.NS, bin, t.TempDir(), netip.AddrPortFrom(l.LBAddr(i), fleetIMDSPort),
			sandbox.AEMMConfig{InstanceID: fleetID(i), Region: awsRegion, AvailabilityZone: awsRegion + "a"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(a.Stop)
	}
	dial := netnsDial(l.InLB)
	sim, err := elbsim.New(elbsim.Options{
		TargetGroups: []elbsim.TargetGroup{{
			Name: fleetGroup, Port: 443, HealthCheckPath: "/health-check",
			HealthCheckInterval: time.Second, HealthCheckTimeout: 500 * time.Millisecond,
			HealthyThreshold: 2, UnhealthyThreshold: 2, DeregistrationDelay: 3 * time.Second, CrossZone: true,
		}},
		Resolve: elbsim.StaticResolver(hosts),
		Dial:    dial,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	arn := sim.TargetGroupARN(fleetGroup)
	router, err := sim.Router(arn)
	if err != nil {
		t.Fatal(err)
	}
	serveIn(t, l.InLB, fmt.Sprintf("0.0.0.0:%d", fleetELBv2Port), sim)
	serveIn(t, l.InLB, fleetRouterAddr, router)
	api := elbv2.NewFromConfig(awsquery.ClientConfig(3), func(o *elbv2.Options) {
		o.BaseEndpoint = aws.String(fmt.Sprintf("http://127.0.0.1:%d", fleetELBv2Port))
		o.HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DialContext: dial}}
	})
	states := func() map[string]string {
		t.Helper()
		out, err := api.DescribeTargetHealth(awsCtx(t, 15*time.Second), &elbv2.DescribeTargetHealthInput{TargetGroupArn: aws.String(arn)})
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, d := range out.TargetHealthDescriptions {
			m[aws.ToString(d.Target.Id)] = string(d.TargetHealth.State)
		}
		return m
	}
	waitStates := func(want map[string]string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := states()
			ok := true
			for id, w := range want {
				ok = ok && got[id] == w
			}
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("targets %v, want %v", got, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for i := range nodes {
		td := []types.TargetDescription{{Id: aws.String(fleetID(i))}}
		if _, err := api.RegisterTargets(awsCtx(t, 15*time.Second), &elbv2.RegisterTargetsInput{TargetGroupArn: aws.String(arn), Targets: td}); err != nil {
			t.Fatal(err)
		}
	}
	allHealthy := map[string]string{fleetID(0): "healthy", fleetID(1): "healthy"}
	waitStates(allHealthy)

	cfgs := make([]string, len(nodes))
	for i, n := range nodes {
		lb := fmt.Sprintf("lb:\n  deadline: 60s\n  aws:\n    target_groups: [%q]\n    standby: never\n    endpoints: {imds: \"http://%s:%d\", elbv2: \"http://%s:%d\"}\n",
			arn, l.LBAddr(i), fleetIMDSPort, l.LBAddr(i), fleetELBv2Port)
		cfgs[i], _ = writeConfig(t, n, n.Opts.AppName, fmt.Sprintf("  metrics_listen: 127.0.0.1:%d\ndrain:\n  idle: 200ms\nhealth:\n  interval: 100ms\n", 18860+i)+lb)
	}

	t.Run("each node in turn, no client error", func(t *testing.T) {
		load := l.Load(t.Context(), "http://"+fleetRouterAddr+"/", sandbox.LoadOptions{Every: 20 * time.Millisecond})
		time.Sleep(time.Second)
		for i, n := range nodes {
			startDaemon(t, n, cfgs[i])
			pre := patchagent(t, n, "pre", "--config", cfgs[i])
			if pre.code != 0 || !strings.Contains(firstLine(pre.stdout), "out of LB rotation (1 target group registration(s) draining)") {
				t.Fatalf("node %d pre: exit %d\n%s\n%s", i, pre.code, pre.stdout, pre.stderr)
			}
			assertBlocked(t, n)
			if st := states(); st[fleetID(1-i)] != "healthy" {
				t.Fatalf("node %d out, the other is %s", i, st[fleetID(1-i)])
			}
			time.Sleep(500 * time.Millisecond) // the patch; the other node serves
			exit := patchagent(t, n, "exit", "--config", cfgs[i])
			if exit.code != 0 || !strings.Contains(firstLine(exit.stdout), "back in LB rotation (1 target group registration(s) healthy)") {
				t.Fatalf("node %d exit: exit %d\n%s\n%s", i, exit.code, exit.stdout, exit.stderr)
			}
			assertInService(t, n)
		}
		waitStates(allHealthy)
		time.Sleep(time.Second)
		st := load.Stop()
		t.Logf("%d requests through the listener: %d ok, %d refused, %d failed (last error %q)", st.Total, st.OK, st.Refused, st.Failed, st.LastError)
		if st.Refused+st.Failed != 0 || st.OK == 0 {
			t.Errorf("%d refused, %d failed of %d through the listener", st.Refused, st.Failed, st.Total)
		}
		routed, err := sim.Stats(arn)
		if err != nil {
			t.Fatal(err)
		}
		for i := range nodes {
			if routed.Routed[elbsim.Target{ID: fleetID(i), Port: 443}] == 0 {
				t.Errorf("the listener routed nothing to node %d: %v", i, routed.Routed)
			}
		}
	})

	t.Run("capacity gate: the other node unhealthy", func(t *testing.T) {
		ctx := t.Context()
		if err := nodes[1].SetAppEnv(ctx, map[string]string{"HEALTH_MODE": "500"}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := nodes[1].SetAppEnv(context.Background(), nil); err != nil {
				t.Errorf("restoring node 1's app: %v", err)
			}
		})
		waitStates(map[string]string{fleetID(0): "healthy", fleetID(1): "unhealthy"})
		startDaemon(t, nodes[0], cfgs[0])
		deregs := sim.Calls("DeregisterTargets")
		pre := patchagent(t, nodes[0], "pre", "--config", cfgs[0])
		all := pre.stdout + pre.stderr
		if pre.code == 0 || !strings.Contains(firstLine(pre.stdout), "nothing was changed") ||
			!strings.Contains(all, "would leave 0 healthy target(s) of 2 registered, fewer than lb.aws.min_healthy 1 (1)") {
			t.Fatalf("pre with the other node unhealthy: exit %d\n%s", pre.code, all)
		}
		if sim.Calls("DeregisterTargets") != deregs {
			t.Error("the refused pre deregistered")
		}
		assertInService(t, nodes[0])
		if st := states(); st[fleetID(0)] != "healthy" {
			t.Errorf("node 0 is %s after the refused pre", st[fleetID(0)])
		}
	})
}
