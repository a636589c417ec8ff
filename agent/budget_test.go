package agent

import (
	"testing"
	"time"
)

// TestBudgetFollowsTheConfig: each configured bound a phase waits on is
// in its budget, once (twice for exit's health wait: the rollback waits
// again), so an SSM document's timeout checked against Budget tracks an
// edit of the defaults.
func TestBudgetFollowsTheConfig(t *testing.T) {
	base := DefaultConfig()
	tests := []struct {
		phase string
		edit  func(*Config)
		grows time.Duration
	}{
		{"pre", func(c *Config) { c.Drain.Timeout += Duration(time.Minute) }, time.Minute},
		{"pre", func(c *Config) { c.Traffic.LockWait += Duration(time.Second) }, time.Second},
		{"post", func(c *Config) { c.Post.NPM.Timeout += Duration(time.Minute) }, time.Minute},
		{"exit", func(c *Config) { c.Health.Deadline += Duration(time.Minute) }, 2 * time.Minute},
		{"exit", func(c *Config) { c.Traffic.LockWait += Duration(time.Second) }, time.Second},
		// Behind ELBv2: pre waits up to lb.deadline, exit up to
		// lb.aws.healthy_timeout.
		{"pre", func(c *Config) { c.LB.AWS.TargetGroups = TargetGroupList{AutoTargetGroups} }, 2 * time.Minute},
		{"exit", func(c *Config) { c.LB.AWS.TargetGroups = TargetGroupList{AutoTargetGroups} }, 10 * time.Minute},
		{"exit", func(c *Config) { c.LB.HAProxy.Socket = "/run/haproxy.sock" }, 2 * time.Minute},
	}
	for _, tt := range tests {
		before, ok := Budget(tt.phase, base)
		if !ok || before < PhaseLockWait {
			t.Fatalf("%s: budget %s, ok %v: it must hold the phase lock wait", tt.phase, before, ok)
		}
		cfg := base
		tt.edit(&cfg)
		after, _ := Budget(tt.phase, cfg)
		if after-before != tt.grows {
			t.Errorf("%s: budget grew by %s, want %s", tt.phase, after-before, tt.grows)
		}
	}
	if _, ok := Budget("reboot", base); ok {
		t.Error("a budget for an unknown phase")
	}
}
