package tftp

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"
	"time"
)

// EventKind says what happened on a mapping.
type EventKind int

const (
	// FirstRequest: the first request reached the mapping (the machine is
	// alive), whatever its outcome.
	FirstRequest EventKind = iota
	// UploadCompleted: a PUT finished and the file is in place under its
	// real name.
	UploadCompleted
	// TransferFailed: a GET or PUT was refused or aborted.
	TransferFailed
)

func (k EventKind) String() string {
	return [...]string{"first-request", "upload-completed", "transfer-failed"}[k]
}

// Event is reported to Mapping.Notify.
type Event struct {
	Kind   EventKind
	Op     Op
	Name   string // the file name as the client sent it
	Size   int64  // bytes transferred
	Remote string
	Err    error // for TransferFailed
	Time   time.Time
}

// Default limits.
const (
	DefaultMaxFileSize = 256 << 20
	DefaultMaxTotal    = 1 << 30
)

// Fixed texts for clients: never a host path.
var (
	ErrBadName      = errors.New("access denied")
	ErrNotFound     = errors.New("not found")
	ErrTooLarge     = errors.New("too large")
	ErrWriteFailed  = errors.New("write failed")
	errNotReadable  = errors.New("not a regular file")
	errBudgetExceed = errors.New("upload budget exhausted")
)

// Mapping serves GETs from one directory and PUTs into another, confined
// through os.Root (no escape by "..", absolute names or symlinks). Uploads
// are written to a temporary name and renamed into place when complete.
type Mapping struct {
	// MaxFileSize caps one upload; MaxTotal caps all uploads of this
	// mapping together (bytes; defaults above; negative = unlimited).
	MaxFileSize int64
	MaxTotal    int64
	// Notify, if set, receives events. It is called from transfer
	// goroutines and must not block for long.
	Notify func(Event)
	// Log receives the real reasons behind the fixed client errors.
	Log *slog.Logger

	get, put *os.Root

	mu       sync.Mutex
	used     int64 // bytes of uploads completed or in progress
	seen     bool
	closed   bool
	inFlight sync.WaitGroup
}

// NewMapping opens getDir and putDir (either may be "" to refuse that
// direction).
func NewMapping(getDir, putDir string) (*Mapping, error) {
	m := &Mapping{MaxFileSize: DefaultMaxFileSize, MaxTotal: DefaultMaxTotal}
	var err error
	if getDir != "" {
		if m.get, err = os.OpenRoot(getDir); err != nil {
			return nil, err
		}
	}
	if putDir != "" {
		if m.put, err = os.OpenRoot(putDir); err != nil {
			m.Close()
			return nil, err
		}
	}
	return m, nil
}

// Close waits for transfers in progress and releases the directories.
func (m *Mapping) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.inFlight.Wait()
	var errs []error
	if m.get != nil {
		errs = append(errs, m.get.Close())
	}
	if m.put != nil {
		errs = append(errs, m.put.Close())
	}
	return errors.Join(errs...)
}

func (m *Mapping) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

func (m *Mapping) notify(e Event) {
	if m.Notify != nil {
		e.Time = time.Now()
		m.Notify(e)
	}
}

// CleanName maps a client's file name to a name relative to the mapped
// directory, or fails: empty names, control characters, backslashes and
// ".." elements are refused; one leading "/" is dropped (as the in.tftpd
// remap rule "^/?(.+)$" did), and what remains must be relative.
func CleanName(name string) (string, error) {
	if name == "" {
		return "", ErrBadName
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f || c == '\\' {
			return "", ErrBadName
		}
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", ErrBadName
		}
	}
	name = strings.TrimPrefix(name, "/")
	if name == "" || strings.HasPrefix(name, "/") {
		return "", ErrBadName
	}
	clean := path.Clean(name)
	if clean == "." || strings.HasPrefix(clean, "../") || strings.HasPrefix(clean, "/") {
		return "", ErrBadName
	}
	return clean, nil
}

// ServeTFTP implements Handler.
func (m *Mapping) ServeTFTP(r *Request) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errNoMapping
	}
	first := !m.seen
	m.seen = true
	m.inFlight.Add(1)
	m.mu.Unlock()
	defer m.inFlight.Done()

	if first {
		m.notify(Event{Kind: FirstRequest, Op: r.Op, Name: r.Filename, Remote: r.Remote.String()})
	}
	var n int64
	var err error
	if r.Op == Get {
		n, err = m.serveGet(r)
	} else {
		n, err = m.servePut(r)
	}
	if err != nil {
		m.notify(Event{Kind: TransferFailed, Op: r.Op, Name: r.Filename, Size: n, Remote: r.Remote.String(), Err: err})
		return err
	}
	if r.Op == Put {
		m.notify(Event{Kind: UploadCompleted, Op: Put, Name: r.Filename, Size: n, Remote: r.Remote.String()})
	}
	return nil
}

// clientError logs the real cause and returns the fixed text for clients.
func (m *Mapping) clientError(r *Request, public, cause error) error {
	m.log().Warn("tftp: refused", "op", r.Op.String(), "file", r.Filename, "remote", r.Remote.String(), "error", cause)
	return public
}

func (m *Mapping) serveGet(r *Request) (int64, error) {
	if m.get == nil {
		return 0, m.clientError(r, ErrNotFound, errors.New("no GET directory"))
	}
	name, err := CleanName(r.Filename)
	if err != nil {
		return 0, m.clientError(r, err, errors.New("bad name"))
	}
	// O_NONBLOCK so that a FIFO cannot stall the open.
	f, err := m.get.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, m.clientError(r, ErrNotFound, err)
		}
		return 0, m.clientError(r, ErrBadName, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0, m.clientError(r, ErrBadName, errors.Join(errNotReadable, err))
	}
	r.SetSize(fi.Size())
	if fi.Size() <= readAheadChunk {
		return r.ReadFrom(f)
	}
	ra := newReadAhead(f)
	defer ra.Close()
	return r.ReadFrom(ra)
}

// reserve takes n bytes from the mapping's budget.
func (m *Mapping) reserve(n int64) bool {
	if m.MaxTotal < 0 {
		return true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.used+n > m.MaxTotal {
		return false
	}
	m.used += n
	return true
}

func (m *Mapping) release(n int64) {
	m.mu.Lock()
	m.used -= n
	m.mu.Unlock()
}

// limitedWriter fails once more than the allowed bytes arrive; the bytes
// are taken from the mapping's budget as they come.
type limitedWriter struct {
	w       io.Writer
	m       *Mapping
	maxFile int64
	n       int64
}

func (l *limitedWriter) Write(p []byte) (int, error) {
	if l.maxFile >= 0 && l.n+int64(len(p)) > l.maxFile {
		return 0, ErrTooLarge
	}
	if !l.m.reserve(int64(len(p))) {
		return 0, errBudgetExceed
	}
	n, err := l.w.Write(p)
	l.n += int64(n)
	if n < len(p) {
		l.m.release(int64(len(p) - n))
	}
	return n, err
}

func (m *Mapping) servePut(r *Request) (int64, error) {
	if m.put == nil {
		return 0, m.clientError(r, ErrBadName, errors.New("no PUT directory"))
	}
	name, err := CleanName(r.Filename)
	if err != nil {
		return 0, m.clientError(r, err, errors.New("bad name"))
	}
	if size, ok := r.Size(); ok {
		if m.MaxFileSize >= 0 && size > m.MaxFileSize {
			return 0, m.clientError(r, ErrTooLarge, errors.New("announced size over the file cap"))
		}
		if m.MaxTotal >= 0 {
			m.mu.Lock()
			over := m.used+size > m.MaxTotal
			m.mu.Unlock()
			if over {
				return 0, m.clientError(r, ErrTooLarge, errBudgetExceed)
			}
		}
	}
	// The final name must not be something we may not replace.
	var replaced int64
	if fi, err := m.put.Lstat(name); err == nil {
		if !fi.Mode().IsRegular() {
			return 0, m.clientError(r, ErrBadName, errNotReadable)
		}
		replaced = fi.Size()
	}
	dir, base := path.Split(name)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := dir + "." + base + ".tftp-" + hex.EncodeToString(rnd[:])
	f, err := m.put.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return 0, m.clientError(r, ErrNotFound, err)
		}
		return 0, m.clientError(r, ErrWriteFailed, err)
	}
	lw := &limitedWriter{w: f, m: m, maxFile: m.MaxFileSize}
	n, err := r.WriteTo(lw)
	if err == nil {
		err = f.Sync() // the result must survive a crash once acknowledged
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		// A repeated PUT (a retrying worker) replaces the earlier file.
		err = m.put.Rename(tmp, name)
	}
	if err != nil {
		m.put.Remove(tmp)
		m.release(lw.n)
		switch {
		case errors.Is(err, ErrTooLarge), errors.Is(err, errBudgetExceed):
			return n, m.clientError(r, ErrTooLarge, err)
		}
		return n, m.clientError(r, ErrWriteFailed, err)
	}
	m.release(replaced)
	if d, err := m.put.Open(path.Clean("./" + dir)); err == nil {
		d.Sync() // make the rename durable too
		d.Close()
	}
	return n, nil
}
