package agent

import "github.com/coreos/go-systemd/v22/daemon"

// sd_notify messages the daemon loop sends.
const (
	notifyReady    = daemon.SdNotifyReady
	notifyStopping = daemon.SdNotifyStopping
	notifyWatchdog = daemon.SdNotifyWatchdog
)

// Notifier sends sd_notify messages ("READY=1", "STATUS=…", "WATCHDOG=1");
// the daemon package's NewSystemdNotifier is the real one.
type Notifier interface{ Notify(state string) error }

// NopNotifier is the Notifier outside systemd.
type NopNotifier struct{}

func (NopNotifier) Notify(string) error { return nil }
