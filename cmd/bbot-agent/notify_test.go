package main

import (
	"bytes"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent"
)

// TestNotify: READY=1 and STATUS= reach a unixgram NOTIFY_SOCKET.
func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv("NOTIFY_SOCKET", path)
	n := newNotifier(slog.New(slog.DiscardHandler))
	n.send("READY=1")
	n.send("STATUS=idle")
	buf := make([]byte, 256)
	for _, want := range []string{"READY=1", "STATUS=idle"} {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		k, err := conn.Read(buf)
		if err != nil || string(buf[:k]) != want {
			t.Fatalf("got %q, %v; want %q", buf[:k], err, want)
		}
	}
	t.Setenv("NOTIFY_SOCKET", "")
	newNotifier(slog.New(slog.DiscardHandler)).send("READY=1") // a no-op, no panic
}

// TestJournalLog: --systemd-daemon lines carry syslog priorities and no
// timestamps.
func TestJournalLog(t *testing.T) {
	var b bytes.Buffer
	log := logger(&agent.Options{SystemdDaemon: true, Verbose: 3}, &b)
	log.Error("broken", "k", 1)
	log.With("machine", "m").Warn("careful")
	log.Info("fine")
	log.Debug("detail")
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	want := []string{"<3>level=ERROR msg=broken k=1", "<4>level=WARN msg=careful machine=m", "<6>level=INFO msg=fine", "<7>level=DEBUG msg=detail"}
	if len(lines) != len(want) {
		t.Fatalf("got %q", lines)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: %q, want %q", i, lines[i], want[i])
		}
	}
}
