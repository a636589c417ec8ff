package awslb

// The tests talk to the real IMDS emulator, AWS's amazon-ec2-metadata-mock
// (AEMM), the version sandbox.AEMMModule names: built once per test binary
// (sandbox.BuildAEMM), one process of it per test (sandbox.StartAEMM) on a
// free loopback port.

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/patchagent/patchagent/deploy/testbed/sandbox"
)

// What the tests' AEMM serves: distinctive values, none AEMM's defaults.
var want = Identity{
	InstanceID:       "i-0feedfacecafe0042",
	Region:           "ap-southeast-7",
	AvailabilityZone: "ap-southeast-7c",
}

const wantAccessKey = "AKIDPATCHAGENTAEMM01"

var aemmConfig = sandbox.AEMMConfig{
	InstanceID:       want.InstanceID,
	Region:           want.Region,
	AvailabilityZone: want.AvailabilityZone,
	AccessKeyID:      wantAccessKey,
	SecretAccessKey:  "secret-of-the-aemm-test-instance-profile",
	Token:            "session-token-of-the-aemm-test-instance-profile",
}

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
	aemmOnce.Do(func() { aemmBin, aemmError = sandbox.BuildAEMM(aemmTmp) })
	if aemmError != nil {
		t.Fatalf("cannot build AEMM, the IMDS emulator these tests run: %v", aemmError)
	}
	return aemmBin
}

// startAEMM runs AEMM in IMDSv2-only mode on a free loopback port with the
// distinctive values above, with the subcommand and flags given ("" for
// the root command, which mocks every path), and returns its base URL
// once it hands out tokens. It is stopped when t ends.
func startAEMM(t *testing.T, subcommand string, flags ...string) string {
	t.Helper()
	var args []string
	if subcommand != "" {
		args = append(args, subcommand)
	}
	args = append(args, flags...)
	a, err := sandbox.StartAEMM("", aemmBinary(t), t.TempDir(), netip.MustParseAddrPort("127.0.0.1:0"), aemmConfig, args...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Stop()
		if t.Failed() {
			log := a.Log()
			if len(log) > 3000 {
				log = log[len(log)-3000:]
			}
			t.Logf("AEMM %s log (tail):\n%s", strings.Join(args, " "), log)
		}
	})
	return a.URL()
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
