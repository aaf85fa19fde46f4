package tftp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// TestUDPConnOf pins the pin/tftp internals that abort relies on: after an
// upgrade that changes them, aborts would wait for the next packet.
func TestUDPConnOf(t *testing.T) {
	found := make(chan bool, 2)
	e := startServer(t, nil)
	e.srv.SetHandler(HandlerFunc(func(r *Request) error {
		found <- r.conn != nil
		return ErrNotFound
	}))
	c, _ := pintftp.NewClient(e.addr.String())
	c.SetRetries(1)
	c.Receive("x", "octet")
	if rf, err := c.Send("x", "octet"); err == nil {
		rf.ReadFrom(strings.NewReader("x"))
	}
	for _, op := range []string{"GET", "PUT"} {
		select {
		case ok := <-found:
			if !ok {
				t.Errorf("%s: pin/tftp's transfer socket not found", op)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: handler not called", op)
		}
	}
}

// rawPeer is a test client speaking TFTP by hand, to trickle.
type rawPeer struct {
	t    *testing.T
	conn *net.UDPConn
	tid  net.Addr
	buf  []byte
}

func newRawPeer(t *testing.T) *rawPeer {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &rawPeer{t: t, conn: conn, buf: make([]byte, 70000)}
}

// read returns the next packet's opcode, block and payload.
func (p *rawPeer) read() (op, block uint16, data []byte, err error) {
	p.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := p.conn.ReadFrom(p.buf)
	if err != nil {
		return 0, 0, nil, err
	}
	if n < 4 {
		return 0, 0, nil, errors.New("short packet")
	}
	p.tid = from
	return uint16(p.buf[0])<<8 | uint16(p.buf[1]), uint16(p.buf[2])<<8 | uint16(p.buf[3]), p.buf[4:n], nil
}

// trickle runs a transfer slowly (one packet per interval, acking
// properly) until the server stops it; it reports whether the server
// sent an ERROR.
func trickle(p *rawPeer, srv *net.UDPAddr, op uint16, name string, interval time.Duration, started chan<- struct{}) <-chan bool {
	res := make(chan bool, 1)
	go func() {
		rq := append([]byte{0, byte(op)}, name+"\x00octet\x00"...)
		p.conn.WriteTo(rq, srv)
		for i := 1; ; i++ {
			code, block, _, err := p.read()
			if err != nil || code == opERROR {
				res <- err == nil
				return
			}
			if i == 2 {
				close(started)
			}
			time.Sleep(interval)
			if op == opWRQ {
				pkt := append([]byte{0, opDATA, byte(block + 1>>8), byte(block + 1)}, bytes.Repeat([]byte("x"), 512)...)
				p.conn.WriteTo(pkt, p.tid)
			} else {
				p.conn.WriteTo([]byte{0, opACK, byte(block >> 8), byte(block)}, p.tid)
			}
		}
	}()
	return res
}

func waitFailed(t *testing.T, e *testEnv, within time.Duration) Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if evs := e.eventsOf(TransferFailed); len(evs) > 0 {
			return evs[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no TransferFailed event")
	return Event{}
}

func assertEmpty(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		t.Errorf("left in the put dir: %s", ent.Name())
	}
}

// TestCloseAbortsTrickle: Mapping.Close cuts off a guest trickling a
// transfer at once, even when the next packet is far away (1.5 s, under
// the server's 2 s timeout), and an aborted upload leaves nothing.
func TestCloseAbortsTrickle(t *testing.T) {
	for _, tc := range []struct {
		op       uint16
		interval time.Duration
	}{{opWRQ, 500 * time.Millisecond}, {opWRQ, 1500 * time.Millisecond}, {opRRQ, 500 * time.Millisecond}, {opRRQ, 1500 * time.Millisecond}} {
		t.Run(fmt.Sprintf("op%d-%v", tc.op, tc.interval), func(t *testing.T) {
			e := startServer(t, nil)
			randomFile(t, filepath.Join(e.get, "big"), 1<<20)
			name := "big"
			if tc.op == opWRQ {
				name = "result"
			}
			started := make(chan struct{})
			res := trickle(newRawPeer(t), e.addr, tc.op, name, tc.interval, started)
			<-started
			time.Sleep(tc.interval / 3) // mid-wait for the next packet
			t0 := time.Now()
			if err := e.mapping.Close(); err != nil {
				t.Fatal(err)
			}
			d := time.Since(t0)
			t.Logf("Close took %v", d)
			if d > time.Second {
				t.Errorf("Close took %v", d)
			}
			ev := waitFailed(t, e, time.Second)
			if ev.Fault != FaultClosed || !errors.Is(ev.Err, ErrAborted) || !strings.Contains(ev.Err.Error(), "abort") {
				t.Errorf("event %+v, want FaultClosed/ErrAborted", ev)
			}
			if !<-res {
				t.Error("client got no ERROR")
			}
			assertEmpty(t, e.put)
		})
	}
}

// TestShutdownHonoursContext: Shutdown returns when its context ends and
// aborts the trickling transfer.
func TestShutdownHonoursContext(t *testing.T) {
	e := startServer(t, nil)
	started := make(chan struct{})
	res := trickle(newRawPeer(t), e.addr, opWRQ, "result", 1500*time.Millisecond, started)
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	if d := time.Since(t0); d > time.Second {
		t.Errorf("Shutdown took %v", d)
	}
	if ev := waitFailed(t, e, time.Second); ev.Fault != FaultClosed {
		t.Errorf("event %+v, want FaultClosed", ev)
	}
	if !<-res {
		t.Error("client got no ERROR")
	}
	e.mapping.Close()
	assertEmpty(t, e.put)
}

func put(t *testing.T, e *testEnv, name string, data []byte) error {
	t.Helper()
	c, _ := pintftp.NewClient(e.addr.String())
	c.SetTimeout(time.Second)
	c.SetRetries(2)
	rf, err := c.Send(name, "octet")
	if err != nil {
		return err
	}
	_, err = rf.ReadFrom(bytes.NewReader(data))
	return err
}

// TestFaults: refused uploads, host write failures and ordinary failures
// are told apart by Event.Fault, with the real cause in Event.Cause.
func TestFaults(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) {
		m.MaxFileSize, m.MaxTotal = 64<<10, 100<<10
		s.Timeout, s.Retries = time.Second, 2
	})
	// pin/tftp sends the client its ERROR before our handler has cleaned
	// up and reported: wait for the next TransferFailed event.
	seen := 0
	last := func() Event {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
			if evs := e.eventsOf(TransferFailed); len(evs) > seen {
				seen = len(evs)
				return evs[len(evs)-1]
			}
		}
		t.Fatal("no new TransferFailed event")
		return Event{}
	}
	if err := put(t, e, "big", make([]byte, 65<<10)); err == nil {
		t.Error("oversize upload accepted")
	}
	if ev := last(); ev.Fault != FaultRefused || !errors.Is(ev.Cause, ErrTooLarge) {
		t.Errorf("oversize: %+v", ev)
	}
	if op, _ := rawRequest(t, e, opWRQ, "liar", "tsize", "1000000"); op != opERROR {
		t.Errorf("announced oversize: opcode %d", op)
	}
	if ev := last(); ev.Fault != FaultRefused {
		t.Errorf("announced oversize: %+v", ev)
	}
	if err := put(t, e, "a", make([]byte, 60<<10)); err != nil {
		t.Fatal(err)
	}
	if err := put(t, e, "b", make([]byte, 60<<10)); err == nil {
		t.Error("upload over the budget accepted")
	}
	if ev := last(); ev.Fault != FaultRefused || !errors.Is(ev.Cause, errBudgetExceed) {
		t.Errorf("over budget: %+v", ev)
	}
	c, _ := pintftp.NewClient(e.addr.String())
	c.Receive("missing", "octet")
	if ev := last(); ev.Fault != FaultClient {
		t.Errorf("not found: %+v", ev)
	}
	if err := put(t, e, "../x", []byte("x")); err == nil {
		t.Error("bad name accepted")
	}
	if ev := last(); ev.Fault != FaultClient {
		t.Errorf("bad name: %+v", ev)
	}

	// A real host-side write failure: the kernel refuses writes past
	// RLIMIT_FSIZE with EFBIG (the Go runtime ignores SIGXFSZ). The limit
	// is the process's; no test here runs in parallel.
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: 8 << 10, Max: old.Max}); err != nil {
		t.Fatal(err)
	}
	err := put(t, e, "host", make([]byte, 20<<10))
	syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
	if err == nil {
		t.Error("upload past RLIMIT_FSIZE succeeded")
	}
	ev := last()
	if ev.Fault != FaultHost || !errors.Is(ev.Cause, syscall.EFBIG) || ev.Err != ErrWriteFailed {
		t.Errorf("host failure: %+v", ev)
	}
	if _, err := os.Stat(filepath.Join(e.put, "host")); err == nil {
		t.Error("failed upload visible")
	}
	assertNoTemp(t, e.put)
}

// TestMaxFiles: zero-byte uploads cost no budget but are bounded by
// MaxFiles (the security issue: 2000 files under a 1-byte budget).
func TestMaxFiles(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) { m.MaxTotal = 1 })
	ok, refused := 0, 0
	for i := range 2000 {
		if err := put(t, e, fmt.Sprintf("f%d", i), nil); err != nil {
			refused++
		} else {
			ok++
		}
	}
	if ok != DefaultMaxFiles || refused != 2000-DefaultMaxFiles {
		t.Errorf("%d accepted, %d refused", ok, refused)
	}
	// A retrying worker may still replace a file it uploaded.
	if err := put(t, e, "f0", nil); err != nil {
		t.Errorf("re-upload refused: %v", err)
	}
	ents, _ := os.ReadDir(e.put)
	if len(ents) > DefaultMaxFiles {
		t.Errorf("%d files in the put dir", len(ents))
	}
	n := 0
	for _, ev := range e.eventsOf(TransferFailed) {
		if ev.Fault == FaultRefused && errors.Is(ev.Cause, errTooManyFiles) {
			n++
		}
	}
	if n != refused {
		t.Errorf("%d refusals reported for %d", n, refused)
	}
}
