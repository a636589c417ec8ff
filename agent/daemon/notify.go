package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// sd_notify messages the daemon sends.
const (
	notifyReady    = sd.SdNotifyReady
	notifyStopping = sd.SdNotifyStopping
	notifyWatchdog = sd.SdNotifyWatchdog
)

// Notifier sends sd_notify messages ("READY=1", "STATUS=…", "WATCHDOG=1").
type Notifier interface{ Notify(state string) error }

// nopNotifier is the notifier outside systemd.
type nopNotifier struct{}

func (nopNotifier) Notify(string) error { return nil }

// NewSystemdNotifier captures NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID
// once, then removes all three from the process environment: every child
// (pm2, npm, and iptables run by go-iptables, which inherit the environment)
// must not see them, or systemd logs "reception only permitted for main PID"
// and a child could ping the watchdog. The notifier keeps sending to the
// captured address itself ("@name" is an abstract socket). With no
// NOTIFY_SOCKET it is a no-op.
//
// watchdog is systemd's WatchdogSec for this process (0 = disabled); ping
// at least every watchdog/2. On an error (an unparsable WATCHDOG_USEC or
// WATCHDOG_PID) n is still a working notifier and watchdog is 0.
func NewSystemdNotifier() (n Notifier, watchdog time.Duration, err error) {
	addr := os.Getenv("NOTIFY_SOCKET")
	watchdog, werr := sd.SdWatchdogEnabled(true) // unsets WATCHDOG_USEC and WATCHDOG_PID
	if werr != nil {
		watchdog, err = 0, fmt.Errorf("reading systemd's watchdog settings (watchdog off): %w", werr)
	}
	if uerr := os.Unsetenv("NOTIFY_SOCKET"); uerr != nil {
		err = errors.Join(err, fmt.Errorf("unsetting NOTIFY_SOCKET: %w", uerr))
	}
	if addr == "" {
		return nopNotifier{}, 0, err
	}
	return &sdNotifier{addr: &net.UnixAddr{Name: addr, Net: "unixgram"}}, watchdog, err
}

// sdNotifier sends each message as one datagram to the captured socket.
type sdNotifier struct{ addr *net.UnixAddr }

func (s *sdNotifier) Notify(state string) error {
	conn, err := net.DialUnix("unixgram", nil, s.addr)
	if err != nil {
		return fmt.Errorf("connecting to systemd's notify socket %s: %w", s.addr.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("sending to systemd's notify socket %s: %w", s.addr.Name, err)
	}
	return nil
}
