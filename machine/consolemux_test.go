package machine

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// syncBuffer is a console log the test can read while the mux writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// muxHarness is a console mux on a real socket, with a pipe for QEMU's
// stdin (stdin is its read end).
type muxHarness struct {
	mux   *consoleMux
	log   *syncBuffer
	stdin *os.File
	path  string
}

func newMuxHarness(t *testing.T) *muxHarness {
	return newMuxHarnessWith(t, func(ln net.Listener) net.Listener { return ln })
}

// newMuxHarnessWith serves the console on wrap(the socket's listener).
func newMuxHarnessWith(t *testing.T, wrap func(net.Listener) net.Listener) *muxHarness {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, ConsoleSocketName)
	ln, err := listenConsole(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &muxHarness{log: &syncBuffer{}, stdin: r, path: path}
	h.mux = newConsoleMux(h.log, w, wrap(ln), slog.New(slog.DiscardHandler), "test", nil)
	t.Cleanup(func() { h.mux.Close(); r.Close() })
	return h
}

func (h *muxHarness) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", h.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// clients waits until the mux lists n clients (a connection is listed
// once accepted, asynchronously).
func (h *muxHarness) clients(t *testing.T, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		h.mux.mu.Lock()
		got := len(h.mux.clients)
		h.mux.mu.Unlock()
		if got == n {
			return
		}
	}
	t.Fatalf("the console does not list %d clients", n)
}

// readN reads exactly len(want) bytes from c and compares.
func readN(t *testing.T, c net.Conn, want string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("reading %q: got %q, %v", want, got, err)
	}
	if string(got) != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func (h *muxHarness) write(t *testing.T, s string) {
	t.Helper()
	if n, err := h.mux.Write([]byte(s)); n != len(s) || err != nil {
		t.Fatalf("write: %d, %v", n, err)
	}
}

// TestConsoleMuxFanOut: every client gets the output from its connection
// on, after the replay of what came before; the log gets all of it.
func TestConsoleMuxFanOut(t *testing.T) {
	h := newMuxHarness(t)
	h.write(t, "boot line 1\n")
	a := h.dial(t)
	h.clients(t, 1)
	readN(t, a, "boot line 1\n") // the replay
	h.write(t, "login: ")
	readN(t, a, "login: ")
	b := h.dial(t)
	h.clients(t, 2)
	readN(t, b, "boot line 1\nlogin: ") // the replay, up to its connection
	h.write(t, "root\n")
	readN(t, a, "root\n")
	readN(t, b, "root\n")
	if got := h.log.String(); got != "boot line 1\nlogin: root\n" {
		t.Errorf("console log %q", got)
	}
}

// TestConsoleMuxReplay: a client connecting after much output gets the
// last ConsoleReplayMax bytes at most, from a line's start, then the live
// output.
func TestConsoleMuxReplay(t *testing.T) {
	h := newMuxHarness(t)
	var all strings.Builder
	for i := range 2000 { // about 30 KiB
		line := fmt.Sprintf("boot message %05d\n", i)
		all.WriteString(line)
		h.write(t, line)
	}
	c := h.dial(t)
	h.clients(t, 1)
	h.write(t, "login: ")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.HasSuffix(got, []byte("login: ")) {
		n, err := c.Read(buf)
		if err != nil {
			t.Fatalf("after %d bytes: %v", len(got), err)
		}
		got = append(got, buf[:n]...)
	}
	replay := got[:len(got)-len("login: ")]
	switch {
	case len(replay) > ConsoleReplayMax || len(replay) < ConsoleReplayMax-100:
		t.Errorf("replay of %d bytes, want about %d", len(replay), ConsoleReplayMax)
	case !strings.HasSuffix(all.String(), string(replay)):
		t.Errorf("replay is not the tail of the output: %q...", replay[:40])
	case !bytes.HasPrefix(replay, []byte("boot message ")):
		t.Errorf("replay starts mid-line: %q", replay[:40])
	}
}

// TestConsoleMuxSlowClient: a client that never reads is dropped once its
// queue is full; the writer (QEMU's output) never waits, and the client
// that reads gets every byte, as does the log.
func TestConsoleMuxSlowClient(t *testing.T) {
	defer func(n int) { consoleClientQueueMax = n }(consoleClientQueueMax)
	consoleClientQueueMax = 64 << 10
	h := newMuxHarness(t)
	stalled := h.dial(t) // never read
	reader := h.dial(t)
	h.clients(t, 2)
	var want bytes.Buffer
	received := make(chan []byte)
	go func() {
		var got []byte
		buf := make([]byte, 64<<10)
		reader.SetReadDeadline(time.Now().Add(60 * time.Second))
		for {
			n, err := reader.Read(buf)
			got = append(got, buf[:n]...)
			if err != nil || bytes.HasSuffix(got, []byte("END\n")) {
				received <- got
				return
			}
		}
	}()
	// 4 MiB, far beyond the stalled client's socket buffer and queue, at
	// most 16 KiB a millisecond (a fast console; the reading client's
	// queue holds 4 ms of it).
	done := make(chan struct{})
	go func() {
		defer close(done)
		line := strings.Repeat("x", 1023) + "\n"
		for i := range 4 << 10 {
			h.mux.Write([]byte(line))
			want.WriteString(line)
			if i%16 == 15 {
				time.Sleep(time.Millisecond)
			}
		}
		h.mux.Write([]byte("END\n"))
		want.WriteString("END\n")
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the output blocked on a client that does not read")
	}
	h.clients(t, 1)
	got := <-received
	if !bytes.Equal(got, want.Bytes()) {
		t.Errorf("the reading client got %d bytes of %d", len(got), want.Len())
	}
	if h.log.String() != want.String() {
		t.Errorf("the log got %d bytes of %d", len(h.log.String()), want.Len())
	}
	// The dropped client's connection ends (after what its buffer held).
	stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, stalled); err != nil {
		t.Errorf("dropped client: %v, want EOF", err)
	}
}

// TestConsoleMuxInput: what clients send arrives at QEMU's stdin.
func TestConsoleMuxInput(t *testing.T) {
	h := newMuxHarness(t)
	a, b := h.dial(t), h.dial(t)
	h.clients(t, 2)
	in := bufio.NewReader(h.stdin)
	for _, c := range []struct {
		conn net.Conn
		line string
	}{{a, "root\n"}, {b, "uname -a\n"}, {a, "exit\n"}} {
		if _, err := c.conn.Write([]byte(c.line)); err != nil {
			t.Fatal(err)
		}
		h.stdin.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := in.ReadString('\n')
		if err != nil || got != c.line {
			t.Fatalf("stdin got %q, %v; want %q", got, err, c.line)
		}
	}
}

// TestConsoleMuxClose: closing flushes what is queued to the clients and
// disconnects them, removes the socket file, closes QEMU's stdin, and
// takes no new client; a client that does not read delays it by the
// flush timeout at most.
func TestConsoleMuxClose(t *testing.T) {
	defer func(n int) { consoleClientQueueMax = n }(consoleClientQueueMax)
	consoleClientQueueMax = 4 << 20
	h := newMuxHarness(t)
	a := h.dial(t)
	stalled := h.dial(t)
	h.clients(t, 2)
	// Enough for the stalled client's socket buffer to fill: its writer
	// is blocked when the console closes.
	h.write(t, strings.Repeat("y", 2<<20))
	h.write(t, "bye\n")
	t0 := time.Now()
	got := make(chan []byte)
	go func() {
		a.SetReadDeadline(time.Now().Add(10 * time.Second))
		b, _ := io.ReadAll(a)
		got <- b
	}()
	if err := h.mux.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if d := time.Since(t0); d > consoleFlushTimeout+2*time.Second {
		t.Errorf("close took %s with a client that does not read", d)
	}
	if b := <-got; len(b) != 2<<20+4 || !bytes.HasSuffix(b, []byte("bye\n")) {
		t.Errorf("the reading client got %d bytes before EOF, want %d", len(b), 2<<20+4)
	}
	if _, err := os.Lstat(h.path); !os.IsNotExist(err) {
		t.Errorf("socket file after close: %v", err)
	}
	h.stdin.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := h.stdin.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("QEMU's stdin after close: %d, %v; want EOF", n, err)
	}
	if c, err := net.Dial("unix", h.path); err == nil {
		c.Close()
		t.Error("a client connected after close")
	}
	stalled.Close()
	if err := h.mux.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestListenConsoleStale: a stale socket inside the run directory is
// replaced; a socket outside it, or a file that is not a socket, is left
// alone and refused.
func TestListenConsoleStale(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, ConsoleSocketName)
	old, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close() // a crashed agent's: the file stays
	ln, err := listenConsole(path, dir)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v, %v", fi.Mode(), err)
	}
	ln.Close()

	other := t.TempDir()
	outside := filepath.Join(other, "elsewhere.sock")
	o, err := net.ListenUnix("unix", &net.UnixAddr{Name: outside, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	o.SetUnlinkOnClose(false)
	o.Close()
	if _, err := listenConsole(outside, dir); err == nil {
		t.Error("a socket outside the run directory was replaced")
	}
	if _, err := os.Lstat(outside); err != nil {
		t.Errorf("the socket outside the run directory: %v", err)
	}
	file := filepath.Join(dir, "not-a-socket")
	os.WriteFile(file, []byte("keep"), 0o600)
	if _, err := listenConsole(file, dir); err == nil {
		t.Error("a regular file was replaced")
	}
	if data, _ := os.ReadFile(file); string(data) != "keep" {
		t.Error("the regular file was removed")
	}
}

// TestConsoleMuxClientCap: the console serves consoleClientsMax clients;
// one more is told so in a line and disconnected, the others unaffected;
// once one leaves, a new client is served again.
func TestConsoleMuxClientCap(t *testing.T) {
	h := newMuxHarness(t)
	conns := make([]net.Conn, consoleClientsMax)
	for i := range conns {
		conns[i] = h.dial(t)
	}
	h.clients(t, consoleClientsMax)
	extra := h.dial(t)
	extra.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(extra)
	if err != nil || !strings.Contains(string(b), "console busy") || strings.Count(string(b), "\n") != 1 {
		t.Errorf("the client over the cap got %q, %v; want one line, then EOF", b, err)
	}
	h.clients(t, consoleClientsMax)
	h.write(t, "still here\n")
	for _, c := range conns {
		readN(t, c, "still here\n")
	}
	conns[0].Close()
	h.clients(t, consoleClientsMax-1)
	again := h.dial(t)
	h.clients(t, consoleClientsMax)
	readN(t, again, "still here\n") // the replay
}

// failingLog fails every write, like a console log on a full /run.
type failingLog struct{ n int }

func (f *failingLog) Write(p []byte) (int, error) { f.n++; return 0, syscall.ENOSPC }

// TestConsoleMuxLogError: a console log that cannot be written does not
// cut the clients off: Write succeeds and they get the output.
func TestConsoleMuxLogError(t *testing.T) {
	h := newMuxHarness(t)
	log := &failingLog{}
	h.mux.log = log
	c := h.dial(t)
	h.clients(t, 1)
	for _, s := range []string{"one\n", "two\n"} {
		h.write(t, s) // fails the test unless len(p), nil
		readN(t, c, s)
	}
	if log.n != 2 {
		t.Errorf("the log was written %d times, want 2", log.n)
	}
}

// flakyListener fails its first Accepts with EMFILE.
type flakyListener struct {
	net.Listener
	mu    sync.Mutex
	fails int
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	if l.fails > 0 {
		l.fails--
		l.mu.Unlock()
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	l.mu.Unlock()
	return l.Listener.Accept()
}

// TestConsoleMuxAcceptRetry: transient accept errors (EMFILE) do not end
// the console: it is served once they pass.
func TestConsoleMuxAcceptRetry(t *testing.T) {
	h := newMuxHarnessWith(t, func(ln net.Listener) net.Listener { return &flakyListener{Listener: ln, fails: 5} })
	mux, path := h.mux, h.path
	mux.Write([]byte("hello\n"))
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readN(t, c, "hello\n")
}
