package machine

import (
	"io"
	"os"
	"sync"
)

// DefaultConsoleLogMax is the console log's default cap.
const DefaultConsoleLogMax = 16 << 20

// consoleLog is a file that keeps at most max bytes: when a write would
// pass the cap, the older half is dropped, so the tail (what an
// administrator needs after a hang) survives.
type consoleLog struct {
	mu     sync.Mutex
	f      *os.File
	size   int64
	max    int64
	closed bool
}

func openConsoleLog(path string, max int64) (*consoleLog, error) {
	if max <= 0 {
		max = DefaultConsoleLogMax
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, err
	}
	return &consoleLog{f: f, max: max}, nil
}

// appendConsoleLog opens the log at path to go on with it (a console
// taken over): what is there stays, within max.
func appendConsoleLog(path string, max int64) (*consoleLog, error) {
	if max <= 0 {
		max = DefaultConsoleLogMax
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &consoleLog{f: f, size: fi.Size(), max: max}, nil
}

// tail returns the log's last n bytes at most.
func (c *consoleLog) tail(n int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	off := max(c.size-n, 0)
	b := make([]byte, c.size-off)
	k, _ := c.f.ReadAt(b, off)
	return b[:k]
}

func (c *consoleLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return len(p), nil // late output after exit is dropped, not an error
	}
	n := len(p)
	if int64(len(p)) > c.max/2 {
		p = p[int64(len(p))-c.max/2:]
	}
	if c.size+int64(len(p)) > c.max {
		if err := c.dropHead(c.size + int64(len(p)) - c.max/2); err != nil {
			return 0, err
		}
	}
	w, err := c.f.WriteAt(p, c.size)
	c.size += int64(w)
	if err != nil {
		return w, err
	}
	return n, nil
}

// dropHead removes the first n bytes of the log.
func (c *consoleLog) dropHead(n int64) error {
	if n > c.size {
		n = c.size
	}
	rest := make([]byte, c.size-n)
	if _, err := c.f.ReadAt(rest, n); err != nil && err != io.EOF {
		return err
	}
	if _, err := c.f.WriteAt(rest, 0); err != nil {
		return err
	}
	c.size = int64(len(rest))
	return c.f.Truncate(c.size)
}

func (c *consoleLog) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.f.Close()
}
