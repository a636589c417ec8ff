//go:build integration

package sandbox

import (
	"encoding/json"
	"io"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// StartAEMM in a netns: it serves the configured identity there, IMDSv2
// only, on a port it picked itself; Stop kills it and waits; an AEMM that
// cannot start is reported with what it printed.
func TestAEMMInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ns := "pa-t-aemm"
	if err := CreateNetns(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNetns(ns) })
	bin, err := BuildAEMM(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := AEMMConfig{InstanceID: "i-0a0e0000000000777", Region: "eu-north-1"}
	a, err := StartAEMM(ns, bin, t.TempDir(), netip.MustParseAddrPort("127.0.0.1:0"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Stop)
	if a.Addr().Port() == 0 || a.URL() != "http://"+a.Addr().String() {
		t.Fatalf("addr %v, URL %s", a.Addr(), a.URL())
	}
	c := &http.Client{Transport: nsTransport(ns, "tcp", false), Timeout: 3 * time.Second}
	get := func(token string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, a.URL()+"/latest/dynamic/instance-identity/document", nil)
		if token != "" {
			req.Header.Set("X-aws-ec2-metadata-token", token)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(""); code != http.StatusUnauthorized {
		t.Fatalf("without a token: %d, want 401 (IMDSv2 only)", code)
	}
	req, _ := http.NewRequest(http.MethodPut, a.URL()+"/latest/api/token", nil)
	req.Header.Set("X-aws-ec2-metadata-token-ttl-seconds", "60")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	token, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	code, body := get(string(token))
	var doc struct{ InstanceID, Region, AvailabilityZone, AccountID string }
	if err := json.Unmarshal([]byte(body), &doc); code != 200 || err != nil {
		t.Fatalf("identity document: %d %v\n%s", code, err, body)
	}
	if doc.InstanceID != cfg.InstanceID || doc.Region != cfg.Region || doc.AvailabilityZone != "eu-north-1a" || doc.AccountID != "000011112222" {
		t.Fatalf("identity document %+v, want %+v with defaults", doc, cfg)
	}

	pid := a.cmd.Process.Pid
	a.Stop()
	a.Stop() // again: nothing
	if err := syscall.Kill(pid, 0); err == nil {
		t.Fatalf("pid %d still exists after Stop", pid)
	}

	_, err = StartAEMM(ns, bin, t.TempDir(), netip.MustParseAddrPort("127.0.0.1:0"), cfg, "--no-such-flag")
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Fatalf("AEMM with a bad flag: %v", err)
	}
}
