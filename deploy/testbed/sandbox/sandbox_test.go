package sandbox

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/patchagent/patchagent/agent"
)

func TestWithDefaults(t *testing.T) {
	got := Options{}.WithDefaults()
	want := Options{
		Prefix:  "pa",
		Dir:     "/var/lib/patchagent-sandbox/pa",
		AppUser: "pa-app",
		AppName: "sample-app",
		Port:    443,
		PM2Dir:  "/var/lib/patchagent-sandbox/pm2",

		VerdaccioDir: "/var/lib/patchagent-sandbox/verdaccio",
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(Options{})); diff != "" {
		t.Errorf("defaults (-want +got):\n%s", diff)
	}
	// Dir follows Prefix; explicit values are kept.
	got = Options{Prefix: "x1", Port: 8443, AppName: "web"}.WithDefaults()
	if got.Dir != "/var/lib/patchagent-sandbox/x1" || got.Port != 8443 || got.AppName != "web" {
		t.Errorf("WithDefaults changed explicit fields: %+v", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*Options)
		wantErr string // substring; "" means valid
	}{
		{"defaults", func(*Options) {}, ""},
		{"port 0", func(o *Options) { o.Port = 0 }, "port:"},
		{"prefix too long for veth", func(o *Options) { o.Prefix = "abcdefghijklm" }, "prefix:"},
		{"prefix 12 ok", func(o *Options) { o.Prefix = "abcdefghijkl" }, ""},
		{"prefix slash", func(o *Options) { o.Prefix = "a/b" }, "prefix:"},
		{"prefix upper", func(o *Options) { o.Prefix = "PA" }, "prefix:"},
		{"relative dir", func(o *Options) { o.Dir = "var/x" }, "dir:"},
		{"root dir", func(o *Options) { o.Dir = "/" }, "dir:"},
		{"root user", func(o *Options) { o.AppUser = "root" }, "app_user:"},
		{"bad user", func(o *Options) { o.AppUser = "Pa App" }, "app_user:"},
		{"numeric app name (pm2 id)", func(o *Options) { o.AppName = "123" }, "app_name:"},
		{"app name with space", func(o *Options) { o.AppName = "a b" }, "app_name:"},
		{"relative pm2 dir", func(o *Options) { o.PM2Dir = "pm2" }, "pm2_dir:"},
		{"relative verdaccio dir", func(o *Options) { o.VerdaccioDir = "v" }, "verdaccio_dir:"},
		{"reserved env", func(o *Options) { o.Env = map[string]string{"PORT": "1"} }, "env:"},
		{"bad env key", func(o *Options) { o.Env = map[string]string{"A=B": "1"} }, "env:"},
		{"good env", func(o *Options) { o.Env = map[string]string{"KEEPALIVE_MS": "100"} }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{}.WithDefaults()
			tt.mod(&o)
			err := o.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
	// Every problem is reported, not just the first.
	err := Options{Prefix: "BAD", Dir: "rel", AppUser: "root", AppName: "1", PM2Dir: "x"}.Validate()
	for _, key := range []string{"prefix:", "dir:", "app_user:", "app_name:", "port:", "pm2_dir:"} {
		if err == nil || !strings.Contains(err.Error(), key) {
			t.Errorf("Validate() = %v, missing %s", err, key)
		}
	}
}

func TestAttachNames(t *testing.T) {
	n, err := Attach(Options{Prefix: "pa-u", Dir: "/tmp/pa-u-state", AppUser: "pa-no-such-user-x"})
	if err != nil {
		t.Fatal(err)
	}
	got := []string{n.ServerNS, n.ClientNS, n.srvLink, n.cliLink, n.Home, n.PM2Home, n.AppDir, n.PM2Bin}
	want := []string{"pa-u-srv", "pa-u-cli", "pa-u-s", "pa-u-c", "/tmp/pa-u-state/home", "/tmp/pa-u-state/home/.pm2",
		"/tmp/pa-u-state/app", "/var/lib/patchagent-sandbox/pm2/node_modules/pm2/bin/pm2"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
	if n.UID != 0 || n.userKnown || n.DaemonPID() != 0 {
		t.Errorf("missing user: UID=%d known=%v daemon=%d", n.UID, n.userKnown, n.DaemonPID())
	}
	// Never run pm2 without a real unprivileged user (it would spawn a root daemon).
	if _, err := n.PM2(t.Context(), "ping"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("PM2 without user = %v, want refusal", err)
	}
	if _, err := Attach(Options{AppUser: "root"}); err == nil {
		t.Error("Attach accepted AppUser root")
	}
}

func TestURL(t *testing.T) {
	n, err := Attach(Options{Port: 8443})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		v6   bool
		want string
	}{
		{"/health-check", false, "http://192.0.2.1:8443/health-check"},
		{"/health-check", true, "http://[fd70:7061::1]:8443/health-check"},
		{"slow?ms=5", false, "http://192.0.2.1:8443/slow?ms=5"},
		{"", true, "http://[fd70:7061::1]:8443/"},
	}
	for _, tt := range tests {
		if got := n.URL(tt.path, tt.v6); got != tt.want {
			t.Errorf("URL(%q, %v) = %q, want %q", tt.path, tt.v6, got, tt.want)
		}
	}
	d, _ := Attach(Options{})
	if got := d.URL("/health-check", false); got != "http://192.0.2.1:443/health-check" {
		t.Errorf("default URL = %q", got)
	}
}

func TestParseJlist(t *testing.T) {
	banner := "\x1b[32m[PM2] Spawning PM2 daemon with pm2_home=/x\x1b[39m\n[PM2] PM2 Successfully daemonized\n"
	list := `[{"pid":42,"name":"sample-app","pm_id":0,"pm2_env":{"status":"online","restart_time":3,"SECRET":"s3cr3t"}},` +
		`{"pid":0,"name":"other","pm2_env":{"status":"stopped","restart_time":0}}]`
	got, err := parseJlist([]byte(banner + list + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := []AppInfo{{Name: "sample-app", PID: 42, Status: "online", Restarts: 3}, {Name: "other", Status: "stopped"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseJlist (-want +got):\n%s", diff)
	}
	if got, err := parseJlist([]byte(banner + "[]")); err != nil || len(got) != 0 {
		t.Errorf("empty list: %v, %v", got, err)
	}
	_, err = parseJlist([]byte(banner + `[{"pm2_env":{"SECRET":"s3cr3t"`))
	if err == nil || strings.Contains(err.Error(), "s3cr3t") {
		t.Errorf("truncated jlist: err = %v, want an error that does not quote the output", err)
	}
}

func TestLoadRecordAndTimeline(t *testing.T) {
	l := &Load{start: time.Now().Add(-250 * time.Millisecond)}
	l.record(outOK, nil)
	l.record(outRefused, nil)
	l.record(outBadStatus, nil)
	s := l.Stats()
	if s.Total != 3 || s.OK != 1 || s.Refused != 1 || s.Failed != 1 || s.BadStatus != 1 {
		t.Fatalf("counters: %+v", s)
	}
	if len(s.Timeline) != 3 || s.Timeline[2] != (Bucket{OK: 1, Refused: 1, Failed: 1}) {
		t.Fatalf("timeline: %+v", s.Timeline)
	}
	s.Timeline = []Bucket{{OK: 1}, {Refused: 2, OK: 1}, {}, {Failed: 1}, {OK: 1}, {OK: 1}, {OK: 1}, {OK: 1}, {OK: 1}, {OK: 1}, {Refused: 1}}
	if got, want := s.TimelineString(), ".r X......|r"; got != want {
		t.Errorf("TimelineString() = %q, want %q", got, want)
	}
}

func TestPatchagentConfig(t *testing.T) {
	n, err := Attach(Options{Prefix: "pa-u", Dir: "/s", AppUser: "u1", AppName: "web", Port: 8443, PM2Dir: "/p"})
	if err != nil {
		t.Fatal(err)
	}
	got := n.PatchagentConfig("/st", "", "drain:\n  idle: 1s\n")
	want := "app:\n  name: web\n  user: u1\n  pm2: /p/node_modules/pm2/bin/pm2\n  pm2_home: /s/home/.pm2\n" +
		"traffic:\n  ports: [8443]\ndaemon:\n  state_dir: /st\n  socket: /run/patchagent-sandbox/pa-u.sock\n  boot_id_file: /s/boot_id\n" +
		"drain:\n  idle: 1s\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PatchagentConfig (-want +got):\n%s", diff)
	}
	got = n.PatchagentConfig("/st", "  dir: /s/app\n", "  watch_interval: 1s\n")
	want = "app:\n  name: web\n  user: u1\n  pm2: /p/node_modules/pm2/bin/pm2\n  pm2_home: /s/home/.pm2\n  dir: /s/app\n" +
		"traffic:\n  ports: [8443]\ndaemon:\n  state_dir: /st\n  socket: /run/patchagent-sandbox/pa-u.sock\n  boot_id_file: /s/boot_id\n" +
		"  watch_interval: 1s\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PatchagentConfig with app lines (-want +got):\n%s", diff)
	}
	// The lines land in their sections of a valid config.
	cfg, err := agent.ParseConfig("sandbox", []byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.App.Dir != "/s/app" || cfg.Daemon.BootIDFile != "/s/boot_id" || cfg.Daemon.WatchInterval.D() != time.Second {
		t.Errorf("parsed: app.dir %q, daemon.boot_id_file %q, daemon.watch_interval %s", cfg.App.Dir, cfg.Daemon.BootIDFile, cfg.Daemon.WatchInterval)
	}
}

func TestWriteTLSCert(t *testing.T) {
	n := &Node{Opts: Options{Dir: t.TempDir()}, UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), userKnown: true}
	certPath, err := n.WriteTLSCert("localhost", "127.0.0.1", "::1", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	env := n.TLSEnv(certPath)
	want := map[string]string{"TLS_CERT": filepath.Join(n.Opts.Dir, "tls-cert.pem"), "TLS_KEY": filepath.Join(n.Opts.Dir, "tls-key.pem")}
	if diff := cmp.Diff(want, env); diff != "" {
		t.Errorf("TLSEnv (-want +got):\n%s", diff)
	}
	if st, err := os.Stat(env["TLS_KEY"]); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key mode: %v %v", st, err)
	}
	pair, err := tls.LoadX509KeyPair(env["TLS_CERT"], env["TLS_KEY"])
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if k, ok := cert.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", cert.PublicKey)
	}
	if d := cert.NotAfter.Sub(cert.NotBefore); d < 23*time.Hour || d > 25*time.Hour {
		t.Errorf("validity %s, want a day", d)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	for _, h := range []string{"localhost", "127.0.0.1", "::1", "192.0.2.1"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: h}); err != nil {
			t.Errorf("verify %s: %v", h, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: "192.0.2.2"}); err == nil {
		t.Error("cert valid for a host not in its SANs")
	}
	if _, err := n.WriteTLSCert(); err == nil {
		t.Error("WriteTLSCert() with no hosts succeeded")
	}
}

func TestBootID(t *testing.T) {
	n := &Node{Opts: Options{Dir: t.TempDir()}}
	if got, want := n.BootIDPath(), filepath.Join(n.Opts.Dir, "boot_id"); got != want {
		t.Errorf("BootIDPath() = %q, want %q", got, want)
	}
	if err := n.ensureBootID(); err != nil {
		t.Fatal(err)
	}
	id, err := n.BootID()
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(id) {
		t.Errorf("boot id %q is not a v4 UUID", id)
	}
	if err := n.ensureBootID(); err != nil {
		t.Fatal(err)
	}
	if again, _ := n.BootID(); again != id {
		t.Errorf("ensureBootID replaced %q with %q", id, again)
	}
	if err := n.writeBootID(); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := n.BootID(); fresh == id {
		t.Error("writeBootID kept the old id")
	}
}

func TestHTTPSURL(t *testing.T) {
	n, _ := Attach(Options{Port: 8443})
	if got, want := n.HTTPSURL("/health-check", true), "https://[fd70:7061::1]:8443/health-check"; got != want {
		t.Errorf("HTTPSURL = %q, want %q", got, want)
	}
}

func TestTreeHash(t *testing.T) {
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "node_modules", "a"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "node_modules", "a", "index.js"), []byte("module.exports = 1;\n"), 0o644))
	must(os.WriteFile(filepath.Join(dir, "package.json"), []byte("{}\n"), 0o644))
	must(os.Symlink("a/index.js", filepath.Join(dir, "node_modules", "link")))
	hash := func() string {
		t.Helper()
		h, err := TreeHash(dir)
		must(err)
		return h
	}
	base := hash()
	if again := hash(); again != base {
		t.Fatalf("same tree hashed twice: %s != %s", base, again)
	}
	// A new mtime alone changes nothing.
	must(os.Chtimes(filepath.Join(dir, "package.json"), time.Now(), time.Unix(1, 0)))
	if h := hash(); h != base {
		t.Error("mtime changed the hash")
	}
	changes := []struct {
		name     string
		do, undo func() error
	}{
		{"content",
			func() error { return os.WriteFile(filepath.Join(dir, "package.json"), []byte("{ }\n"), 0o644) },
			func() error { return os.WriteFile(filepath.Join(dir, "package.json"), []byte("{}\n"), 0o644) }},
		{"mode",
			func() error { return os.Chmod(filepath.Join(dir, "node_modules", "a"), 0o700) },
			func() error { return os.Chmod(filepath.Join(dir, "node_modules", "a"), 0o755) }},
		{"symlink target",
			func() error {
				p := filepath.Join(dir, "node_modules", "link")
				return errors.Join(os.Remove(p), os.Symlink("a/other.js", p))
			},
			func() error {
				p := filepath.Join(dir, "node_modules", "link")
				return errors.Join(os.Remove(p), os.Symlink("a/index.js", p))
			}},
		{"new empty file",
			func() error { return os.WriteFile(filepath.Join(dir, "x"), nil, 0o644) },
			func() error { return os.Remove(filepath.Join(dir, "x")) }},
	}
	if os.Geteuid() == 0 {
		changes = append(changes, struct {
			name     string
			do, undo func() error
		}{"owner",
			func() error { return os.Lchown(filepath.Join(dir, "node_modules", "a", "index.js"), 65534, 65534) },
			func() error { return os.Lchown(filepath.Join(dir, "node_modules", "a", "index.js"), 0, 0) }})
	}
	for _, c := range changes {
		must(c.do())
		if h := hash(); h == base {
			t.Errorf("%s: hash unchanged", c.name)
		}
		must(c.undo())
		if h := hash(); h != base {
			t.Errorf("%s undone: hash differs", c.name)
		}
	}
	owners, err := TreeOwners(dir)
	must(err)
	uid := uint32(os.Geteuid())
	if len(owners) != 1 || owners[uid] != 6 { // dir, node_modules, a, index.js, link, package.json
		t.Errorf("TreeOwners = %v, want {%d: 6}", owners, uid)
	}
}

func TestCompareSemver(t *testing.T) {
	ordered := []string{"0.9.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0", "1.0.1", "1.0.10", "2.0.0"}
	for i, a := range ordered {
		for j, b := range ordered {
			if got, want := compareSemver(a, b), cmpUint(uint64(i), uint64(j)); got != want {
				t.Errorf("compareSemver(%s, %s) = %d, want %d", a, b, got, want)
			}
		}
	}
	if _, ok := parseSemver("1.0"); ok {
		t.Error("parseSemver(1.0) ok")
	}
}

func TestTarball(t *testing.T) {
	tgz, err := tarball([]byte(`{"name":"x"}`), map[string]string{"lib/b.js": "b", "index.js": "a"})
	if err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
	}
	if want := []string{"package/package.json", "package/index.js", "package/lib/b.js"}; !slices.Equal(names, want) {
		t.Errorf("entries %v, want %v", names, want)
	}
	for _, bad := range []string{"../x", "/x", "a/../b", "package.json", "."} {
		if _, err := tarball(nil, map[string]string{bad: ""}); err == nil {
			t.Errorf("tarball accepted file %q", bad)
		}
	}
}
