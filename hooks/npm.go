package hooks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Defaults for NPMConfig's zero values.
const (
	DefaultNPMBin           = "/usr/bin/npm"
	DefaultNPMPath          = DefaultPM2Path // the same user environment
	DefaultNPMFetchTimeout  = 30 * time.Second
	DefaultNPMFetchRetries  = 1
	DefaultNPMFetchRetryMin = 2 * time.Second
	DefaultNPMFetchRetryMax = 10 * time.Second
	DefaultNPMCallTimeout   = 5 * time.Minute
)

const (
	npmNoUpdateNotifier = "npm_config_update_notifier=false"
	npmOutdatedExitCode = 1 // npm outdated's exit code when something is outdated
	packageJSONTemp     = ".package.json.patchagent-tmp"
	packageJSON         = "package.json"
	packageLock         = "package-lock.json"
	npmShrinkwrap       = "npm-shrinkwrap.json"
	npmrc               = ".npmrc"
	nodeModules         = "node_modules"
)

var (
	// ErrNoPackageJSON: the app dir has no package.json.
	ErrNoPackageJSON = errors.New("no package.json")
	// ErrNoLockfile: the app dir has neither package-lock.json nor
	// npm-shrinkwrap.json, so an update could not be diffed nor undone.
	ErrNoLockfile = errors.New("no package-lock.json")
	// ErrLockfileOutOfSync: the lockfile's root entry does not declare the
	// dependencies package.json declares.
	ErrLockfileOutOfSync = errors.New("package-lock.json out of sync with package.json")
	// ErrNPMNotFound: the npm executable does not exist.
	ErrNPMNotFound = errors.New("npm not found")
	// ErrRootRefused: npm would run as root inside the app tree, leaving
	// root-owned files behind (set AllowRoot to permit it).
	ErrRootRefused = errors.New("refusing to run npm as root in the app dir")
)

// NPMConfig says which npm to run, as whom, where, and how patiently.
type NPMConfig struct {
	// Bin is the npm executable (default: npm next to the first node on
	// Path, else DefaultNPMBin).
	Bin string
	// User is who npm runs as, with HOME=User.Home (npm's cache lives there).
	User AppUser
	// AllowRoot permits User to be root. Without it, uid 0 is refused: npm
	// as root writes root-owned files into the app tree.
	AllowRoot bool
	// Dir is the app dir, holding package.json.
	Dir string
	// Path is the PATH npm runs with; it must find the node the app uses
	// (default DefaultNPMPath).
	Path string
	// FetchTimeout is npm's --fetch-timeout, per request (default 30s; npm's
	// own default of 5 minutes hangs on a registry that accepts and stalls).
	FetchTimeout time.Duration
	// FetchRetries is npm's --fetch-retries (default 1).
	FetchRetries int
	// FetchRetryMinTimeout and FetchRetryMaxTimeout bound npm's back-off
	// between retries (defaults 2s and 10s; npm's own are 10s and 60s).
	FetchRetryMinTimeout time.Duration
	FetchRetryMaxTimeout time.Duration
	// CallTimeout bounds `npm outdated` (default 5m). Update and UpgradeMajor's install are bounded by their
	// ctx only.
	CallTimeout time.Duration
}

// Outdated is one line of `npm outdated`: the installed version (empty when
// not installed), the newest version the declared range allows, and the
// registry's latest.
type Outdated struct{ Current, Wanted, Latest string }

// NPM runs npm in the app dir as the app's user, with an explicit
// environment (HOME, PATH and npm_config_update_notifier=false only: the
// app's own .npmrc in Dir is read by npm as usual) and bounded network
// waits.
type NPM struct {
	log *zap.Logger
	run Runner
	cfg NPMConfig // defaults filled in
}

// NewNPM returns an NPM for c, with defaults filled in. It checks nothing:
// see Check.
func NewNPM(log *zap.Logger, run Runner, c NPMConfig) *NPM {
	if c.Path == "" {
		c.Path = DefaultNPMPath
	}
	if c.Bin == "" {
		c.Bin = findNPM(c.Path)
	}
	if c.FetchTimeout <= 0 {
		c.FetchTimeout = DefaultNPMFetchTimeout
	}
	if c.FetchRetries <= 0 {
		c.FetchRetries = DefaultNPMFetchRetries
	}
	if c.FetchRetryMinTimeout <= 0 {
		c.FetchRetryMinTimeout = DefaultNPMFetchRetryMin
	}
	if c.FetchRetryMaxTimeout <= 0 {
		c.FetchRetryMaxTimeout = DefaultNPMFetchRetryMax
	}
	if c.FetchRetryMaxTimeout < c.FetchRetryMinTimeout {
		c.FetchRetryMaxTimeout = c.FetchRetryMinTimeout
	}
	if c.CallTimeout <= 0 {
		c.CallTimeout = DefaultNPMCallTimeout
	}
	return &NPM{log: log.Named("npm"), run: run, cfg: c}
}

// findNPM is npm next to the first node on path, else DefaultNPMBin.
func findNPM(path string) string {
	if node, err := lookPath("node", []string{"PATH=" + path}); err == nil {
		if c := filepath.Join(filepath.Dir(node), "npm"); isExecutable(c) == nil {
			return c
		}
	}
	return DefaultNPMBin
}

// fetchArgs are the flags bounding npm's network waits.
func (n *NPM) fetchArgs() []string {
	return []string{
		"--fetch-timeout=" + strconv.FormatInt(n.cfg.FetchTimeout.Milliseconds(), 10),
		"--fetch-retries=" + strconv.Itoa(n.cfg.FetchRetries),
		"--fetch-retry-mintimeout=" + strconv.FormatInt(n.cfg.FetchRetryMinTimeout.Milliseconds(), 10),
		"--fetch-retry-maxtimeout=" + strconv.FormatInt(n.cfg.FetchRetryMaxTimeout.Milliseconds(), 10),
	}
}

// reifyArgs is the argv (after the program) of Update (verb "update") and
// of the install UpgradeMajor runs ("install").
//
// --loglevel=http makes npm say when a registry request failed and it fell
// back to stale cached metadata, which it otherwise does silently, exiting 0
// with nothing updated (see staleFallback).
func (n *NPM) reifyArgs(verb string) []string {
	return append([]string{verb, "--no-audit", "--no-fund", "--loglevel=http"}, n.fetchArgs()...)
}

// ErrRegistryUnreachable means npm could not reach the registry and used
// stale cached metadata instead: the update did not really happen.
var ErrRegistryUnreachable = errors.New("registry unreachable")

// staleFallback returns npm's log line saying it served a request from
// stale cache after the registry failed, or "" [measured with npm 11: with
// the registry down, `npm update` prints "npm http fetch GET 200 <url>
// (cache stale)" and exits 0, up to date].
func staleFallback(stderr []byte) string {
	for _, line := range strings.Split(string(stderr), "\n") {
		if strings.Contains(line, "(cache stale)") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// ErrIncompleteInstall means npm exited 0 although it could not write some
// files: it reports ENOSPC while unpacking as a warning (TAR_ENTRY_ERROR)
// and leaves a truncated package behind [measured with npm 11.19 on a full
// tmpfs].
var ErrIncompleteInstall = errors.New("npm left files unwritten")

// incompleteInstall returns npm's warning about a file it could not write
// while unpacking, or "".
func incompleteInstall(stderr []byte) string {
	for _, line := range strings.Split(string(stderr), "\n") {
		if strings.Contains(line, "TAR_ENTRY_ERROR") || strings.Contains(line, "ENOSPC") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}

// npmOutcome turns npm's own warnings that mean the work did not happen
// into errors, for a run that exited 0. The line is quoted as the runner
// quotes stderr (errTail: redacted, capped).
func npmOutcome(what string, stderr []byte) error {
	if line := staleFallback(stderr); line != "" {
		return fmt.Errorf("%s: %w: npm used stale cached metadata (%s)", what, ErrRegistryUnreachable, errTail([]byte(line)))
	}
	if line := incompleteInstall(stderr); line != "" {
		return fmt.Errorf("%s: %w (%s)", what, ErrIncompleteInstall, errTail([]byte(line)))
	}
	return nil
}

// outdatedArgs is the argv of Outdated. The fetch flags are there because
// npm outdated asks the registry too.
func (n *NPM) outdatedArgs() []string {
	return append([]string{"outdated", "--json"}, n.fetchArgs()...)
}

// Env is npm's whole environment.
func (n *NPM) Env() []string {
	return []string{"HOME=" + n.cfg.User.home(), "PATH=" + n.cfg.Path, npmNoUpdateNotifier}
}

func (n *NPM) checkUser() error {
	if n.cfg.User.UID == 0 && !n.cfg.AllowRoot {
		return fmt.Errorf("%w (user %q has uid 0; set a non-root app user)", ErrRootRefused, n.cfg.User.Name)
	}
	if n.cfg.Dir == "" || !filepath.IsAbs(n.cfg.Dir) {
		return fmt.Errorf("npm app dir %q: not an absolute path", n.cfg.Dir)
	}
	return nil
}

// npm runs npm with args as the user in dir.
func (n *NPM) npm(ctx context.Context, dir string, args []string) (Result, error) {
	c := Cmd{Name: n.cfg.Bin, Args: args, Dir: dir, Env: n.Env(), Cred: n.cfg.User.Credential()}
	start := time.Now()
	res, err := n.run.Run(ctx, c)
	n.log.Debug("ran npm", zap.String("command", args[0]), zap.Int("exit_code", res.ExitCode),
		zap.Duration("took", time.Since(start)))
	return res, err
}

// Check is the read-only preflight of the npm step: the user is not root
// (unless AllowRoot), npm is an executable file (ErrNPMNotFound; it is not
// run: a broken npm fails the update, which restores the snapshot),
// Dir is owned by the user and has a package.json that parses
// (ErrNoPackageJSON), a lockfile (npm-shrinkwrap.json, else
// package-lock.json; ErrNoLockfile) of version 2 or 3 whose root entry
// declares the same dependencies, devDependencies and optionalDependencies
// as package.json (ErrLockfileOutOfSync, naming the first difference), and
// the user's home exists (npm keeps its cache there). It writes nothing.
// All problems found are returned together (errors.Is finds each).
func (n *NPM) Check(_ context.Context) error {
	if err := n.checkUser(); err != nil {
		return err
	}
	var errs []error
	if err := n.checkBinary(); err != nil {
		errs = append(errs, err)
	}
	if err := n.checkOwner(); err != nil {
		errs = append(errs, err)
	}
	if n.cfg.User.Home == "" {
		errs = append(errs, fmt.Errorf("npm user %q has no home directory (npm keeps its cache there)", n.cfg.User.Name))
	} else if fi, err := os.Stat(n.cfg.User.Home); err != nil || !fi.IsDir() {
		errs = append(errs, fmt.Errorf("npm user %q: home %s is not a directory (npm keeps its cache there)", n.cfg.User.Name, n.cfg.User.Home))
	}
	if err := checkLockSync(n.cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkBinary: npm is an executable file where the update will run it (an
// absolute path, or a name on the npm PATH). It does not run npm: whether
// npm works after the OS update is found by the update itself, whose
// failure restores the snapshot, while `npm --version` here cost a tenth of
// a second more of the node's time out of service.
func (n *NPM) checkBinary() error {
	p, err := lookPath(n.cfg.Bin, n.Env())
	if err == nil {
		err = isExecutable(p)
	}
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrNPMNotFound, n.cfg.Bin, err)
	}
	return nil
}

// checkOwner: the app dir is a directory owned by the npm user, reached
// without a symlink the user could swap (openDirPath names such a link).
func (n *NPM) checkOwner() error {
	d, err := openDirPath(n.cfg.Dir)
	if err != nil {
		return fmt.Errorf("checking the app dir: %w", err)
	}
	defer d.Close()
	var st unix.Stat_t
	if err := unix.Fstat(d.fd(), &st); err != nil {
		return fmt.Errorf("checking the app dir %s: %w", n.cfg.Dir, err)
	}
	if st.Uid != n.cfg.User.UID {
		return fmt.Errorf("app dir %s is owned by uid %d, not by the npm user %q (uid %d)", n.cfg.Dir, st.Uid, n.cfg.User.Name, n.cfg.User.UID)
	}
	return nil
}

// manifest is the part of package.json Check and UpgradeMajor read.
type manifest struct {
	Dependencies         map[string]string `json:"dependencies"`
	DevDependencies      map[string]string `json:"devDependencies"`
	OptionalDependencies map[string]string `json:"optionalDependencies"`
}

// depKinds are the package.json sections npm installs from, in the order
// differences are reported.
var depKinds = []string{"dependencies", "devDependencies", "optionalDependencies"}

func (m manifest) kind(k string) map[string]string {
	switch k {
	case "dependencies":
		return m.Dependencies
	case "devDependencies":
		return m.DevDependencies
	}
	return m.OptionalDependencies
}

// maxNPMFile caps what root reads of package.json and a lockfile.
const maxNPMFile = 256 << 20

// readRegular reads name in the app dir dir, which the app user controls:
// through openDirPath and openRegular (dirfd.go), so a symlink or FIFO
// planted there, or swapped in after a check, is refused. st is fstat of
// the file read.
func readRegular(dir, name string) ([]byte, unix.Stat_t, error) {
	d, err := openDirPath(dir)
	if err != nil {
		return nil, unix.Stat_t{}, err
	}
	defer d.Close()
	return d.readRegular(name, maxNPMFile)
}

func readManifest(dir string) ([]byte, unix.Stat_t, manifest, error) {
	b, st, err := readRegular(dir, packageJSON)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, st, manifest{}, fmt.Errorf("%w in %s", ErrNoPackageJSON, dir)
	}
	if err != nil {
		return nil, st, manifest{}, fmt.Errorf("reading package.json: %w", err)
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, st, manifest{}, fmt.Errorf("parsing %s: %w", filepath.Join(dir, packageJSON), err)
	}
	return b, st, m, nil
}

// Lockfile returns the lockfile npm uses in the app dir:
// npm-shrinkwrap.json if there is one, else package-lock.json.
func (n *NPM) Lockfile() ([]byte, error) {
	_, b, err := readLockfile(n.cfg.Dir)
	return b, err
}

// readLockfile reads the lockfile npm uses in dir, and names it.
func readLockfile(dir string) (name string, b []byte, err error) {
	name = npmShrinkwrap // npm prefers it to package-lock.json
	b, _, err = readRegular(dir, name)
	if errors.Is(err, fs.ErrNotExist) {
		name = packageLock
		b, _, err = readRegular(dir, name)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return name, nil, fmt.Errorf("%w in %s (an update could be neither diffed nor undone; run npm install once)", ErrNoLockfile, dir)
	}
	if err != nil {
		return name, nil, fmt.Errorf("reading %s: %w", name, err)
	}
	return name, b, nil
}

// checkLockSync compares package.json's declared dependencies with the
// lockfile's root entry.
func checkLockSync(dir string) error {
	_, _, m, err := readManifest(dir)
	if err != nil {
		return err
	}
	name, b, err := readLockfile(dir)
	if err != nil {
		return err
	}
	lf, err := parseLockfile(b)
	if err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(dir, name), err)
	}
	if d := firstDiff(m, lf.Packages[""].manifest, name); d != "" {
		return fmt.Errorf("%w: %s", ErrLockfileOutOfSync, d)
	}
	return nil
}

// firstDiff names the first difference between package.json's declared
// dependencies and the lockfile's root entry, or "".
func firstDiff(pkg, lock manifest, lockName string) string {
	for _, k := range depKinds {
		p, l := pkg.kind(k), lock.kind(k)
		names := make([]string, 0, len(p)+len(l))
		for name := range p {
			names = append(names, name)
		}
		for name := range l {
			if _, ok := p[name]; !ok {
				names = append(names, name)
			}
		}
		sort.Strings(names)
		for _, name := range names {
			pv, inP := p[name]
			lv, inL := l[name]
			switch {
			case !inL:
				return fmt.Sprintf("%s.%s: package.json wants %q, %s has none", k, name, pv, lockName)
			case !inP:
				return fmt.Sprintf("%s.%s: %s has %q, package.json has none", k, name, lockName, lv)
			case pv != lv:
				return fmt.Sprintf("%s.%s: package.json wants %q, %s has %q", k, name, pv, lockName, lv)
			}
		}
	}
	return ""
}

// Update runs `npm update` (within the declared ranges; package.json is not
// changed) in Dir as the user. ctx's deadline is the whole run's: at it the
// runner kills npm's process group. The error carries npm's stderr tail.
func (n *NPM) Update(ctx context.Context) error {
	if err := n.checkUser(); err != nil {
		return err
	}
	return n.reify(ctx, "update", "running npm update in "+n.cfg.Dir)
}

// reify runs `npm update` or `npm install` (verb) in Dir as the user, and
// fails (what: what was being done) when npm fails or its log says the
// install is not what it claims (npmOutcome).
func (n *NPM) reify(ctx context.Context, verb, what string) error {
	start := time.Now()
	res, err := n.npm(ctx, n.cfg.Dir, n.reifyArgs(verb))
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := npmOutcome(what, res.Stderr); err != nil {
		return err
	}
	n.log.Info("npm "+verb+" finished", zap.String("dir", n.cfg.Dir), zap.Duration("took", time.Since(start)))
	return nil
}

// Outdated runs `npm outdated --json` in Dir as the user and returns its
// report by dependency name. npm exits 1 when something is outdated: that
// is not an error; an exit 1 with nothing outdated, or an error object in
// the JSON, is.
func (n *NPM) Outdated(ctx context.Context) (map[string]Outdated, error) {
	if err := n.checkUser(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
	defer cancel()
	res, err := n.npm(ctx, n.cfg.Dir, n.outdatedArgs())
	if err != nil {
		var xe *ExitError
		if !errors.As(err, &xe) || xe.ExitCode != npmOutdatedExitCode {
			return nil, fmt.Errorf("running npm outdated in %s: %w", n.cfg.Dir, err)
		}
	}
	out, perr := parseOutdated(res.Stdout)
	switch {
	case perr != nil && err != nil:
		return nil, fmt.Errorf("running npm outdated in %s: %w (%w)", n.cfg.Dir, err, perr)
	case perr != nil:
		return nil, fmt.Errorf("running npm outdated in %s: %w", n.cfg.Dir, perr)
	case err != nil && len(out) == 0:
		return nil, fmt.Errorf("running npm outdated in %s: %w", n.cfg.Dir, err)
	}
	return out, nil
}

type outdatedEntry struct {
	Current string `json:"current"`
	Wanted  string `json:"wanted"`
	Latest  string `json:"latest"`
}

type npmErrorEntry struct {
	Code    string `json:"code"`
	Summary string `json:"summary"`
}

// parseOutdated decodes npm outdated --json. A name listed once per
// dependent (workspaces) maps to an array: the first entry is used. npm
// reports its own failure as {"error": {"code", "summary", "detail"}}; only
// the code is quoted (through errTail, like all of npm's output; the
// summary may hold a registry URL).
func parseOutdated(b []byte) (map[string]Outdated, error) {
	b = bytes.TrimSpace(b)
	out := map[string]Outdated{}
	if len(b) == 0 {
		return out, nil
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("parsing npm outdated --json: %w", err)
	}
	if e, ok := raw["error"]; ok {
		var ne npmErrorEntry
		if json.Unmarshal(e, &ne) == nil && ne.Code != "" {
			return nil, fmt.Errorf("npm outdated reported error %s", errTail([]byte(ne.Code)))
		}
	}
	for name, v := range raw {
		var e outdatedEntry
		if t := bytes.TrimSpace(v); len(t) > 0 && t[0] == '[' {
			var es []outdatedEntry
			if err := json.Unmarshal(t, &es); err != nil {
				return nil, fmt.Errorf("parsing npm outdated --json entry %q: %w", name, err)
			}
			if len(es) == 0 {
				continue
			}
			e = es[0]
		} else if err := json.Unmarshal(t, &e); err != nil {
			return nil, fmt.Errorf("parsing npm outdated --json entry %q: %w", name, err)
		}
		out[name] = Outdated(e)
	}
	return out, nil
}

// UpgradeMajor does what npm-check-updates does for major versions: every
// dependency of package.json (dependencies, devDependencies,
// optionalDependencies) whose latest version (from Outdated) has a higher
// major than the newest version its declared range allows (npm's
// "wanted") gets the range "^<latest>"; then `npm install` runs as the user
// in Dir, with the same flags as Update. Ranges that are not registry
// ranges (file:, git, URLs, aliases, tags) are left alone; so are 0.x
// minor bumps (not a new major). package.json is edited in place byte for
// byte (only the changed range strings differ: formatting, key order and
// the trailing newline are kept) and replaced atomically with its
// original owner and mode. It returns "name: old-range -> new-range" lines,
// in package.json's order. When the install fails, package.json stays
// rewritten and the lines are returned with the error: restore the
// snapshot to undo both.
func (n *NPM) UpgradeMajor(ctx context.Context) ([]string, error) {
	if err := n.checkUser(); err != nil {
		return nil, err
	}
	raw, fi, _, err := readManifest(n.cfg.Dir)
	if err != nil {
		return nil, err
	}
	out, err := n.Outdated(ctx)
	if err != nil {
		return nil, err
	}
	edited, lines, err := planMajor(raw, out)
	if err != nil {
		return nil, fmt.Errorf("planning major upgrades in %s: %w", filepath.Join(n.cfg.Dir, packageJSON), err)
	}
	if len(lines) == 0 {
		n.log.Info("no major upgrades available", zap.String("dir", n.cfg.Dir))
		return nil, nil
	}
	if err := replaceFileLike(n.cfg.Dir, packageJSON, edited, fi); err != nil {
		return nil, err
	}
	n.log.Info("package.json ranges raised", zap.Strings("changes", lines))
	return lines, n.reify(ctx, "install", fmt.Sprintf("running npm install in %s after raising %d ranges", n.cfg.Dir, len(lines)))
}

// depSpan is where one dependency's range sits in package.json's bytes.
type depSpan struct {
	kind, name, value string
	start, end        int // value's bytes, quotes included
}

// depSpans finds, without re-encoding anything, the byte span of every
// string range in package.json's dependency sections.
func depSpans(raw []byte) ([]depSpan, error) {
	top, err := members(raw)
	if err != nil {
		return nil, fmt.Errorf("package.json: %w", err)
	}
	var spans []depSpan
	for _, sec := range top {
		if !isDepKind(sec.key) || sec.raw[0] != '{' {
			continue
		}
		deps, err := members(sec.raw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", sec.key, err)
		}
		for _, d := range deps {
			if d.raw[0] != '"' {
				continue
			}
			var v string
			if err := json.Unmarshal(d.raw, &v); err != nil {
				return nil, fmt.Errorf("%s.%s: %w", sec.key, d.key, err)
			}
			spans = append(spans, depSpan{kind: sec.key, name: d.key, value: v, start: sec.start + d.start, end: sec.start + d.end})
		}
	}
	return spans, nil
}

func isDepKind(k string) bool {
	for _, d := range depKinds {
		if k == d {
			return true
		}
	}
	return false
}

// member is one member of a JSON object: its key, its value as written,
// and the value's byte span in the object.
type member struct {
	key        string
	raw        json.RawMessage
	start, end int
}

// members lists the members of the JSON object obj, in order.
func members(obj []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(obj))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return nil, errors.New("not a JSON object")
	}
	var ms []member
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := t.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		end := int(dec.InputOffset())
		start := end - len(v)
		if len(v) == 0 || start < 0 || !bytes.Equal(obj[start:end], v) {
			return nil, fmt.Errorf("%s: value not found at the decoder's offset", key)
		}
		ms = append(ms, member{key: key, raw: v, start: start, end: end})
	}
	return ms, nil
}

// planMajor returns package.json with the ranges of dependencies that have
// a newer major raised to "^<latest>", and the change lines.
func planMajor(raw []byte, out map[string]Outdated) ([]byte, []string, error) {
	spans, err := depSpans(raw)
	if err != nil {
		return nil, nil, err
	}
	var b bytes.Buffer
	var lines []string
	last := 0
	for _, s := range spans {
		o, ok := out[s.name]
		if !ok || !isRegistryRange(s.value) {
			continue
		}
		wm, ok1 := majorOf(o.Wanted)
		lm, ok2 := majorOf(o.Latest)
		if !ok1 || !ok2 || lm <= wm {
			continue
		}
		nv := "^" + strings.TrimPrefix(o.Latest, "v")
		enc, err := encodeJSONString(nv)
		if err != nil {
			return nil, nil, err
		}
		b.Write(raw[last:s.start])
		b.Write(enc)
		last = s.end
		lines = append(lines, s.name+": "+s.value+" -> "+nv)
	}
	b.Write(raw[last:])
	return b.Bytes(), lines, nil
}

func encodeJSONString(s string) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(s); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}

// isRegistryRange: spec is a semver range for the registry, not a file:,
// link:, git or URL spec, an npm: alias, a workspace: spec or a GitHub
// shorthand (user/repo).
func isRegistryRange(spec string) bool {
	s := strings.TrimSpace(spec)
	if s == "" || strings.Contains(s, "/") {
		return false
	}
	return !strings.Contains(s, ":")
}

// majorOf is the major of a version like "1.2.3" or "v2.0.0-rc.1".
func majorOf(v string) (int, bool) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	head, _, found := strings.Cut(v, ".")
	if !found {
		return 0, false
	}
	m, err := strconv.Atoi(head)
	if err != nil || m < 0 {
		return 0, false
	}
	return m, true
}

// replaceFileLike atomically replaces name in the app dir dir with data,
// giving the new file the owner and mode of st (the old file's fstat):
// written to a temp file beside it, fsynced, renamed over, and the
// directory fsynced. The app user can write dir (see dirfd.go), so the temp
// file is created O_EXCL|O_NOFOLLOW relative to the dir's fd and everything
// is set through its fd; a name swapped before the rename would move the
// user's own file into place, which the inode check after it reports.
func replaceFileLike(dir, name string, data []byte, st unix.Stat_t) error {
	d, err := openDirPath(dir)
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	defer d.Close()
	tmp := packageJSONTemp
	if err := unix.Unlinkat(d.fd(), tmp, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing stale %s: %w", d.join(tmp), err)
	}
	fd, err := unix.Openat(d.fd(), tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("writing %s: %w", d.join(name), err)
	}
	f := os.NewFile(uintptr(fd), d.join(tmp))
	ok := false
	defer func() {
		if !ok {
			f.Close()
			unix.Unlinkat(d.fd(), tmp, 0)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("giving %s its owner back: %w", f.Name(), err)
	}
	if err := f.Chmod(fs.FileMode(st.Mode & 0o777)); err != nil {
		return fmt.Errorf("giving %s its mode back: %w", f.Name(), err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", f.Name(), err)
	}
	var mine unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &mine); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("closing %s: %w", f.Name(), err)
	}
	if err := d.rename(tmp, name); err != nil {
		return fmt.Errorf("replacing %s: %w", d.join(name), err)
	}
	ok = true
	if now, err := d.stat(name); err != nil || now.Ino != mine.Ino {
		return fmt.Errorf("replacing %s: the file moved into place is not the one written (changed under us)", d.join(name))
	}
	return d.sync()
}

// syncDir fsyncs a directory, making renames and creations in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", dir, err)
	}
	return nil
}
