package sandbox

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
)

// Defaults for Options.
const (
	DefaultPrefix  = "pa"
	DefaultAppUser = "pa-app"
	DefaultAppName = "sample-app"
	DefaultPort    = 443
	// StateRoot holds every sandbox's state dir and the shared pm2 install.
	StateRoot     = "/var/lib/patchagent-sandbox"
	DefaultPM2Dir = StateRoot + "/pm2"
	// DefaultVerdaccioDir is where the pinned verdaccio is installed.
	DefaultVerdaccioDir = StateRoot + "/verdaccio"
)

// Fixed addresses of the veth pair: the server side holds .1/::1.
var (
	ServerV4 = netip.MustParseAddr("192.0.2.1")
	ClientV4 = netip.MustParseAddr("192.0.2.2")
	ServerV6 = netip.MustParseAddr("fd70:7061::1")
	ClientV6 = netip.MustParseAddr("fd70:7061::2")
)

const (
	v4Bits = 24
	v6Bits = 64
)

// Options describe one sandbox node. The zero value is usable: every empty
// field takes its default (see WithDefaults).
type Options struct {
	// Prefix names the namespaces (Prefix+"-srv", Prefix+"-cli") and the veth
	// pair (Prefix+"-s", Prefix+"-c") (default "pa").
	Prefix string
	// Dir is the state dir: app copy, user home, PM2_HOME
	// (default /var/lib/patchagent-sandbox/<Prefix>).
	Dir string
	// AppUser is the unprivileged system user that runs pm2 and the app; it is
	// created if missing (default "pa-app").
	AppUser string
	// AppName is the pm2 process name (default "sample-app").
	AppName string
	// Port is the app's TCP port (default 443).
	Port uint16
	// PM2Dir is where the pinned pm2 is installed
	// (default /var/lib/patchagent-sandbox/pm2).
	PM2Dir string
	// VerdaccioDir is where the pinned verdaccio is installed for
	// StartRegistry (default /var/lib/patchagent-sandbox/verdaccio).
	VerdaccioDir string
	// Env is extra environment for the app (e.g. KEEPALIVE_MS, HEALTH_MODE,
	// START_DELAY_MS, CRASH_AFTER_MS, CRASH_FILE, TLS_CERT/TLS_KEY: see
	// app/server.js).
	// SetAppEnv replaces it on a running sandbox.
	Env map[string]string

	// afterStep, when set (tests only), runs after each Setup step; an error
	// makes Setup fail there and undo its work.
	afterStep func(step string) error
}

// WithDefaults returns a copy of o with every empty field set to its default.
func (o Options) WithDefaults() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Dir == "" {
		o.Dir = filepath.Join(StateRoot, o.Prefix)
	}
	if o.AppUser == "" {
		o.AppUser = DefaultAppUser
	}
	if o.AppName == "" {
		o.AppName = DefaultAppName
	}
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.PM2Dir == "" {
		o.PM2Dir = DefaultPM2Dir
	}
	if o.VerdaccioDir == "" {
		o.VerdaccioDir = DefaultVerdaccioDir
	}
	return o
}

var (
	prefixRe  = regexp.MustCompile(`^[a-z][a-z0-9-]*$`)
	userRe    = regexp.MustCompile(`^[a-z_][a-z0-9_-]*$`)
	appNameRe = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9._-]*$`)
	envKeyRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
)

// reservedEnv are set by the sandbox itself.
var reservedEnv = map[string]bool{"PORT": true, "HOME": true, "PM2_HOME": true, "PATH": true}

// Validate reports every problem with o (after defaults), each named by field.
func (o Options) Validate() error {
	var errs []error
	// veth names are limited to 15 bytes: Prefix+"-s" must fit.
	if !prefixRe.MatchString(o.Prefix) || len(o.Prefix) > 12 {
		errs = append(errs, fmt.Errorf("prefix: %q must match %s and be at most 12 bytes", o.Prefix, prefixRe))
	}
	if !filepath.IsAbs(o.Dir) || filepath.Clean(o.Dir) == "/" {
		errs = append(errs, fmt.Errorf("dir: %q is not an absolute path below /", o.Dir))
	}
	if !userRe.MatchString(o.AppUser) || len(o.AppUser) > 32 || o.AppUser == "root" {
		errs = append(errs, fmt.Errorf("app_user: %q is not a valid unprivileged user name", o.AppUser))
	}
	// pm2 takes an all-digit name for a pm_id, and splits on spaces/commas.
	if !appNameRe.MatchString(o.AppName) || len(o.AppName) > 64 {
		errs = append(errs, fmt.Errorf("app_name: %q must match %s", o.AppName, appNameRe))
	}
	if o.Port == 0 {
		errs = append(errs, errors.New("port: 0 is not a valid port (WithDefaults sets 443)"))
	}
	if !filepath.IsAbs(o.PM2Dir) || filepath.Clean(o.PM2Dir) == "/" {
		errs = append(errs, fmt.Errorf("pm2_dir: %q is not an absolute path below /", o.PM2Dir))
	}
	if !filepath.IsAbs(o.VerdaccioDir) || filepath.Clean(o.VerdaccioDir) == "/" {
		errs = append(errs, fmt.Errorf("verdaccio_dir: %q is not an absolute path below /", o.VerdaccioDir))
	}
	for k := range o.Env {
		if !envKeyRe.MatchString(k) || reservedEnv[k] {
			errs = append(errs, fmt.Errorf("env: key %q is invalid or reserved", k))
		}
	}
	return errors.Join(errs...)
}

// URL returns the app URL for path on the server side of the veth, e.g.
// "http://192.0.2.1:443/health-check" or "http://[fd70:7061::1]:443/".
func (n *Node) URL(path string, v6 bool) string {
	addr := n.ServerV4
	if v6 {
		addr = n.ServerV6
	}
	if path == "" || path[0] != '/' {
		path = "/" + path
	}
	return "http://" + netip.AddrPortFrom(addr, n.Opts.Port).String() + path
}

func portString(p uint16) string { return strconv.Itoa(int(p)) }
