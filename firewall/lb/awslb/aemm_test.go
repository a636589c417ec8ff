package awslb

// The tests talk to the real IMDS emulator, AWS's amazon-ec2-metadata-mock
// (AEMM), the version go.mod requires. Its packages keep the server, the
// routes and the issued tokens in package globals and serve with
// http.ListenAndServe (no shutdown, no port 0), and the main module does
// not require its dependencies (cobra, viper, mux), so it is not run in
// process: its command is built once from the module cache, in its own
// module, and each test starts its own process of it on a free loopback
// port. One process per test also keeps concurrent tests off AEMM's
// unsynchronised token map.

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// aemmModule is AEMM at the version the tests run: named here, not in
// go.mod, since no package of ours imports it (go mod tidy would drop it).
const aemmModule = "github.com/aws/amazon-ec2-metadata-mock@v1.13.0"

// What the tests' AEMM serves: distinctive values, none AEMM's defaults.
var want = Identity{
	InstanceID:       "i-0feedfacecafe0042",
	Region:           "ap-southeast-7",
	AvailabilityZone: "ap-southeast-7c",
}

const wantAccessKey = "AKIDPATCHAGENTAEMM01"

var (
	aemmTmp   string // holds the binary; removed by TestMain
	aemmOnce  sync.Once
	aemmBin   string
	aemmError error
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "awslb-aemm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	aemmTmp = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// aemmBinary builds AEMM's command once per test binary and returns its
// path, failing t with the reason if it cannot.
func aemmBinary(t *testing.T) string {
	t.Helper()
	aemmOnce.Do(func() { aemmBin, aemmError = buildAEMM() })
	if aemmError != nil {
		t.Fatalf("cannot build AEMM, the IMDS emulator these tests run: %v", aemmError)
	}
	return aemmBin
}

func buildAEMM() (string, error) {
	gotool, err := exec.LookPath("go")
	if err != nil {
		return "", err
	}
	// The module's directory in the module cache (downloaded through the
	// proxy if not there yet).
	out, err := exec.Command(gotool, "mod", "download", "-json", aemmModule).Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s: %w: %s", aemmModule, err, stderrOf(err))
	}
	var mod struct{ Dir, Version, Error string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		return "", fmt.Errorf("go mod download %s: no directory (%v %s)", aemmModule, err, mod.Error)
	}
	bin := filepath.Join(aemmTmp, "ec2-metadata-mock")
	build := exec.Command(gotool, "build", "-o", bin, "./cmd/ec2-metadata-mock")
	build.Dir = mod.Dir // AEMM's own go.mod and go.sum decide its dependencies
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build %s/cmd/ec2-metadata-mock: %w\n%s", aemmModule, err, out)
	}
	return bin, nil
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return strings.TrimSpace(string(ee.Stderr))
	}
	return ""
}

// startAEMM runs AEMM in IMDSv2-only mode (--imdsv2) on a free loopback
// port with the distinctive values above, with the subcommand and flags
// given ("" for the root command, which mocks every path), and returns
// its base URL once it hands out tokens. It is stopped when t ends.
func startAEMM(t *testing.T, subcommand string, flags ...string) string {
	t.Helper()
	bin := aemmBinary(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "aemm-config.json")
	if err := os.WriteFile(cfg, aemmConfig(), 0o600); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for range 3 { // another process may take the free port first
		port := freePort(t)
		var args []string
		if subcommand != "" {
			args = append(args, subcommand)
		}
		args = append(args, "--hostname", "127.0.0.1", "--port", port, "--imdsv2", "--config-file", cfg)
		args = append(args, flags...)
		url, err := runAEMM(t, bin, dir, port, args)
		if err == nil {
			return url
		}
		lastErr = err
	}
	t.Fatalf("AEMM did not start: %v", lastErr)
	return ""
}

func runAEMM(t *testing.T, bin, dir, port string, args []string) (string, error) {
	logPath := filepath.Join(dir, "aemm.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = []string{"HOME=" + dir} // no AEMM_* settings from outside
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return "", err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() { cmd.Process.Kill(); <-exited }

	url := "http://127.0.0.1:" + port
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(logPath)
			return "", fmt.Errorf("%s %s exited: %s", bin, strings.Join(args, " "), tail(log))
		default:
		}
		if tokenOK(url) {
			break
		}
		if time.Now().After(deadline) {
			stop()
			return "", fmt.Errorf("no token from %s within 15s", url)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			log, _ := os.ReadFile(logPath)
			t.Logf("AEMM %s log (tail):\n%s", strings.Join(args, " "), tail(log))
		}
	})
	return url, nil
}

// tokenOK reports whether url hands out an IMDSv2 token.
func tokenOK(url string) bool {
	req, _ := http.NewRequest(http.MethodPut, url+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := (&http.Client{Timeout: time.Second}).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// aemmConfig is AEMM's --config-file: the identity both as metadata paths
// and as the instance identity document, and instance-profile credentials
// that have not expired (AEMM's default ones have).
func aemmConfig() []byte {
	cfg := map[string]any{
		"metadata": map[string]any{"values": map[string]any{
			"instance-id":                 want.InstanceID,
			"placement-region":            want.Region,
			"placement-availability-zone": want.AvailabilityZone,
			"iam-security-credentials": map[string]any{
				"Code":            "Success",
				"LastUpdated":     time.Now().UTC().Format(time.RFC3339),
				"Type":            "AWS-HMAC",
				"AccessKeyId":     wantAccessKey,
				"SecretAccessKey": "secret-of-the-aemm-test-instance-profile",
				"Token":           "session-token-of-the-aemm-test-instance-profile",
				"Expiration":      time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
			},
		}},
		"dynamic": map[string]any{"values": map[string]any{
			"instance-identity-document": map[string]any{
				"instanceId":       want.InstanceID,
				"region":           want.Region,
				"availabilityZone": want.AvailabilityZone,
				"accountId":        "000011112222",
			},
		}},
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		panic(err)
	}
	return b
}

// freePort returns a loopback TCP port nothing listens on (now).
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	return port
}

func tail(b []byte) string {
	const n = 3000
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
