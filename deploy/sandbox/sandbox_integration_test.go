//go:build integration

package sandbox

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"maps"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
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
