package main

import (
	"log/slog"
	"net"
	"os"
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

func (n *notifier) send(state string) {
	if n.conn == nil {
		return
	}
	if _, err := n.conn.Write([]byte(state)); err != nil {
		n.log.Debug("systemd notify", "error", err)
	}
}
