package sandbox

// AEMM is AWS's instance metadata service emulator,
// amazon-ec2-metadata-mock, at the version AEMMModule names. Its packages
// keep the server, the routes and the issued tokens in package globals and
// serve with http.ListenAndServe (no shutdown, no port 0), and the main
// module does not require its dependencies (cobra, viper, mux), so it is
// not run in process: BuildAEMM builds its command from the module cache,
// in its own module, and StartAEMM runs one process of it per caller (which
// also keeps concurrent users off AEMM's unsynchronised token map).

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// AEMMModule is AEMM at the version the tests run: named here, not in
// go.mod, since no package of ours imports it (go mod tidy would drop it).
const AEMMModule = "github.com/aws/amazon-ec2-metadata-mock@v1.13.0"

// aemmReady bounds how long StartAEMM waits for a started AEMM to hand out
// a token.
const aemmReady = 15 * time.Second

// AEMMConfig is what an AEMM serves instead of its defaults: the instance's
// identity, both as metadata paths and as the instance identity document,
// and instance-profile credentials that have not expired (AEMM's default
// ones expired in 2020, and the SDK refuses expired credentials). A zero
// field takes the default its comment gives.
type AEMMConfig struct {
	InstanceID       string // default "i-0a0e0000000000001"
	Region           string // default "us-east-1"
	AvailabilityZone string // default Region + "a"
	AccountID        string // of the identity document; default "000011112222"

	// The instance profile's credentials.
	AccessKeyID     string // default "AKIDPATCHAGENTAEMM00"
	SecretAccessKey string // default "secret-of-the-aemm-instance-profile"
	Token           string // default "session-token-of-the-aemm-instance-profile"
	// ValidFor is how long after StartAEMM they expire (default 1h).
	ValidFor time.Duration
}

func (c AEMMConfig) withDefaults() AEMMConfig {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.InstanceID, "i-0a0e0000000000001")
	def(&c.Region, "us-east-1")
	def(&c.AvailabilityZone, c.Region+"a")
	def(&c.AccountID, "000011112222")
	def(&c.AccessKeyID, "AKIDPATCHAGENTAEMM00")
	def(&c.SecretAccessKey, "secret-of-the-aemm-instance-profile")
	def(&c.Token, "session-token-of-the-aemm-instance-profile")
	if c.ValidFor <= 0 {
		c.ValidFor = time.Hour
	}
	return c
}

// configFile is AEMM's --config-file for c, credentials valid from now.
func (c AEMMConfig) configFile(now time.Time) []byte {
	cfg := map[string]any{
		"metadata": map[string]any{"values": map[string]any{
			"instance-id":                 c.InstanceID,
			"placement-region":            c.Region,
			"placement-availability-zone": c.AvailabilityZone,
			"iam-security-credentials": map[string]any{
				"Code":            "Success",
				"LastUpdated":     now.UTC().Format(time.RFC3339),
				"Type":            "AWS-HMAC",
				"AccessKeyId":     c.AccessKeyID,
				"SecretAccessKey": c.SecretAccessKey,
				"Token":           c.Token,
				"Expiration":      now.Add(c.ValidFor).UTC().Format(time.RFC3339),
			},
		}},
		"dynamic": map[string]any{"values": map[string]any{
			"instance-identity-document": map[string]any{
				"instanceId":       c.InstanceID,
				"region":           c.Region,
				"availabilityZone": c.AvailabilityZone,
				"accountId":        c.AccountID,
			},
		}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err) // strings and maps only
	}
	return b
}

// BuildAEMM builds AEMM's command (AEMMModule's ./cmd/ec2-metadata-mock)
// into dir and returns the binary's path. The module is downloaded through
// the Go module proxy if the module cache lacks it; its own go.mod and
// go.sum decide its dependencies (GOWORK=off, -mod=readonly). It needs the
// go command in PATH.
func BuildAEMM(dir string) (bin string, err error) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("building AEMM: %w", err)
	}
	out, err := exec.Command(gotool, "mod", "download", "-json", AEMMModule).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = tail(ee.Stderr)
		}
		return "", fmt.Errorf("building AEMM: go mod download %s: %w: %s %s", AEMMModule, err, stderr, tail(out))
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("building AEMM: go mod download %s: no directory (%v %s)", AEMMModule, err, mod.Error)
	}
	bin = filepath.Join(dir, "ec2-metadata-mock")
	build := exec.Command(gotool, "build", "-o", bin, "./cmd/ec2-metadata-mock")
	build.Dir = mod.Dir
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building AEMM: go build %s/cmd/ec2-metadata-mock: %w\n%s", AEMMModule, err, tail(out))
	}
	return bin, nil
}

// AEMM is one running AEMM process (see StartAEMM).
type AEMM struct {
	addr    netip.AddrPort
	cmd     *exec.Cmd
	log     string
	exited  chan struct{}
	stopped sync.Once
}

// StartAEMM runs bin (from BuildAEMM) in IMDSv2-only mode (--imdsv2) on
// addr, serving cfg, in netns ns ("" is the current one: bin runs
// directly; else through NetnsCommand), and returns once it hands out a
// token there (at most 15s). args come first on its command line: a
// subcommand if any ("events", "spot"; none is the root command, which
// mocks every path) and its flags; StartAEMM's --hostname, --port,
// --imdsv2 and --config-file follow them.
//
// dir, AEMM's own (its working directory and HOME), receives its config
// (aemm-config.json) and its output (aemm.log, see Log); nothing of the
// caller's environment reaches it. An addr with port 0 means a port free
// in ns when asked: tried up to 3 times, since something else may take it
// first. Stop ends it.
func StartAEMM(ns, bin, dir string, addr netip.AddrPort, cfg AEMMConfig, args ...string) (*AEMM, error) {
	if !addr.Addr().IsValid() {
		return nil, fmt.Errorf("starting AEMM: invalid address %v", addr)
	}
	cfgPath := filepath.Join(dir, "aemm-config.json")
	if err := os.WriteFile(cfgPath, cfg.withDefaults().configFile(time.Now()), 0o600); err != nil {
		return nil, fmt.Errorf("starting AEMM: %w", err)
	}
	tries := 1
	if addr.Port() == 0 {
		tries = 3
	}
	var errs []error
	for range tries {
		at := addr
		if at.Port() == 0 {
			p, err := freePortIn(ns, addr.Addr())
			if err != nil {
				return nil, fmt.Errorf("starting AEMM: %w", err)
			}
			at = netip.AddrPortFrom(addr.Addr(), p)
		}
		a, err := runAEMM(ns, bin, dir, at, slices.Concat(args, []string{"--hostname", at.Addr().String(),
			"--port", strconv.Itoa(int(at.Port())), "--imdsv2", "--config-file", cfgPath}))
		if err == nil {
			return a, nil
		}
		errs = append(errs, err)
	}
	return nil, fmt.Errorf("starting AEMM: %w", errors.Join(errs...))
}

func runAEMM(ns, bin, dir string, addr netip.AddrPort, args []string) (*AEMM, error) {
	a := &AEMM{addr: addr, log: filepath.Join(dir, "aemm.log"), exited: make(chan struct{})}
	logf, err := os.Create(a.log)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	if ns == "" {
		a.cmd = exec.Command(bin, args...)
	} else {
		// ip netns exec execs bin: the pid is AEMM's.
		a.cmd = NetnsCommand(ns, append([]string{bin}, args...)...)
	}
	a.cmd.Dir = dir
	a.cmd.Env = []string{"HOME=" + dir} // no AEMM_* settings from outside
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // not in the caller's terminal's signals
	if err := a.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { _ = a.cmd.Wait(); close(a.exited) }()

	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	if ns != "" {
		tr = nsTransport(ns, "tcp", false)
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: time.Second}
	for deadline := time.Now().Add(aemmReady); ; {
		select {
		case <-a.exited:
			return nil, fmt.Errorf("%s %s exited: %s", bin, strings.Join(args, " "), tail([]byte(a.Log())))
		default:
		}
		if tokenOK(client, a.URL()) {
			return a, nil
		}
		if time.Now().After(deadline) {
			a.Stop()
			return nil, fmt.Errorf("no IMDSv2 token from %s within %s: %s", a.URL(), aemmReady, tail([]byte(a.Log())))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tokenOK reports whether url hands out an IMDSv2 token.
func tokenOK(c *http.Client, url string) bool {
	req, err := http.NewRequest(http.MethodPut, url+"/latest/api/token", nil)
	if err != nil {
		return false
	}
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// freePortIn returns a TCP port of addr that nothing in netns ns ("" the
// current one) listens on, now.
func freePortIn(ns string, addr netip.Addr) (uint16, error) {
	var port uint16
	listen := func() error {
		l, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
		if err != nil {
			return fmt.Errorf("finding a free port on %s: %w", addr, err)
		}
		defer l.Close()
		port = uint16(l.Addr().(*net.TCPAddr).Port)
		return nil
	}
	if ns == "" {
		return port, listen()
	}
	return port, InNetns(ns, listen)
}

// Addr is where AEMM listens.
func (a *AEMM) Addr() netip.AddrPort { return a.addr }

// URL is AEMM's base URL, such as "http://192.0.2.2:18092", the endpoint
// of an IMDS client.
func (a *AEMM) URL() string { return "http://" + a.addr.String() }

// Stop kills AEMM (SIGKILL to its pid) and waits until it has exited;
// again, it does nothing.
func (a *AEMM) Stop() {
	a.stopped.Do(func() {
		_ = a.cmd.Process.Kill()
		<-a.exited
	})
}

// Log is what AEMM printed (stdout and stderr).
func (a *AEMM) Log() string {
	b, _ := os.ReadFile(a.log)
	return string(b)
}
