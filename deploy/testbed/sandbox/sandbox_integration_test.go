//go:build integration

package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if testing.Short() {
		t.Skip("starts pm2 and node: skipped with -short")
	}
}

// testOptions use their own prefix and user so they never touch the demo's "pa".
func testOptions() Options {
	return Options{Prefix: "pa-sbt", AppUser: "pa-sbt-app", Env: map[string]string{"KEEPALIVE_MS": "2000"}}
}

// teardownNow removes any leftover of o, now and after the test.
func teardownNow(t *testing.T, o Options) {
	t.Helper()
	clean := func() {
		n, err := Attach(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := n.Teardown(ctx); err != nil {
			t.Errorf("teardown: %v", err)
		}
	}
	clean()
	t.Cleanup(clean)
}

func get(t *testing.T, n *Node, path string, v6 bool) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL(path, v6), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := n.Client(v6)
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", n.URL(path, v6), err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// userProcs lists live (non-zombie) processes whose real uid is uid.
func userProcs(t *testing.T, uid uint32) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if u, ok := procUID(pid); ok && u == uid && procAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func netnsInode(t *testing.T, path string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func appPID(t *testing.T, n *Node) int {
	t.Helper()
	info, ok, err := n.App(t.Context())
	if err != nil || !ok || info.Status != "online" || info.PID == 0 {
		t.Fatalf("app under pm2: %+v ok=%v err=%v", info, ok, err)
	}
	return info.PID
}

func TestSandboxLifecycle(t *testing.T) {
	needRoot(t)
	o := testOptions()
	teardownNow(t, o)
	// pm2 must not inherit the caller's environment (e.g. systemd's socket).
	t.Setenv("NOTIFY_SOCKET", "/run/patchagent-sandbox-test.sock")

	start := time.Now()
	n, err := Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("setup took %s", time.Since(start))

	for _, v6 := range []bool{false, true} {
		if code, body := get(t, n, "/health-check", v6); code != 200 || body != "ok" {
			t.Fatalf("health v6=%v: %d %q", v6, code, body)
		}
	}
	pid := appPID(t, n)
	if code, body := get(t, n, "/", false); code != 200 || !strings.Contains(body, "pid="+strconv.Itoa(pid)) {
		t.Errorf("GET / = %d %q, want pid=%d", code, body, pid)
	}
	if code, _ := get(t, n, "/nope", true); code != 404 {
		t.Errorf("GET /nope = %d, want 404", code)
	}

	t.Run("runs as the app user in the server netns", func(t *testing.T) {
		daemon := n.DaemonPID()
		if daemon == 0 {
			t.Fatal("no pm2 daemon")
		}
		srvNS := netnsInode(t, filepath.Join(NetnsDir, n.ServerNS))
		for _, p := range []int{daemon, pid} {
			if uid, ok := procUID(p); !ok || uid != n.UID || n.UID == 0 {
				t.Errorf("pid %d runs as uid %d, want %d (%s)", p, uid, n.UID, n.AppUser)
			}
			if ino := netnsInode(t, "/proc/"+strconv.Itoa(p)+"/ns/net"); ino != srvNS {
				t.Errorf("pid %d is not in netns %s", p, n.ServerNS)
			}
		}
		env, err := os.ReadFile("/proc/" + strconv.Itoa(daemon) + "/environ")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(env), "NOTIFY_SOCKET") {
			t.Error("the pm2 daemon inherited NOTIFY_SOCKET")
		}
		if foreign, err := n.ForeignFiles(); err != nil || len(foreign) > 0 {
			t.Errorf("files in PM2Home not owned by the app user: %v %v", foreign, err)
		}
	})

	t.Run("setup again is idempotent", func(t *testing.T) {
		before, _, _ := n.App(t.Context())
		n2, err := Setup(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		after := appPID(t, n2)
		info, _, _ := n2.App(t.Context())
		if after != pid || info.Restarts != before.Restarts {
			t.Errorf("second Setup restarted the app: pid %d→%d restarts %d→%d", pid, after, before.Restarts, info.Restarts)
		}
	})

	t.Run("slow", func(t *testing.T) {
		t0 := time.Now()
		code, _ := get(t, n, "/slow?ms=300", false)
		if d := time.Since(t0); code != 200 || d < 300*time.Millisecond {
			t.Errorf("/slow?ms=300: %d after %s", code, d)
		}
	})

	t.Run("load", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		l := n.Load(ctx, LoadOptions{Workers: 4, Path: "/", KeepAlive: true, V6: true})
		<-ctx.Done()
		s := l.Stop()
		t.Log(s)
		if s.OK == 0 || s.Failed != 0 || s.Refused != 0 || s.Total != s.OK {
			t.Errorf("load: %s", s)
		}
		if len(s.Timeline) < 9 || s.Timeline[len(s.Timeline)/2].OK == 0 {
			t.Errorf("timeline: %v", s.Timeline)
		}
	})

	t.Run("quiesce lets in-flight requests finish", func(t *testing.T) {
		l := n.Load(t.Context(), LoadOptions{Workers: 3, Path: "/slow?ms=400", KeepAlive: true})
		time.Sleep(200 * time.Millisecond)
		l.Quiesce()
		time.Sleep(700 * time.Millisecond)
		before := l.Stats()
		time.Sleep(500 * time.Millisecond)
		s := l.Stop()
		// Each worker's request in flight at Quiesce completed and counted;
		// none started after.
		if s.OK != 3 || s.Failed != 0 || s.Total != before.Total {
			t.Errorf("quiesce: %s (before %s)", s, before)
		}
	})

	// Without a firewall block, a stop races with connections already in the
	// listen backlog: closing the listener resets them (at most one per
	// worker). Everything after the close must be refused, not dropped.
	t.Run("stop under load is refused", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		l := n.Load(ctx, LoadOptions{Workers: 4, Path: "/slow?ms=100"})
		time.Sleep(300 * time.Millisecond)
		if _, err := n.PM2(t.Context(), "stop", n.Opts.AppName); err != nil {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
		s := l.Stop()
		t.Log(s, s.TimelineString())
		if s.OK == 0 || s.Refused == 0 || s.Failed > 4 || s.BadStatus != 0 {
			t.Errorf("stop under load: %s", s)
		}
		if err := n.StartApp(t.Context()); err != nil {
			t.Fatal(err)
		}
		pid = appPID(t, n)
	})

	t.Run("KillPM2 then StartApp", func(t *testing.T) {
		daemon := n.DaemonPID()
		if err := n.KillPM2(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n.DaemonPID() != 0 || procAlive(daemon) || procAlive(pid) {
			t.Fatalf("after KillPM2: daemon %d alive=%v, app %d alive=%v", daemon, procAlive(daemon), pid, procAlive(pid))
		}
		if err := n.Health(t.Context(), false); err == nil || !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("health after KillPM2 = %v, want connection refused", err)
		}
		if err := n.KillPM2(t.Context()); err != nil {
			t.Errorf("KillPM2 with no daemon: %v", err)
		}
		if err := n.StartApp(t.Context()); err != nil {
			t.Fatal(err)
		}
		newPID := appPID(t, n)
		if newPID == pid {
			t.Errorf("app pid %d unchanged after KillPM2+StartApp", pid)
		}
		if uid, _ := procUID(n.DaemonPID()); uid != n.UID {
			t.Errorf("new daemon runs as uid %d, want %d", uid, n.UID)
		}
		if err := errors.Join(n.Health(t.Context(), false), n.Health(t.Context(), true)); err != nil {
			t.Error(err)
		}
	})

	t.Run("teardown", func(t *testing.T) {
		if err := n.Teardown(t.Context()); err != nil {
			t.Fatal(err)
		}
		for _, ns := range []string{n.ServerNS, n.ClientNS} {
			if NetnsExists(ns) {
				t.Errorf("netns %s still exists", ns)
			}
		}
		if left := userProcs(t, n.UID); len(left) != 0 {
			t.Errorf("processes of %s left: %v", n.AppUser, left)
		}
		if err := n.Teardown(t.Context()); err != nil {
			t.Errorf("second teardown: %v", err)
		}
		// The user and the pm2 install are kept as a cache.
		if _, err := user.Lookup(n.AppUser); err != nil {
			t.Errorf("user removed: %v", err)
		}
		if _, err := os.Stat(n.PM2Bin); err != nil {
			t.Errorf("pm2 install removed: %v", err)
		}
	})
}

func TestTeardownHalfBuilt(t *testing.T) {
	needRoot(t)
	o := testOptions()
	teardownNow(t, o)
	n, err := Attach(o)
	if err != nil {
		t.Fatal(err)
	}
	// Only the server namespace exists.
	if err := CreateNetns(n.ServerNS); err != nil {
		t.Fatal(err)
	}
	if err := n.Teardown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if NetnsExists(n.ServerNS) {
		t.Error("server netns left")
	}
}

func TestSetupFailureCleanup(t *testing.T) {
	needRoot(t)

	t.Run("invalid options change nothing", func(t *testing.T) {
		o := Options{Prefix: "pa-sbv", AppUser: "root"}
		_, err := Setup(t.Context(), o)
		if err == nil || !strings.Contains(err.Error(), "app_user") {
			t.Fatalf("Setup(AppUser root) = %v, want validation error", err)
		}
		if NetnsExists("pa-sbv-srv") || NetnsExists("pa-sbv-cli") {
			t.Error("namespaces created despite invalid options")
		}
		if _, err := os.Stat("/var/lib/patchagent-sandbox/pa-sbv"); err == nil {
			t.Error("state dir created despite invalid options")
		}
	})

	for _, failAt := range []string{"network", "app"} {
		t.Run("fail after "+failAt, func(t *testing.T) {
			o := Options{Prefix: "pa-sbf", AppUser: "pa-sbf-app"}
			teardownNow(t, o)
			if u, err := user.Lookup(o.AppUser); err == nil {
				n, _ := Attach(o)
				if err := n.deleteUser(t.Context()); err != nil {
					t.Fatalf("removing leftover user %s: %v", u.Username, err)
				}
			}
			dir := o.WithDefaults().Dir
			if err := os.RemoveAll(dir); err != nil {
				t.Fatal(err)
			}
			var uid uint32
			daemon := 0
			injected := errors.New("injected failure")
			o.afterStep = func(step string) error {
				if step != failAt {
					return nil
				}
				n, _ := Attach(o)
				uid, daemon = n.UID, n.DaemonPID()
				return injected
			}
			_, err := Setup(t.Context(), o)
			if !errors.Is(err, injected) {
				t.Fatalf("Setup = %v, want the injected failure", err)
			}
			if strings.Contains(err.Error(), "undoing") {
				t.Errorf("undo reported errors: %v", err)
			}
			if NetnsExists("pa-sbf-srv") || NetnsExists("pa-sbf-cli") {
				t.Error("namespaces left after failed Setup")
			}
			if _, err := user.Lookup(o.AppUser); err == nil {
				t.Error("user created by the failed Setup was kept")
			}
			if _, err := os.Stat(dir); err == nil {
				t.Error("state dir created by the failed Setup was kept")
			}
			if failAt == "app" {
				if uid == 0 || daemon == 0 {
					t.Fatalf("hook saw uid %d daemon %d: the app step had not run", uid, daemon)
				}
				if procAlive(daemon) {
					t.Errorf("pm2 daemon %d still running", daemon)
				}
				if left := userProcs(t, uid); len(left) != 0 {
					t.Errorf("processes of uid %d left: %v", uid, left)
				}
			}
		})
	}
}

// once makes one fresh-connection GET of url from the client netns (no
// redirects followed) with a 1 s timeout.
func once(t *testing.T, n *Node, url string, cfg *tls.Config) Attempt {
	t.Helper()
	return n.attempt(t.Context(), url, strings.HasPrefix(url, "http://[") || strings.HasPrefix(url, "https://["),
		ProbeOptions{Timeout: time.Second, TLS: cfg})
}

// waitAttempt repeats once until ok accepts the attempt, for at most 10 s.
func waitAttempt(t *testing.T, n *Node, url string, cfg *tls.Config, what string, ok func(Attempt) bool) Attempt {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		a := once(t, n, url, cfg)
		if ok(a) {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no attempt matched within 10s; last %+v", what, a)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func setAppEnv(t *testing.T, n *Node, env map[string]string) {
	t.Helper()
	if err := n.SetAppEnv(t.Context(), env); err != nil {
		t.Fatal(err)
	}
}

// iptablesBoth runs iptables and ip6tables with args in the server netns.
func iptablesBoth(t *testing.T, n *Node, args ...string) {
	t.Helper()
	for _, bin := range []string{"iptables", "ip6tables"} {
		if out, err := NetnsCommand(n.ServerNS, append([]string{bin, "-w", "5"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v in %s: %v: %s", bin, args, n.ServerNS, err, out)
		}
	}
}

func TestSandboxBadApps(t *testing.T) {
	needRoot(t)
	o := testOptions()
	teardownNow(t, o)
	n, err := Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	base := maps.Clone(o.Env)
	health := n.URL("/health-check", false)

	t.Run("health modes", func(t *testing.T) {
		setAppEnv(t, n, map[string]string{"HEALTH_MODE": "500"})
		waitAttempt(t, n, health, nil, "500", func(a Attempt) bool { return a.Status == 500 })
		setAppEnv(t, n, map[string]string{"HEALTH_MODE": "redirect"})
		waitAttempt(t, n, n.URL("/health-check", true), nil, "redirect", func(a Attempt) bool { return a.Status == 302 })
		c := n.Client(false)
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		c.Timeout = time.Second
		if resp, err := c.Get(health); err != nil || resp.StatusCode != 302 || resp.Header.Get("Location") != "/elsewhere" {
			t.Errorf("redirect: %v %v", resp, err)
		} else {
			resp.Body.Close()
		}
		c.CloseIdleConnections()
		setAppEnv(t, n, map[string]string{"HEALTH_MODE": "hang"})
		a := waitAttempt(t, n, health, nil, "hang", func(a Attempt) bool { return a.Connected && a.Status == 0 && !a.Refused })
		if !strings.Contains(a.Err, "deadline exceeded") {
			t.Errorf("hang: %+v, want a timeout", a)
		}
		// The root / still answers: only the health check hangs.
		if a := once(t, n, n.URL("/", false), nil); a.Status != 200 {
			t.Errorf("GET / with HEALTH_MODE=hang: %+v", a)
		}
		setAppEnv(t, n, map[string]string{"FAIL_HEALTH": "1"})
		waitAttempt(t, n, health, nil, "FAIL_HEALTH", func(a Attempt) bool { return a.Status == 500 })
		setAppEnv(t, n, base)
		if err := n.WaitHealthy(t.Context(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		if n.Opts.Env["HEALTH_MODE"] != "" || n.Opts.Env["KEEPALIVE_MS"] != "2000" {
			t.Errorf("Opts.Env = %v", n.Opts.Env)
		}
	})

	t.Run("start delay", func(t *testing.T) {
		p := n.Probe(t.Context(), ProbeOptions{})
		setAppEnv(t, n, map[string]string{"START_DELAY_MS": "1500"})
		returned := time.Now()
		if a := once(t, n, health, nil); !a.Refused {
			t.Errorf("right after SetAppEnv: %+v, want refused", a)
		}
		if err := n.WaitHealthy(t.Context(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("healthy %s after SetAppEnv returned", time.Since(returned).Round(time.Millisecond))
		// Let the probe see the app back too (its attempts run on their own
		// clock, and a loaded machine stretches them).
		for until := time.Now().Add(5 * time.Second); time.Now().Before(until); time.Sleep(20 * time.Millisecond) {
			if as := p.Attempts(); len(as) > 0 && as[len(as)-1].OK() {
				break
			}
		}
		// The probe saw: 200 (old app), then only refusals for at least the
		// delay, then 200.
		var firstRefused, lastRefused, firstOK time.Time
		for _, a := range p.Stop() {
			switch {
			case a.Refused && firstOK.IsZero():
				if firstRefused.IsZero() {
					firstRefused = a.At
				}
				lastRefused = a.At
			case a.OK() && !firstRefused.IsZero() && firstOK.IsZero():
				firstOK = a.At
			case !firstRefused.IsZero() && firstOK.IsZero():
				t.Errorf("attempt during the restart neither refused nor 200: %+v", a)
			}
		}
		if firstOK.IsZero() || lastRefused.Sub(firstRefused) < 1400*time.Millisecond {
			t.Errorf("refused from %s to %s, first 200 at %s: want ≥1.5s refused", firstRefused, lastRefused, firstOK)
		}
		// AppStartTime (pm2 stop, pm2 start, the first 200) sees the delay.
		d, err := n.AppStartTime(t.Context(), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if d < 1500*time.Millisecond {
			t.Errorf("AppStartTime = %s with START_DELAY_MS 1500", d)
		}
		if info, ok, err := n.App(t.Context()); err != nil || !ok || info.Status != "online" {
			t.Errorf("app after AppStartTime: %+v %v %v", info, ok, err)
		}
	})

	t.Run("crash loop", func(t *testing.T) {
		setAppEnv(t, n, map[string]string{"CRASH_AFTER_MS": "1500"})
		deadline := time.Now().Add(8 * time.Second)
		online, first, last := false, -1, -1
		for time.Now().Before(deadline) && (!online || last-first < 2) {
			info, ok, err := n.App(t.Context())
			if err != nil || !ok {
				t.Fatalf("app: %+v %v %v", info, ok, err)
			}
			if first < 0 {
				first = info.Restarts
			}
			last = info.Restarts
			online = online || info.Status == "online"
			if info.Status == "errored" {
				t.Fatalf("app errored: %+v", info)
			}
		}
		if !online || last-first < 2 {
			t.Errorf("crash loop: online seen %v, restarts %d→%d", online, first, last)
		}
	})

	t.Run("tls", func(t *testing.T) {
		cert, err := n.WriteTLSCert("localhost", "127.0.0.1", "::1", n.ServerV4.String(), n.ServerV6.String())
		if err != nil {
			t.Fatal(err)
		}
		env := n.TLSEnv(cert)
		env["KEEPALIVE_MS"] = "2000"
		setAppEnv(t, n, env)
		if err := n.WaitHealthy(t.Context(), 10*time.Second); err != nil { // over HTTPS
			t.Fatal(err)
		}
		for _, v6 := range []bool{false, true} {
			c, err := n.TLSClient(v6, cert)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
			code, err := Get(ctx, c, n.HTTPSURL("/health-check", v6))
			cancel()
			c.CloseIdleConnections()
			if err != nil || code != 200 {
				t.Errorf("HTTPS v6=%v with the CA: %d %v", v6, code, err)
			}
		}
		a := once(t, n, n.HTTPSURL("/health-check", false), &tls.Config{MinVersion: tls.VersionTLS12})
		var unknown x509.UnknownAuthorityError
		if a.Status != 0 || !strings.Contains(a.Err, "x509") {
			t.Errorf("HTTPS without the CA: %+v, want an x509 error", a)
		}
		c := n.Client(false)
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if _, err := Get(ctx, c, n.HTTPSURL("/health-check", false)); !errors.As(err, &unknown) {
			t.Errorf("HTTPS with system roots: %v, want x509.UnknownAuthorityError", err)
		}
		if st, err := os.Stat(env["TLS_KEY"]); err != nil || st.Mode().Perm() != 0o600 || st.Sys().(*syscall.Stat_t).Uid != n.UID {
			t.Errorf("key file: %v %v", st, err)
		}
		setAppEnv(t, n, base)
		if err := n.WaitHealthy(t.Context(), 10*time.Second); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("probe sees the block", func(t *testing.T) {
		p := n.Probe(t.Context(), ProbeOptions{V6: true})
		time.Sleep(300 * time.Millisecond)
		t0 := time.Now()
		rule := []string{"INPUT", "-p", "tcp", "--dport", portString(n.Opts.Port), "--syn", "-j", "REJECT", "--reject-with", "tcp-reset"}
		iptablesBoth(t, n, append([]string{"-I"}, rule...)...)
		t1 := time.Now()
		time.Sleep(300 * time.Millisecond)
		t2 := time.Now()
		iptablesBoth(t, n, append([]string{"-D"}, rule...)...)
		t3 := time.Now()
		time.Sleep(300 * time.Millisecond)
		var counts [3]int
		for _, a := range p.Stop() {
			switch {
			case a.At.Before(t0):
				counts[0]++
				if !a.OK() {
					t.Errorf("before the block: %+v", a)
				}
			case a.At.After(t1) && a.At.Before(t2):
				counts[1]++
				if !a.Refused || a.Connected {
					t.Errorf("during the block: %+v", a)
				}
			case a.At.After(t3):
				counts[2]++
				if !a.OK() {
					t.Errorf("after the block: %+v", a)
				}
			}
		}
		t.Logf("attempts before/during/after: %v", counts)
		if counts[0] < 4 || counts[1] < 4 || counts[2] < 4 {
			t.Errorf("too few attempts before/during/after the block: %v", counts)
		}
	})

	t.Run("reboot", func(t *testing.T) {
		iptablesBoth(t, n, "-A", "INPUT", "-p", "tcp", "--dport", "9", "-j", "DROP")
		iptablesBoth(t, n, "-N", "PA-SBT-TEST")
		oldBoot, err := n.BootID()
		if err != nil || len(oldBoot) != 36 {
			t.Fatalf("boot id %q: %v", oldBoot, err)
		}
		oldDaemon, oldApp := n.DaemonPID(), appPID(t, n)
		var seen struct {
			called          bool
			daemon, app     bool
			rules, bootSame string
		}
		err = n.Reboot(t.Context(), func() error {
			seen.called = true
			daemons, _ := n.PM2Daemons()
			seen.daemon = n.DaemonPID() != 0 || len(daemons) > 0
			seen.app = procAlive(oldApp)
			for _, v6 := range []bool{false, true} {
				out, err := n.ServerFirewall(t.Context(), v6)
				if err != nil {
					return err
				}
				seen.rules += out
			}
			if id, _ := n.BootID(); id == oldBoot {
				seen.bootSame = id
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if !seen.called || seen.daemon || seen.app || seen.bootSame != "" {
			t.Errorf("before pm2: %+v, want no daemon, no app, a new boot id", seen)
		}
		want := "-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"
		if seen.rules != want+want {
			t.Errorf("before pm2, firewall of the server ns:\n%s\nwant only the policies", seen.rules)
		}
		if id, _ := n.BootID(); id == oldBoot || len(id) != 36 {
			t.Errorf("boot id %q after reboot (was %q)", id, oldBoot)
		}
		if err := n.WaitHealthy(t.Context(), 20*time.Second); err != nil {
			t.Fatal(err)
		}
		info, ok, err := n.App(t.Context())
		if err != nil || !ok || info.Status != "online" || info.PID == oldApp {
			t.Errorf("app after reboot: %+v ok=%v err=%v (old pid %d)", info, ok, err, oldApp)
		}
		daemon := n.DaemonPID()
		if uid, _ := procUID(daemon); daemon == 0 || daemon == oldDaemon || uid != n.UID {
			t.Errorf("daemon after reboot: pid %d uid %d (old %d)", daemon, uid, oldDaemon)
		}
		if foreign, err := n.ForeignFiles(); err != nil || len(foreign) > 0 {
			t.Errorf("files in PM2Home not owned by the app user: %v %v", foreign, err)
		}
		wantErr := errors.New("injected")
		if err := n.Reboot(t.Context(), func() error { return wantErr }); !errors.Is(err, wantErr) {
			t.Errorf("Reboot with a failing beforePM2 = %v", err)
		}
		if n.DaemonPID() != 0 {
			t.Error("pm2 started although beforePM2 failed")
		}
	})
}

// npmTestOptions have their own prefix and user: the npm app changes AppDir.
func npmTestOptions() Options {
	return Options{Prefix: "pa-sbn", AppUser: "pa-sbn-app", Env: map[string]string{"KEEPALIVE_MS": "2000"}}
}

func publish(t *testing.T, r *Registry, name, version, index string) {
	t.Helper()
	if err := r.Publish(t.Context(), Package{Name: name, Version: version, Files: map[string]string{"index.js": index}}); err != nil {
		t.Fatal(err)
	}
}

// packument GETs /<name> from inside the server netns.
func packument(t *testing.T, r *Registry, name string) (versions []string, latest string) {
	t.Helper()
	code, body, err := r.Get(t.Context(), "/"+name)
	if err != nil || code != 200 {
		t.Fatalf("GET /%s: %d %v %s", name, code, err, body)
	}
	var doc struct {
		Versions map[string]struct {
			Dist struct{ Tarball string } `json:"dist"`
		} `json:"versions"`
		DistTags map[string]string `json:"dist-tags"`
	}
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	for v, m := range doc.Versions {
		versions = append(versions, v)
		if !strings.HasPrefix(m.Dist.Tarball, r.URL+"/"+name+"/-/") {
			t.Errorf("%s@%s tarball %q", name, v, m.Dist.Tarball)
		}
	}
	slices.Sort(versions)
	return versions, doc.DistTags["latest"]
}

func appDeps(t *testing.T, n *Node) map[string]string {
	t.Helper()
	code, body := get(t, n, "/deps", false)
	var m map[string]string
	if code != 200 || json.Unmarshal([]byte(body), &m) != nil {
		t.Fatalf("GET /deps: %d %q", code, body)
	}
	return m
}

func ownedByAppUser(t *testing.T, n *Node) {
	t.Helper()
	owners, err := TreeOwners(n.AppDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(owners) != 1 || owners[n.UID] == 0 {
		t.Errorf("owners under %s: %v, want only uid %d", n.AppDir, owners, n.UID)
	}
}

func TestSandboxNPM(t *testing.T) {
	needRoot(t)
	o := npmTestOptions()
	teardownNow(t, o)
	vdir := o.WithDefaults().VerdaccioDir

	t.Run("EnsureVerdaccio twice", func(t *testing.T) {
		t0 := time.Now()
		bin, err := EnsureVerdaccio(t.Context(), vdir)
		if err != nil {
			t.Fatal(err)
		}
		first := time.Since(t0)
		t0 = time.Now()
		bin2, err := EnsureVerdaccio(t.Context(), "")
		second := time.Since(t0)
		if err != nil || bin2 != bin || bin != VerdaccioBinIn(DefaultVerdaccioDir) {
			t.Fatalf("second EnsureVerdaccio = %q %v, want %q", bin2, err, bin)
		}
		t.Logf("EnsureVerdaccio: %s, then %s", first, second)
		if second > time.Second {
			t.Errorf("second EnsureVerdaccio took %s: not a no-op", second)
		}
	})

	n, err := Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	r, err := n.StartRegistry(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("StartRegistry took %s", time.Since(t0))
	t.Cleanup(func() { _ = r.Stop() })

	t.Run("verdaccio runs as the app user in the server netns, on its loopback only", func(t *testing.T) {
		pid := r.PID()
		if uid, ok := procUID(pid); !ok || uid != n.UID {
			t.Errorf("verdaccio pid %d runs as uid %d, want %d", pid, uid, n.UID)
		}
		if netnsInode(t, "/proc/"+strconv.Itoa(pid)+"/ns/net") != netnsInode(t, filepath.Join(NetnsDir, n.ServerNS)) {
			t.Errorf("verdaccio is not in netns %s", n.ServerNS)
		}
		if r.URL != "http://127.0.0.1:4873" {
			t.Errorf("URL %q", r.URL)
		}
		a := once(t, n, "http://"+net.JoinHostPort(n.ServerV4.String(), "4873")+"/-/ping", nil)
		if !a.Refused {
			t.Errorf("verdaccio reachable from the client netns: %+v", a)
		}
	})

	t.Run("no uplink", func(t *testing.T) {
		t0 := time.Now()
		code, _, err := r.Get(t.Context(), "/left-pad")
		if err != nil || code != 404 || time.Since(t0) > 2*time.Second {
			t.Errorf("GET /left-pad: %d %v after %s, want a quick 404", code, err, time.Since(t0))
		}
	})

	publish(t, r, "dep-a", "1.0.0", "module.exports = 'dep-a 1.0.0';\n")
	t.Run("publishing a version again fails", func(t *testing.T) {
		err := r.Publish(t.Context(), Package{Name: "dep-a", Version: "1.0.0", Files: map[string]string{"index.js": "x"}})
		if !errors.Is(err, ErrVersionExists) {
			t.Errorf("second publish of dep-a@1.0.0 = %v, want ErrVersionExists", err)
		}
		for _, p := range []Package{{Name: "Dep", Version: "1.0.0"}, {Name: "dep-b", Version: "1.0"},
			{Name: "dep-b", Version: "1.0.0", Files: map[string]string{"../x": ""}}} {
			if err := r.Publish(t.Context(), p); err == nil {
				t.Errorf("Publish(%+v) succeeded", p)
			}
		}
	})

	t.Run("npm app", func(t *testing.T) {
		t0 := time.Now()
		if err := n.SetupNPMApp(t.Context(), r.URL, map[string]string{"dep-a": "^1.0.0"}); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetupNPMApp took %s", time.Since(t0))
		if v, err := n.InstalledVersion("dep-a"); err != nil || v != "1.0.0" {
			t.Errorf("InstalledVersion(dep-a) = %q %v", v, err)
		}
		for _, f := range []string{"package-lock.json", ".npmrc", "node_modules/dep-a/index.js"} {
			if _, err := os.Stat(filepath.Join(n.AppDir, f)); err != nil {
				t.Error(err)
			}
		}
		ownedByAppUser(t, n)
		if d := appDeps(t, n); d["dep-a"] != "dep-a 1.0.0" {
			t.Errorf("/deps = %v", d)
		}
	})

	t.Run("later versions; latest only moves forward", func(t *testing.T) {
		publish(t, r, "dep-a", "1.0.1", "module.exports = 'dep-a 1.0.1';\n")
		publish(t, r, "dep-a", "2.0.0", "module.exports = 'dep-a 2.0.0';\n")
		publish(t, r, "dep-a", "1.0.2", "throw new Error('dep-a 1.0.2 is broken');\n")
		versions, latest := packument(t, r, "dep-a")
		if !slices.Equal(versions, []string{"1.0.0", "1.0.1", "1.0.2", "2.0.0"}) || latest != "2.0.0" {
			t.Errorf("dep-a: versions %v latest %q", versions, latest)
		}
	})

	t.Run("a dependency that throws crashes the app", func(t *testing.T) {
		before, err := TreeHash(n.AppDir)
		if err != nil {
			t.Fatal(err)
		}
		if again, _ := TreeHash(n.AppDir); again != before {
			t.Fatal("TreeHash of an unchanged AppDir differs")
		}
		if _, err := n.NPM(t.Context(), "update", "--no-audit", "--no-fund"); err != nil {
			t.Fatal(err)
		}
		if v, _ := n.InstalledVersion("dep-a"); v != "1.0.2" {
			t.Errorf("after npm update dep-a is %q, want 1.0.2", v)
		}
		if after, _ := TreeHash(n.AppDir); after == before {
			t.Error("TreeHash unchanged by npm update")
		}
		ownedByAppUser(t, n)
		setAppEnv(t, n, n.Opts.Env)
		time.Sleep(1500 * time.Millisecond)
		if err := n.Health(t.Context(), false); err == nil {
			t.Error("app healthy with a dependency that throws at require")
		}
		if info, _, _ := n.App(t.Context()); info.Restarts == 0 && info.Status == "online" {
			t.Errorf("app %+v: no crash seen", info)
		}
	})

	t.Run("bench packages", func(t *testing.T) {
		t0 := time.Now()
		deps, err := r.PublishBench(t.Context(), 20, 32<<10, "1.0.0", "1.0.1")
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("PublishBench 20×2×32KiB took %s", time.Since(t0))
		if len(deps) != 20 || deps["bench-pkg-19"] != "^1.0.0" {
			t.Fatalf("deps = %v", deps)
		}
		if _, latest := packument(t, r, "bench-pkg-7"); latest != "1.0.1" {
			t.Errorf("bench-pkg-7 latest %q", latest)
		}
		deps["dep-a"] = "1.0.1"
		if err := n.SetupNPMApp(t.Context(), r.URL, deps); err != nil {
			t.Fatal(err)
		}
		got := appDeps(t, n)
		if len(got) != 21 || got["bench-pkg-0"] != "1.0.1" || got["dep-a"] != "dep-a 1.0.1" {
			t.Errorf("/deps = %v", got)
		}
		st, err := os.Stat(filepath.Join(n.AppDir, "node_modules", "bench-pkg-3", "data.bin"))
		if err != nil || st.Size() != 32<<10 {
			t.Errorf("bench data.bin: %v %v", st, err)
		}
		ownedByAppUser(t, n)
	})

	t.Run("hanging registry", func(t *testing.T) {
		h, err := n.StartHangingRegistry(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Stop() })
		if h.URL != "http://127.0.0.1:4874" {
			t.Errorf("URL %q", h.URL)
		}
		c := n.ServerClient()
		c.Timeout = 500 * time.Millisecond
		t0 := time.Now()
		_, err = c.Get(h.URL + "/dep-a")
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() || time.Since(t0) < 450*time.Millisecond {
			t.Errorf("GET from the hanging registry: %v after %s, want a timeout", err, time.Since(t0))
		}
		c.CloseIdleConnections()
		if err := h.Publish(t.Context(), Package{Name: "x", Version: "1.0.0"}); err == nil {
			t.Error("Publish to the hanging registry succeeded")
		}
		if err := h.Stop(); err != nil {
			t.Fatal(err)
		}
		err = n.InServer(func() error {
			conn, err := net.DialTimeout("tcp4", "127.0.0.1:4874", time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("connect after Stop: %v, want refused", err)
		}
	})

	t.Run("stop and teardown", func(t *testing.T) {
		pid := r.PID()
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		if procAlive(pid) {
			t.Errorf("verdaccio %d alive after Stop", pid)
		}
		if err := r.Stop(); err != nil {
			t.Errorf("second Stop: %v", err)
		}
		// A registry of this Node and one found only by its pid file.
		r2, err := n.StartRegistry(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if code, _, err := r2.Get(t.Context(), "/dep-a"); err != nil || code != 404 {
			t.Errorf("restarted registry is not fresh: GET /dep-a %d %v", code, err)
		}
		h, err := n.StartHangingRegistry(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Teardown(t.Context()); err != nil {
			t.Fatal(err)
		}
		if procAlive(r2.PID()) {
			t.Errorf("verdaccio %d alive after Teardown", r2.PID())
		}
		if err := errors.Join(r2.Stop(), h.Stop()); err != nil {
			t.Errorf("Stop after Teardown: %v", err)
		}
		n, err = Setup(t.Context(), o)
		if err != nil {
			t.Fatal(err)
		}
		r3, err := n.StartRegistry(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		other, err := Attach(o)
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Teardown(t.Context()); err != nil {
			t.Fatal(err)
		}
		if procAlive(r3.PID()) {
			t.Errorf("verdaccio %d alive after Teardown by another Node", r3.PID())
		}
		if err := r3.Stop(); err != nil {
			t.Errorf("Stop after Teardown: %v", err)
		}
	})
}

// TestPublishBenchFull publishes the benchmark tree (300 packages × 2
// versions × 330 KB) and installs it; set PATCHAGENT_SANDBOX_BENCH=1.
func TestPublishBenchFull(t *testing.T) {
	needRoot(t)
	if os.Getenv("PATCHAGENT_SANDBOX_BENCH") == "" {
		t.Skip("set PATCHAGENT_SANDBOX_BENCH=1")
	}
	o := npmTestOptions()
	teardownNow(t, o)
	n, err := Setup(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	r, err := n.StartRegistry(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	deps, err := r.PublishBench(t.Context(), 300, 330_000, "1.0.0", "1.0.1")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("PublishBench 300×2×330KB: %s", time.Since(t0))
	t0 = time.Now()
	if err := n.SetupNPMApp(t.Context(), r.URL, deps); err != nil {
		t.Fatal(err)
	}
	t.Logf("SetupNPMApp (npm install of 300 packages, restart): %s", time.Since(t0))
	t0 = time.Now()
	h, err := TreeHash(n.AppDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("TreeHash %s: %s", h[:12], time.Since(t0))
	if got := appDeps(t, n); len(got) != 300 || got["bench-pkg-299"] != "1.0.1" {
		t.Errorf("/deps has %d entries, bench-pkg-299=%q", len(got), got["bench-pkg-299"])
	}
}
