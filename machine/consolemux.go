package machine

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Console socket limits.
const (
	// ConsoleReplayMax is how much of the console's latest output a client
	// is sent when it connects, so that an administrator attaching to a
	// held machine sees its last lines (a login prompt) at once.
	ConsoleReplayMax = 8 << 10
	// consoleFlushTimeout bounds how long a closing console waits for a
	// client to take the output still queued for it.
	consoleFlushTimeout = time.Second
	// consoleClientsMax is how many clients the console serves at once;
	// one more is told so and disconnected.
	consoleClientsMax = 16
)

// consoleClientQueueMax bounds the output queued for one console client
// beyond what its socket buffers; a client that falls this far behind
// (one that does not read) is dropped. A variable: tests lower it.
var consoleClientQueueMax = 256 << 10

// consoleMux is QEMU's serial console as the agent serves it: the
// output (QEMU's stdout) goes to the bounded console log and to every
// client of the console socket; what clients send goes to QEMU's stdin.
// The output side never blocks on a client: each has a bounded queue and
// its own writer, and one whose queue is full is dropped. The log is
// written first, whatever the clients do.
type consoleMux struct {
	log    io.Writer      // the console log
	in     io.WriteCloser // QEMU's stdin
	ln     net.Listener
	logger *slog.Logger
	name   string // the machine's, for the log

	inMu sync.Mutex // one client's input chunk at a time into stdin

	mu      sync.Mutex
	replay  []byte // the latest output, at most 2 × ConsoleReplayMax
	clients map[*consoleClient]struct{}
	closed  bool
	logErr  bool // the console log's first write error was reported

	wg sync.WaitGroup // the accept loop and every client's goroutines
}

// consoleClient is one connection to the console socket.
type consoleClient struct {
	conn net.Conn
	wake chan struct{} // capacity 1: output queued, or closing

	mu      sync.Mutex
	queue   []byte // output not yet taken by the writer
	closing bool   // the console closed: flush the queue, then end
	gone    bool   // dropped or disconnected: end now
}

// newConsoleMux serves the console on ln: it takes ln, and closes it and
// in when closed. replay is output from before (a console taken over).
func newConsoleMux(log io.Writer, in io.WriteCloser, ln net.Listener, logger *slog.Logger, name string, replay []byte) *consoleMux {
	m := &consoleMux{log: log, in: in, ln: ln, logger: logger, name: name, replay: replay, clients: map[*consoleClient]struct{}{}}
	m.wg.Add(1)
	go m.accept()
	return m
}

// accept serves the socket until it is closed. Other errors (EMFILE, say)
// are retried after a pause, as net/http does: 5 ms doubling to 1 s.
func (m *consoleMux) accept() {
	defer m.wg.Done()
	var pause time.Duration
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if pause == 0 {
				pause = 5 * time.Millisecond
				m.logger.Warn("console socket: accept failed, retrying", "name", m.name, "error", err)
			} else if pause *= 2; pause > time.Second {
				pause = time.Second
			}
			time.Sleep(pause)
			continue
		}
		pause = 0
		m.add(conn)
	}
}

// add registers a client and queues the replay for it; under mu, so that
// the client sees every byte after the replay exactly once.
func (m *consoleMux) add(conn net.Conn) {
	c := &consoleClient{conn: conn, wake: make(chan struct{}, 1)}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		conn.Close()
		return
	}
	if len(m.clients) >= consoleClientsMax {
		m.mu.Unlock()
		m.logger.Warn("console client refused: too many", "name", m.name, "clients", consoleClientsMax)
		conn.SetWriteDeadline(time.Now().Add(time.Second))
		fmt.Fprintf(conn, "bbot-agent: console busy: %d clients already attached\r\n", consoleClientsMax)
		conn.Close()
		return
	}
	c.queue = append(c.queue, replayTail(m.replay)...)
	c.signal()
	m.clients[c] = struct{}{}
	n := len(m.clients)
	m.wg.Add(2)
	m.mu.Unlock()
	m.logger.Info("console client connected", "name", m.name, "clients", n)
	go m.writer(c)
	go m.reader(c)
}

// replayTail is the last ConsoleReplayMax bytes of b, from the start of a
// line when b holds more than that, so the replay does not begin mid-line.
func replayTail(b []byte) []byte {
	if len(b) <= ConsoleReplayMax {
		return b
	}
	b = b[len(b)-ConsoleReplayMax:]
	if i := bytes.IndexByte(b, '\n'); i >= 0 && i+1 < len(b) {
		b = b[i+1:]
	}
	return b
}

// Write takes the console's output: the log first, then every client's
// queue. It never waits for a client, and never fails: a log write error
// (ENOSPC) is reported once, and the clients still get everything.
func (m *consoleMux) Write(p []byte) (int, error) {
	_, err := m.log.Write(p)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil && !m.logErr {
		m.logErr = true
		m.logger.Error("console log: write failed; the clients still get the output", "name", m.name, "error", err)
	}
	m.replay = append(m.replay, p...)
	if len(m.replay) > 2*ConsoleReplayMax {
		m.replay = append(m.replay[:0], m.replay[len(m.replay)-ConsoleReplayMax:]...)
	}
	for c := range m.clients {
		if !c.enqueue(p) {
			m.dropLocked(c)
			m.logger.Warn("console client dropped: it did not keep up with the output", "name", m.name,
				"queued", fmt.Sprintf("%d KiB", consoleClientQueueMax>>10), "clients", len(m.clients))
		}
	}
	return len(p), nil
}

// enqueue queues p for the writer, or reports a full queue.
func (c *consoleClient) enqueue(p []byte) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.queue)+len(p) > consoleClientQueueMax {
		return false
	}
	c.queue = append(c.queue, p...)
	c.signal()
	return true
}

func (c *consoleClient) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// dropLocked forgets a client and closes its connection, which ends its
// writer and reader.
func (m *consoleMux) dropLocked(c *consoleClient) {
	delete(m.clients, c)
	c.conn.Close()
	c.mu.Lock()
	c.gone = true
	c.mu.Unlock()
	c.signal()
}

func (m *consoleMux) remove(c *consoleClient, why string) {
	m.mu.Lock()
	_, ok := m.clients[c]
	if ok {
		m.dropLocked(c)
	}
	n := len(m.clients)
	m.mu.Unlock()
	if ok {
		m.logger.Info("console client disconnected", "name", m.name, "why", why, "clients", n)
	}
}

// writer sends a client its queued output, one swap of the queue at a time.
func (m *consoleMux) writer(c *consoleClient) {
	defer m.wg.Done()
	var buf []byte
	for range c.wake {
		c.mu.Lock()
		buf, c.queue = c.queue, buf[:0]
		closing, gone := c.closing, c.gone
		c.mu.Unlock()
		if gone {
			return
		}
		if len(buf) > 0 {
			if _, err := c.conn.Write(buf); err != nil {
				m.remove(c, err.Error())
				c.conn.Close() // after Close, c is no longer listed
				return
			}
		}
		if closing {
			c.mu.Lock()
			more := len(c.queue) > 0
			c.mu.Unlock()
			if !more {
				c.conn.Close()
				return
			}
			c.signal()
		}
	}
}

// reader forwards what a client sends to QEMU's stdin. The end of a
// client's input is its disconnection (so a closed client does not linger
// while a paused machine prints nothing); to watch only, a client keeps
// its end open (socat -u).
func (m *consoleMux) reader(c *consoleClient) {
	defer m.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, err := c.conn.Read(buf)
		if n > 0 {
			m.inMu.Lock()
			_, werr := m.in.Write(buf[:n])
			m.inMu.Unlock()
			if werr != nil && !errors.Is(werr, os.ErrClosed) {
				m.logger.Debug("console input not delivered", "name", m.name, "error", werr)
			}
		}
		if err != nil {
			m.remove(c, "closed by the client")
			return
		}
	}
}

// Close stops serving: no new client, the socket file removed, every
// client sent what is queued for it (for at most consoleFlushTimeout) and
// disconnected, QEMU's stdin closed. Call it once the output has ended.
func (m *consoleMux) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	clients := m.clients
	m.clients = map[*consoleClient]struct{}{}
	m.mu.Unlock()
	err := m.ln.Close() // a *net.UnixListener unlinks its socket file
	// The deadline also ends a write already blocked on a client that
	// does not read.
	flushBy := time.Now().Add(consoleFlushTimeout)
	for c := range clients {
		c.conn.SetWriteDeadline(flushBy)
		c.mu.Lock()
		c.closing = true
		c.mu.Unlock()
		c.signal()
	}
	// Unblocks a reader stuck on a full pipe (QEMU not reading).
	m.in.Close()
	m.wg.Wait()
	return err
}

// listenConsole listens on the console socket path, mode 0600. A file
// left there is removed first only if it is a socket inside runDir (an
// earlier machine's); anything else is an error, never deleted.
func listenConsole(path, runDir string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 || !insideDir(runDir, path) {
			return nil, fmt.Errorf("console socket %s: a file is in the way (only a stale socket inside %s is removed)", path, runDir)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("console socket: removing the stale %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("console socket: %w", err)
	}
	// The run directory is 0700 already; the socket is closed to others
	// too, in case it is configured elsewhere.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("console socket: %w", err)
	}
	return ln, nil
}

// insideDir reports whether path lies strictly inside dir, lexically.
func insideDir(dir, path string) bool {
	rel, err := filepath.Rel(filepath.Clean(dir), filepath.Clean(path))
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}

// RemoveSocket removes path if it is a unix socket (a stale one, say), and
// leaves anything else alone. A missing file is no error.
func RemoveSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case fi.Mode()&fs.ModeSocket == 0:
		return fmt.Errorf("%s is not a socket: left alone", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
