// Package tftp is the TFTP server that build machines talk to, built on
// github.com/pin/tftp/v3 and shaped like net/http's server: a Server bound to
// one address serves whatever Handler is current; Mapping is the Handler that
// confines GETs to one directory and PUTs to another.
package tftp

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	pintftp "github.com/pin/tftp/v3"
)

// Op is the kind of request.
type Op int

const (
	Get Op = iota // RRQ: the client reads a file
	Put           // WRQ: the client writes a file
)

func (o Op) String() string {
	if o == Put {
		return "PUT"
	}
	return "GET"
}

// Request is one transfer request. Exactly one of ReadFrom (GET) and
// WriteTo (PUT) may be used, once.
type Request struct {
	Op       Op
	Filename string // as the client sent it, minus a Mapping's session prefix once admitted
	Remote   net.UDPAddr

	rf io.ReaderFrom
	wt io.WriterTo

	// conn is the transfer's own socket inside pin/tftp (nil if not
	// found); abort closes it to wake a blocked receive.
	conn      *net.UDPConn
	untracked bool // a Mapping is done with it (guarded by the Mapping's mu)
	// redirected: served through Mapping.Redirected (no prefix, any source).
	redirected bool
	abortOnce  sync.Once
	aborted    atomic.Pointer[error]
	// transferred is what ReadFrom or WriteTo moved, for OnTransfer.
	transferred int64
	// lockStep, if set, is the server whose own lock-step loop serves
	// this GET, with the request lockStepReq; size is the content's size
	// for tsize (-1: unknown).
	lockStep    *Server
	lockStepReq pinRequest
	size        int64
	// closeUnlessFailed: the loop failed and left the socket to pin/tftp,
	// which closes it only if the handler fails too.
	closeUnlessFailed bool
}

// ErrAborted is the error of a transfer cut off by Mapping.Close or by
// Server.Shutdown when its context ended.
var ErrAborted = errors.New("transfer aborted: closed")

// abort ends the transfer as soon as possible: pin/tftp has no
// cancellation and waits up to Timeout per packet (re-armed by every
// trickled packet), so the wrappers in ReadFrom/WriteTo fail the next
// read/write and closing the socket makes a blocked receive return (after
// Retries quick retries on the closed socket).
func (r *Request) abort(err error) {
	r.abortOnce.Do(func() {
		r.aborted.Store(&err)
		if r.conn != nil {
			// pin/tftp cannot send its ERROR on a closed socket: tell the
			// client here so that it stops at once.
			r.conn.WriteToUDP(errorPacket(err.Error()), &r.Remote)
			wakeReceive(r.conn)
			r.conn.Close()
		}
	})
}

// abortErr returns the abort's error, or nil.
func (r *Request) abortErr() error {
	if p := r.aborted.Load(); p != nil {
		return *p
	}
	return nil
}

func errorPacket(msg string) []byte {
	p := []byte{0, 5, 0, 0} // ERROR, code 0 (not defined)
	p = append(p, msg...)
	return append(p, 0)
}

// udpConnOf digs the per-transfer socket out of pin/tftp's sender or
// receiver (field conn, a *connConnection holding a *net.UDPConn), since
// closing it is the only way to interrupt a blocked transfer. It returns
// nil for any other shape (another pin/tftp version, single-port mode):
// aborts then take effect at the next packet. TestUDPConnOf pins the shape.
// It must run in the transfer's goroutine before the transfer starts: pin
// writes the field only when it ends the transfer.
func udpConnOf(t any) *net.UDPConn {
	v := reflect.ValueOf(t)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return nil
	}
	f := v.Elem().FieldByName("conn")
	if !f.IsValid() || f.Kind() != reflect.Interface || f.IsNil() {
		return nil
	}
	c := f.Elem()
	if c.Kind() != reflect.Pointer || c.IsNil() || c.Elem().Kind() != reflect.Struct {
		return nil
	}
	u := c.Elem().FieldByName("conn")
	if !u.IsValid() || u.Type() != reflect.TypeFor[*net.UDPConn]() || !u.CanAddr() {
		return nil
	}
	return *(**net.UDPConn)(unsafe.Pointer(u.UnsafeAddr()))
}

// abortReader and abortWriter fail once the request is aborted.
type abortReader struct {
	r   io.Reader
	req *Request
}

func (a abortReader) Read(p []byte) (int, error) {
	if err := a.req.abortErr(); err != nil {
		return 0, err
	}
	return a.r.Read(p)
}

type abortWriter struct {
	w   io.Writer
	req *Request
}

func (a abortWriter) Write(p []byte) (int, error) {
	if err := a.req.abortErr(); err != nil {
		return 0, err
	}
	return a.w.Write(p)
}

// Size returns the transfer size the client announced (tsize) for a PUT.
// It must be called before WriteTo.
func (r *Request) Size() (int64, bool) {
	if it, ok := r.wt.(pintftp.IncomingTransfer); ok {
		return it.Size()
	}
	return 0, false
}

// SetSize announces the size of a GET's content (answers tsize) when src is
// not seekable.
func (r *Request) SetSize(n int64) {
	r.size = n
	if ot, ok := r.rf.(pintftp.OutgoingTransfer); ok {
		ot.SetSize(n)
	}
}

// ReadFrom sends src to the client (GET). After an abort it returns
// ErrAborted (whatever the socket said).
func (r *Request) ReadFrom(src io.Reader) (int64, error) {
	if r.rf == nil {
		return 0, errors.New("tftp: ReadFrom on a PUT request")
	}
	if err := r.abortErr(); err != nil {
		return 0, err
	}
	if s := r.lockStep; s != nil {
		ls, err := newLockStep(r.lockStepReq, r.conn, r.Remote, s.maxBlock(), r.size, s.timeout(), s.retries(),
			func() bool { return r.abortErr() != nil })
		if err == nil {
			n, err := ls.send(abortReader{src, r})
			r.transferred = n
			if aerr := r.abortErr(); err != nil && aerr != nil {
				err = aerr
			}
			if err == nil {
				// pin/tftp closes the socket only when the handler fails
				// (sending the handler's error to the client first).
				r.conn.Close()
			} else {
				r.closeUnlessFailed = true
			}
			return n, err
		}
		s.log().Warn("tftp: lock-step GET left to pin/tftp's sender", "remote", r.Remote.String(), "error", err)
	}
	n, err := r.rf.ReadFrom(abortReader{src, r})
	r.transferred = n
	if aerr := r.abortErr(); err != nil && aerr != nil {
		err = aerr
	}
	return n, err
}

// WriteTo receives the client's data into dst (PUT). After an abort it
// returns ErrAborted (whatever the socket said).
func (r *Request) WriteTo(dst io.Writer) (int64, error) {
	if r.wt == nil {
		return 0, errors.New("tftp: WriteTo on a GET request")
	}
	if err := r.abortErr(); err != nil {
		return 0, err
	}
	n, err := r.wt.WriteTo(abortWriter{dst, r})
	r.transferred = n
	if aerr := r.abortErr(); err != nil && aerr != nil {
		err = aerr
	}
	return n, err
}

// Handler serves TFTP requests. The error's text is sent to the client, so
// it must be short and must not reveal host paths.
type Handler interface {
	ServeTFTP(r *Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(r *Request) error

func (f HandlerFunc) ServeTFTP(r *Request) error { return f(r) }

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("tftp: server closed")

// Fixed error texts sent to clients.
var (
	errNoMapping = errors.New("not available")
	errBusy      = errors.New("server busy")
)

// Server is a TFTP server. Set the fields before Serve.
type Server struct {
	// MaxBlockSize caps the negotiated blksize (512..65464; default 65464).
	MaxBlockSize int
	// ClampToMTU lowers blksize to the MTU of the interface a request came
	// in on (pin/tftp's default); off by default so that clients on
	// host-only bridges may use IP fragmentation for large blocks.
	ClampToMTU bool
	// Anticipate is the sender window of pin/tftp's "sender anticipation":
	// 0 picks one from AnticipateBudget and MaxBlockSize, 1 disables it.
	Anticipate uint
	// AnticipateBudget bounds window x block size, in bytes, so that a burst
	// stays well inside a receiver's socket buffer (Linux default 212992
	// bytes, and a datagram costs more than its payload). Default 64 KiB.
	AnticipateBudget int
	// Timeout is the per-packet retransmission timeout (default 2s) and
	// Retries the number of attempts (default 5).
	Timeout time.Duration
	Retries int
	// MaxTransfers bounds concurrent transfers (default 32); requests
	// beyond it are refused.
	MaxTransfers int
	// PinSender serves lock-step GETs with pin/tftp's sender instead of
	// the agent's own block loop (see lockStep): slower, kept for A/B
	// benchmarks.
	PinSender bool
	// ErrorLog receives transfer failures; nil discards.
	ErrorLog *slog.Logger
	// OnTransfer, if set, learns of every request once it is done: its
	// direction, the bytes moved and its error (nil: completed). It is
	// called from transfer goroutines and must not block (metrics).
	OnTransfer func(op Op, bytes int64, err error)

	handler atomic.Pointer[handlerBox]
	active  atomic.Int64

	mu       sync.Mutex
	srv      *pintftp.Server
	closed   bool
	aborting bool                  // Shutdown's context ended
	reqs     map[*Request]struct{} // transfers in a handler
}

type handlerBox struct{ h Handler }

// SetHandler makes h serve every following request; nil refuses them all.
// Transfers in progress keep the handler they started with.
func (s *Server) SetHandler(h Handler) {
	if h == nil {
		s.handler.Store(nil)
		return
	}
	s.handler.Store(&handlerBox{h})
}

func (s *Server) log() *slog.Logger {
	if s.ErrorLog == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.ErrorLog
}

// Window returns the anticipation window in effect.
func (s *Server) Window() uint {
	if s.Anticipate != 0 {
		return min(s.Anticipate, 60)
	}
	budget := s.AnticipateBudget
	if budget <= 0 {
		budget = 64 << 10
	}
	// A datagram costs its payload plus headers in the receiver's buffer.
	w := budget / (s.maxBlock() + 64)
	return uint(min(max(w, 1), 16))
}

func (s *Server) maxBlock() int {
	if s.MaxBlockSize < 512 || s.MaxBlockSize > 65464 {
		return 65464
	}
	return s.MaxBlockSize
}

func (s *Server) serve(r *Request) (err error) {
	if s.OnTransfer != nil {
		defer func() { s.OnTransfer(r.Op, r.transferred, err) }()
	}
	box := s.handler.Load()
	if box == nil {
		return errNoMapping
	}
	limit := int64(s.MaxTransfers)
	if limit <= 0 {
		limit = 32
	}
	if s.active.Add(1) > limit {
		s.active.Add(-1)
		s.log().Warn("tftp: too many transfers, refusing", "remote", r.Remote.String(), "file", r.Filename)
		return errBusy
	}
	defer s.active.Add(-1)
	s.mu.Lock()
	if s.aborting {
		s.mu.Unlock()
		return ErrAborted
	}
	if s.reqs == nil {
		s.reqs = make(map[*Request]struct{})
	}
	s.reqs[r] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.reqs, r)
		s.mu.Unlock()
	}()
	err = box.h.ServeTFTP(r)
	if err == nil && r.closeUnlessFailed {
		r.conn.Close()
	}
	return err
}

func (s *Server) timeout() time.Duration {
	if s.Timeout <= 0 {
		return 2 * time.Second
	}
	return s.Timeout
}

func (s *Server) retries() int {
	if s.Retries <= 0 {
		return 5 // pin/tftp's default
	}
	return s.Retries
}

// Serve serves requests arriving on conn until Shutdown.
func (s *Server) Serve(conn *net.UDPConn) error {
	srv := pintftp.NewServer(
		func(name string, rf io.ReaderFrom) error {
			r := &Request{Op: Get, Filename: name, rf: rf, conn: udpConnOf(rf), size: -1}
			if ot, ok := rf.(pintftp.OutgoingTransfer); ok {
				r.Remote = ot.RemoteAddr()
			}
			if s.Window() == 1 && !s.PinSender {
				if req, ok := lockStepFor(rf, r.conn, r.Remote); ok {
					r.lockStep, r.lockStepReq = s, req
				}
			}
			return s.serve(r)
		},
		func(name string, wt io.WriterTo) error {
			r := &Request{Op: Put, Filename: name, wt: wt, conn: udpConnOf(wt)}
			if it, ok := wt.(pintftp.IncomingTransfer); ok {
				r.Remote = it.RemoteAddr()
			}
			return s.serve(r)
		},
	)
	srv.SetBlockSize(s.maxBlock())
	srv.SetBlockSizeNegotiation(s.ClampToMTU)
	if w := s.Window(); w > 1 {
		srv.SetAnticipate(w)
	}
	srv.SetTimeout(s.timeout())
	if s.Retries > 0 {
		srv.SetRetries(s.Retries)
	}
	// Retransmit promptly: pin/tftp's default sleeps up to 1s per retry.
	srv.SetBackoff(func(int) time.Duration { return 10 * time.Millisecond })

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		conn.Close()
		return ErrServerClosed
	}
	s.srv = srv
	s.mu.Unlock()

	srv.Serve(conn)
	conn.Close() // Shutdown may have come before pin/tftp saw the socket
	return ErrServerClosed
}

// ListenAndServe listens on the UDP address addr and serves.
func (s *Server) ListenAndServe(addr string) error {
	conn, err := Listen(addr)
	if err != nil {
		return err
	}
	return s.Serve(conn)
}

// Listen opens the UDP socket a Server serves on.
func Listen(addr string) (*net.UDPConn, error) {
	a, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	return net.ListenUDP("udp", a)
}

// Shutdown stops accepting requests and waits for the transfers in
// progress, or until ctx ends: then it aborts them (see Mapping.Close)
// and returns ctx's error at once.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		srv.Shutdown()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		s.aborting = true
		reqs := make([]*Request, 0, len(s.reqs))
		for r := range s.reqs {
			reqs = append(reqs, r)
		}
		s.mu.Unlock()
		for _, r := range reqs {
			r.abort(ErrAborted)
		}
		return ctx.Err()
	}
}
