package sandbox

import (
	"context"
	"fmt"
	"strings"
)

// Status is what `sandbox status` reports.
type Status struct {
	Prefix             string
	ServerNS, ClientNS bool
	UserExists         bool
	DaemonPID          int      // 0: not running
	App                *AppInfo // nil: unknown to pm2, or the daemon is down
	AppErr             error    // listing the apps failed
	HealthV4, HealthV6 error    // nil: 200
}

// Status inspects the sandbox. It never spawns the pm2 daemon: the app is
// listed only while the daemon runs.
func (n *Node) Status(ctx context.Context) Status {
	s := Status{
		Prefix:     n.Opts.Prefix,
		ServerNS:   NetnsExists(n.ServerNS),
		ClientNS:   NetnsExists(n.ClientNS),
		UserExists: n.userKnown,
		DaemonPID:  n.DaemonPID(),
	}
	if s.DaemonPID != 0 && s.ServerNS {
		info, ok, err := n.App(ctx)
		switch {
		case err != nil:
			s.AppErr = err
		case ok:
			s.App = &info
		}
	}
	if s.ServerNS && s.ClientNS {
		s.HealthV4 = n.Health(ctx, false)
		s.HealthV6 = n.Health(ctx, true)
	} else {
		s.HealthV4 = fmt.Errorf("namespaces missing")
		s.HealthV6 = s.HealthV4
	}
	return s
}

// Healthy reports whether the app is online and passes both probes.
func (s Status) Healthy() bool {
	return s.App != nil && s.App.Status == "online" && s.HealthV4 == nil && s.HealthV6 == nil
}

func (s Status) String() string {
	var b strings.Builder
	yes := func(v bool) string {
		if v {
			return "present"
		}
		return "missing"
	}
	fmt.Fprintf(&b, "netns %s-srv: %s\nnetns %s-cli: %s\n", s.Prefix, yes(s.ServerNS), s.Prefix, yes(s.ClientNS))
	fmt.Fprintf(&b, "app user: %s\n", yes(s.UserExists))
	if s.DaemonPID != 0 {
		fmt.Fprintf(&b, "pm2 daemon: pid %d\n", s.DaemonPID)
	} else {
		b.WriteString("pm2 daemon: not running\n")
	}
	switch {
	case s.AppErr != nil:
		fmt.Fprintf(&b, "app: %v\n", s.AppErr)
	case s.App != nil:
		fmt.Fprintf(&b, "app %s: %s pid %d restarts %d\n", s.App.Name, s.App.Status, s.App.PID, s.App.Restarts)
	default:
		b.WriteString("app: not running under pm2\n")
	}
	for _, h := range []struct {
		fam string
		err error
	}{{"v4", s.HealthV4}, {"v6", s.HealthV6}} {
		if h.err == nil {
			fmt.Fprintf(&b, "health %s: ok\n", h.fam)
		} else {
			fmt.Fprintf(&b, "health %s: %v\n", h.fam, h.err)
		}
	}
	return b.String()
}
