package tftp

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
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

// Fault says whose fault a TransferFailed was, so that the agent can act
// on it without matching error texts.
type Fault int

const (
	// FaultNone: not a failure (FirstRequest, UploadCompleted).
	FaultNone Fault = iota
	// FaultClient: an ordinary failure: bad name, not found, the client
	// gave up or timed out. A retrying client may still succeed.
	FaultClient
	// FaultRefused: an upload over MaxFileSize, MaxTotal or MaxFiles. The
	// guest's fault; retrying cannot succeed.
	FaultRefused
	// FaultHost: a host-side failure (ENOSPC, EIO, EROFS, EFBIG, ...) while
	// storing an upload or reading a GET's file. Cause has the errno.
	FaultHost
	// FaultClosed: aborted by Mapping.Close or Server.Shutdown.
	FaultClosed
	// FaultForeign: the request is not from the mapping's guest (no
	// session prefix, or another source address); it never counts as the
	// guest's first request.
	FaultForeign
)

func (f Fault) String() string {
	return [...]string{"none", "client", "refused", "host", "closed", "foreign"}[f]
}

// Event is reported to Mapping.Notify.
type Event struct {
	Kind   EventKind
	Op     Op
	Name   string // the file name as the client sent it
	Size   int64  // bytes transferred
	Remote string
	Err    error // for TransferFailed: the fixed text the client got
	Fault  Fault // for TransferFailed: whose fault
	Cause  error // for TransferFailed: the real cause (errors.Is works)
	Time   time.Time
}

// Default limits.
const (
	DefaultMaxFileSize = 256 << 20
	DefaultMaxTotal    = 1 << 30
	DefaultMaxFiles    = 1000
)

// Fixed texts for clients: never a host path.
var (
	ErrBadName      = errors.New("access denied")
	ErrNotFound     = errors.New("not found")
	ErrTooLarge     = errors.New("too large")
	ErrWriteFailed  = errors.New("write failed")
	errNotReadable  = errors.New("not a regular file")
	errBudgetExceed = errors.New("upload budget exhausted")
	errTooManyFiles = errors.New("too many files")
	errReadFailed   = errors.New("read failed")
)

// transferError carries a failure's classification from serveGet and
// servePut to the event; clients see only the public text.
type transferError struct {
	public, cause error
	fault         Fault
}

func (e *transferError) Error() string { return e.public.Error() }

// Mapping serves GETs from one directory and PUTs into another, confined
// through os.Root (no escape by "..", absolute names or symlinks). Uploads
// are written to a temporary name and renamed into place when complete.
type Mapping struct {
	// MaxFileSize caps one upload; MaxTotal caps all uploads of this
	// mapping together (bytes; defaults above; negative = unlimited).
	MaxFileSize int64
	MaxTotal    int64
	// MaxSizes, if set, caps the uploads of the names it lists (cleaned,
	// as CleanName returns them) instead of MaxFileSize: a worker's
	// artifacts archive may be allowed more than its result.
	MaxSizes map[string]int64
	// MaxFiles caps the distinct file names uploaded through this mapping,
	// in progress or completed (default DefaultMaxFiles; negative =
	// unlimited): zero-byte uploads cost no budget but fill directories.
	MaxFiles int
	// Notify, if set, receives events. It is called from transfer
	// goroutines and must not block for long.
	Notify func(Event)
	// Log receives the real reasons behind the fixed client errors.
	Log *slog.Logger
	// Prefix, if set, is a secret first path element every request must
	// carry ("<Prefix>/manifest"), stripped before the name is used: only
	// the session's guest, told it out of band (SMBIOS), knows it, so that
	// another guest or a local user can neither fetch the task nor forge
	// or block its result.
	Prefix string
	// Source, if valid, is the only client address accepted (bridge mode:
	// the guest's own address).
	Source netip.Addr

	get, put *os.Root

	mu       sync.Mutex
	used     int64 // bytes of uploads completed or in progress
	seen     bool
	closed   bool
	inFlight sync.WaitGroup
	reqs     map[*Request]struct{} // transfers in progress, for Close
	// puts counts the uploads in reqs; idle, if set, is closed when it
	// drops to zero (UploadsInFlight).
	puts int
	idle chan struct{}
	// Upload names (cleaned) for MaxFiles: done holds completed ones,
	// pending counts uploads in progress, files is |done ∪ pending|.
	done    map[string]bool
	pending map[string]int
	files   int
}

// NewMapping opens getDir and putDir (either may be "" to refuse that
// direction).
func NewMapping(getDir, putDir string) (*Mapping, error) {
	m := &Mapping{MaxFileSize: DefaultMaxFileSize, MaxTotal: DefaultMaxTotal, MaxFiles: DefaultMaxFiles}
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

// Close aborts the transfers in progress (they report TransferFailed with
// FaultClosed; an aborted upload leaves nothing behind), waits for them to
// end and releases the directories. It does not wait for clients: a guest
// trickling a transfer must not stall the agent.
func (m *Mapping) Close() error {
	m.mu.Lock()
	m.closed = true
	reqs := make([]*Request, 0, len(m.reqs))
	for r := range m.reqs {
		reqs = append(reqs, r)
	}
	m.mu.Unlock()
	for _, r := range reqs {
		r.abort(ErrAborted)
	}
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
	if why := m.admit(r); why != "" {
		m.log().Warn("tftp: refused a request not from the session's guest", "op", r.Op.String(), "file", r.Filename, "remote", r.Remote.String(), "why", why)
		m.notify(Event{Kind: TransferFailed, Op: r.Op, Name: r.Filename, Remote: r.Remote.String(),
			Err: ErrBadName, Fault: FaultForeign, Cause: errors.New(why)})
		return ErrBadName
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errNoMapping
	}
	first := !m.seen
	m.seen = true
	m.inFlight.Add(1)
	if m.reqs == nil {
		m.reqs = make(map[*Request]struct{})
	}
	m.reqs[r] = struct{}{}
	if r.Op == Put {
		m.puts++
	}
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		m.untrack(r)
		m.mu.Unlock()
		m.inFlight.Done()
	}()

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
		ev := Event{Kind: TransferFailed, Op: r.Op, Name: r.Filename, Size: n, Remote: r.Remote.String(),
			Err: err, Fault: FaultClient, Cause: err}
		var te *transferError
		if errors.As(err, &te) {
			ev.Err, ev.Fault, ev.Cause = te.public, te.fault, te.cause
		}
		if aerr := r.abortErr(); aerr != nil {
			// Whatever broke first, the transfer was cut off by us.
			ev.Err, ev.Fault, ev.Cause = aerr, FaultClosed, aerr
		}
		m.notify(ev)
		return ev.Err
	}
	if r.Op == Put {
		// The file is in place; pin/tftp sends the final ACK after we
		// return. A Close prompted by this event must not abort that ACK
		// (the client would see its completed upload fail and retry), so
		// it leaves the transfers Close aborts first. It stays an upload
		// in progress (UploadsInFlight) until the event is out: whoever
		// waits for uploads to finish then finds it among the events.
		m.mu.Lock()
		delete(m.reqs, r)
		m.mu.Unlock()
		m.notify(Event{Kind: UploadCompleted, Op: Put, Name: r.Filename, Size: n, Remote: r.Remote.String()})
	}
	return nil
}

// untrack ends r's membership of the transfers in progress, once (a
// completed upload has already left the ones Close aborts). Called with
// m.mu held.
func (m *Mapping) untrack(r *Request) {
	if r.untracked {
		return
	}
	r.untracked = true
	delete(m.reqs, r)
	if r.Op != Put {
		return
	}
	if m.puts--; m.puts == 0 && m.idle != nil {
		close(m.idle)
		m.idle = nil
	}
}

// UploadsInFlight returns the names (as the client sent them, without the
// session prefix) of the uploads in progress, and a channel closed once
// none is (already closed when none is now): the agent lets an upload
// that is still coming when the result arrives finish, for a while.
func (m *Mapping) UploadsInFlight() ([]string, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var names []string
	for r := range m.reqs {
		if r.Op == Put {
			names = append(names, r.Filename)
		}
	}
	if m.puts == 0 {
		c := make(chan struct{})
		close(c)
		return names, c
	}
	if m.idle == nil {
		m.idle = make(chan struct{})
	}
	return names, m.idle
}

// maxSize is the cap on an upload of name (cleaned).
func (m *Mapping) maxSize(name string) int64 {
	if n, ok := m.MaxSizes[name]; ok {
		return n
	}
	return m.MaxFileSize
}

// Redirected returns a handler that serves m to requests without the
// session prefix, from any address. It is for a server only the session's
// guest can reach: bridge mode's redirect of unmodified bbot workers,
// where nftables lets through only the frames of the guest's own tap and
// MAC. Such a worker knows no prefix and takes its address by DHCP.
func (m *Mapping) Redirected() Handler {
	return HandlerFunc(func(r *Request) error {
		r.redirected = true
		return m.ServeTFTP(r)
	})
}

// admit checks the request's source and session prefix, stripping the
// prefix from r.Filename; it returns why a request is refused, or "".
// Requests through Redirected are admitted as they are.
func (m *Mapping) admit(r *Request) string {
	if r.redirected {
		return ""
	}
	if m.Source.IsValid() {
		if a, ok := netip.AddrFromSlice(r.Remote.IP); !ok || a.Unmap() != m.Source.Unmap() {
			return "source address is not the guest's"
		}
	}
	if m.Prefix == "" {
		return ""
	}
	rest, ok := strings.CutPrefix(strings.TrimPrefix(r.Filename, "/"), m.Prefix+"/")
	if !ok {
		return "no session prefix"
	}
	r.Filename = rest
	return ""
}

// clientError logs the real cause and returns the fixed text for clients,
// classified as FaultClient.
func (m *Mapping) clientError(r *Request, public, cause error) error {
	return m.fail(r, FaultClient, public, cause)
}

// fail logs the real cause and returns the fixed text for clients with
// the classification for the event.
func (m *Mapping) fail(r *Request, fault Fault, public, cause error) error {
	m.log().Warn("tftp: refused", "op", r.Op.String(), "file", r.Filename, "remote", r.Remote.String(),
		"fault", fault.String(), "error", cause)
	return &transferError{public: public, cause: cause, fault: fault}
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
	// Read errors are the host's (EIO); note them to tell them apart from
	// the client's.
	hr := &hostReader{r: f}
	var n int64
	if fi.Size() <= readAheadChunk || r.lockStep != nil {
		// (The agent's lock-step loop reads ahead itself.)
		n, err = r.ReadFrom(hr)
	} else {
		ra := newReadAhead(hr)
		n, err = r.ReadFrom(ra)
		ra.Close()
	}
	if herr := hr.Err(); err != nil && herr != nil && r.abortErr() == nil {
		return n, m.fail(r, FaultHost, errReadFailed, herr)
	}
	return n, err
}

// hostReader notes read errors of a GET's file. With read-ahead it is
// read by a goroutine that may outlive the transfer, hence the lock.
type hostReader struct {
	r   io.Reader
	mu  sync.Mutex
	err error
}

func (h *hostReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if err != nil && err != io.EOF {
		h.mu.Lock()
		h.err = err
		h.mu.Unlock()
	}
	return n, err
}

func (h *hostReader) Err() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.err
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

// claimName counts an upload of name against MaxFiles; a name already
// uploaded or in progress costs nothing more.
func (m *Mapping) claimName(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.done[name] && m.pending[name] == 0 {
		if m.MaxFiles >= 0 && m.files >= m.MaxFiles {
			return false
		}
		m.files++
	}
	if m.pending == nil {
		m.pending = make(map[string]int)
	}
	m.pending[name]++
	return true
}

// finishName ends an upload of name claimed by claimName.
func (m *Mapping) finishName(name string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.pending[name]--; m.pending[name] == 0 {
		delete(m.pending, name)
	}
	if ok {
		if m.done == nil {
			m.done = make(map[string]bool)
		}
		m.done[name] = true
	} else if !m.done[name] && m.pending[name] == 0 {
		m.files--
	}
}

// limitedWriter fails once more than the allowed bytes arrive; the bytes
// are taken from the mapping's budget as they come. A failure of the file
// itself is kept in fileErr: it is the host's fault, not the client's.
type limitedWriter struct {
	w       io.Writer
	m       *Mapping
	maxFile int64
	n       int64
	fileErr error
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
	if err != nil {
		l.fileErr = err
	}
	return n, err
}

// openFault classifies a failure to create the temporary: a name that
// cannot be made in the tree is the client's; anything else (ENOSPC,
// EROFS, EACCES, EIO...) the host's.
func openFault(err error) Fault {
	for _, e := range []error{syscall.ENOENT, syscall.ENOTDIR, syscall.EISDIR, syscall.ELOOP, syscall.ENAMETOOLONG, syscall.EINVAL} {
		if errors.Is(err, e) {
			return FaultClient
		}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Err != nil && !errors.As(pe.Err, new(syscall.Errno)) {
		return FaultClient // os.Root: "path escapes from parent"
	}
	return FaultHost
}

func (m *Mapping) servePut(r *Request) (int64, error) {
	if m.put == nil {
		return 0, m.clientError(r, ErrBadName, errors.New("no PUT directory"))
	}
	name, err := CleanName(r.Filename)
	if err != nil {
		return 0, m.clientError(r, err, errors.New("bad name"))
	}
	maxFile := m.maxSize(name)
	if size, ok := r.Size(); ok {
		if maxFile >= 0 && size > maxFile {
			return 0, m.fail(r, FaultRefused, ErrTooLarge, errors.New("announced size over the file cap"))
		}
		if m.MaxTotal >= 0 {
			m.mu.Lock()
			over := m.used+size > m.MaxTotal
			m.mu.Unlock()
			if over {
				return 0, m.fail(r, FaultRefused, ErrTooLarge, errBudgetExceed)
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
	if !m.claimName(name) {
		return 0, m.fail(r, FaultRefused, ErrTooLarge, errTooManyFiles)
	}
	ok := false
	defer func() { m.finishName(name, ok) }()
	dir, base := path.Split(name)
	var rnd [6]byte
	rand.Read(rnd[:])
	tmp := dir + "." + base + ".tftp-" + hex.EncodeToString(rnd[:])
	f, err := m.put.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if fault := openFault(err); fault == FaultClient {
			if errors.Is(err, fs.ErrNotExist) {
				return 0, m.clientError(r, ErrNotFound, err)
			}
			return 0, m.clientError(r, ErrBadName, err)
		}
		return 0, m.fail(r, FaultHost, ErrWriteFailed, err)
	}
	lw := &limitedWriter{w: f, m: m, maxFile: maxFile}
	n, err := r.WriteTo(lw)
	hostErr := lw.fileErr
	if err == nil {
		// The result must survive a crash once acknowledged.
		if err = f.Sync(); err != nil {
			hostErr = err
		}
	}
	if cerr := f.Close(); err == nil && cerr != nil {
		err, hostErr = cerr, cerr
	}
	if err == nil {
		// Close may have aborted the transfer after the last block: once
		// Close has begun nothing new appears.
		err = r.abortErr()
	}
	if err == nil {
		// A repeated PUT (a retrying worker) replaces the earlier file.
		if err = m.put.Rename(tmp, name); err != nil {
			hostErr = err
		}
	}
	if err != nil {
		m.put.Remove(tmp)
		m.release(lw.n)
		switch {
		case r.abortErr() != nil:
			return n, m.fail(r, FaultClosed, ErrAborted, r.abortErr())
		case hostErr != nil:
			return n, m.fail(r, FaultHost, ErrWriteFailed, hostErr)
		case errors.Is(err, ErrTooLarge), errors.Is(err, errBudgetExceed):
			return n, m.fail(r, FaultRefused, ErrTooLarge, err)
		}
		// The network: the client gave up or sent an error.
		return n, m.clientError(r, ErrWriteFailed, err)
	}
	ok = true
	m.release(replaced)
	if d, err := m.put.Open(path.Clean("./" + dir)); err == nil {
		d.Sync() // make the rename durable too
		d.Close()
	}
	return n, nil
}
