package main

import (
	"log/slog"
	"net"
	"os"
	"strconv"
	"time"
)

// notifier speaks systemd's notify protocol; without NOTIFY_SOCKET it does
// nothing.
type notifier struct {
	conn *net.UnixConn
	log  *slog.Logger
}

func newNotifier(log *slog.Logger) *notifier {
	n := &notifier{log: log}
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return n
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		log.Warn("systemd notify socket", "error", err)
		return n
	}
	n.conn = conn
	return n
}

// watchdogInterval is how often to ask for heartbeats and tell systemd
// WATCHDOG=1: half the WatchdogSec= systemd passes in WATCHDOG_USEC (as
// sd_watchdog_enabled(3) reads it), 0 when the watchdog is off or meant
// for another process.
func watchdogInterval() time.Duration {
	usec, err := strconv.ParseUint(os.Getenv("WATCHDOG_USEC"), 10, 63)
	if err != nil || usec == 0 {
		return 0
	}
	if pid := os.Getenv("WATCHDOG_PID"); pid != "" && pid != strconv.Itoa(os.Getpid()) {
		return 0
	}
	return time.Duration(usec) * time.Microsecond / 2
}

func (n *notifier) send(state string) {
	if n.conn == nil {
		return
	}
	if _, err := n.conn.Write([]byte(state)); err != nil {
		n.log.Debug("systemd notify", "error", err)
	}
}
