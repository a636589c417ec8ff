//go:build integration

package sandbox

import (
	"net"
	"os"
	"testing"
)

func TestInNetnsIsolatesSockets(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	name := "pa-t-netns"
	if err := CreateNetns(name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = DeleteNetns(name) })
	// A listener on loopback inside the namespace is not reachable from here.
	var addr string
	err := InNetns(name, func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr = l.Addr().String()
		t.Cleanup(func() { l.Close() })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatalf("dialled %s from the host namespace: the listener leaked out of the netns", addr)
	}
	if err := InNetns(name, func() error {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	}); err != nil {
		t.Fatalf("dial inside netns: %v", err)
	}
	if err := DeleteNetns(name); err != nil {
		t.Fatal(err)
	}
	if err := DeleteNetns(name); err != nil {
		t.Fatalf("second delete is not idempotent: %v", err)
	}
}
