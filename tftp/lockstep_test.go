package tftp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// TestRequestOf pins the shape of pin/tftp's sender that requestOf reads:
// without it every GET would silently fall back to pin/tftp's slower loop.
func TestRequestOf(t *testing.T) {
	got := make(chan string, 1)
	srv := pintftp.NewServer(func(name string, rf io.ReaderFrom) error {
		req, ok := requestOf(rf)
		if !ok {
			got <- "not found"
			return errors.New("no")
		}
		got <- fmt.Sprintf("%s blksize=%s max=%d", req.mode, req.opts["blksize"], req.maxBlockLen)
		return errors.New("done")
	}, nil)
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv.SetBlockSize(8192)
	srv.SetBlockSizeNegotiation(false) // as Server does without ClampToMTU
	go srv.Serve(conn)
	defer srv.Shutdown()
	p := newRawPeer(t)
	p.conn.WriteTo([]byte("\x00\x01x\x00octet\x00blksize\x001468\x00"), conn.LocalAddr())
	select {
	case s := <-got:
		if s != "octet blksize=1468 max=8192" {
			t.Errorf("requestOf: %s", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("handler not called")
	}
}

// lockStepPeer starts a GET of name with the given options and returns
// the peer after reading the server's first packet.
func lockStepPeer(t *testing.T, e *testEnv, name, opts string) (*rawPeer, uint16, uint16, []byte) {
	t.Helper()
	p := newRawPeer(t)
	p.conn.WriteTo([]byte("\x00\x01"+name+"\x00octet\x00"+opts), e.addr)
	op, blk, data, err := p.read()
	if err != nil {
		t.Fatal(err)
	}
	return p, op, blk, append([]byte(nil), data...)
}

func (p *rawPeer) ack(blk uint16) {
	p.conn.WriteTo([]byte{0, opACK, byte(blk >> 8), byte(blk)}, p.tid)
}

// TestLockStepOptions: blksize is clamped to the server's maximum and
// tsize answered in the OACK; without options there is no OACK; an empty
// file gets no tsize (curl refuses tsize 0).
func TestLockStepOptions(t *testing.T) {
	e := startServer(t, func(s *Server, _ *Mapping) { s.MaxBlockSize = 1468 })
	randomFile(t, filepath.Join(e.get, "f"), 5000)
	randomFile(t, filepath.Join(e.get, "empty"), 0)

	p, op, b01, data := lockStepPeer(t, e, "f", "blksize\x008192\x00tsize\x000\x00")
	if op != 6 {
		t.Fatalf("first packet opcode %d, want OACK", op)
	}
	oack := "\x00" + string([]byte{byte(b01 >> 8), byte(b01)}) + string(data)
	for _, want := range []string{"\x00blksize\x001468\x00", "\x00tsize\x005000\x00"} {
		if !strings.Contains(oack, want) {
			t.Errorf("OACK %q lacks %q", data, want)
		}
	}
	p.ack(0)
	var got []byte
	for blk := uint16(1); ; blk++ {
		op, b, data, err := p.read()
		if err != nil || op != opDATA || b != blk {
			t.Fatalf("block %d: op %d block %d err %v", blk, op, b, err)
		}
		got = append(got, data...)
		p.ack(blk)
		if len(data) < 1468 {
			if blk != 4 {
				t.Errorf("%d blocks of 1468 for 5000 bytes", blk)
			}
			break
		}
	}
	want, _ := os.ReadFile(filepath.Join(e.get, "f"))
	if !bytes.Equal(got, want) {
		t.Error("content differs")
	}

	_, op, blk, data := lockStepPeer(t, e, "f", "")
	if op != opDATA || blk != 1 || len(data) != 512 {
		t.Errorf("without options: op %d block %d, %d bytes; want DATA 1 of 512", op, blk, len(data))
	}

	_, op, b01, data = lockStepPeer(t, e, "empty", "tsize\x000\x00blksize\x00512\x00")
	if oack := string([]byte{byte(b01 >> 8), byte(b01)}) + string(data); op != 6 || strings.Contains(oack, "tsize") {
		t.Errorf("empty file: op %d, OACK %q (want OACK without tsize)", op, data)
	}
}

// TestLockStepRetransmits: a lost ACK gets the same block again after the
// timeout, a duplicate ACK gets nothing (Sorcerer's Apprentice), and a
// client that never answers is given up on after the retries, with an
// ERROR.
func TestLockStepRetransmits(t *testing.T) {
	const timeout = 300 * time.Millisecond
	e := startServer(t, func(s *Server, _ *Mapping) { s.Timeout = timeout; s.Retries = 2 })
	randomFile(t, filepath.Join(e.get, "f"), 4096)
	p, op, blk, first := lockStepPeer(t, e, "f", "")
	if op != opDATA || blk != 1 {
		t.Fatalf("op %d block %d", op, blk)
	}
	// No ACK: block 1 comes again after about the timeout.
	t0 := time.Now()
	op, blk, again, err := p.read()
	if d := time.Since(t0); err != nil || op != opDATA || blk != 1 || !bytes.Equal(again, first) || d < timeout/2 {
		t.Fatalf("retransmission: op %d block %d after %v, err %v, same %v", op, blk, d, err, bytes.Equal(again, first))
	}
	// ACK 1 twice: block 2 once.
	p.ack(1)
	p.ack(1)
	if op, blk, _, err = p.read(); err != nil || op != opDATA || blk != 2 {
		t.Fatalf("after ACK 1: op %d block %d err %v", op, blk, err)
	}
	p.conn.SetReadDeadline(time.Now().Add(timeout / 2))
	if n, _, err := p.conn.ReadFrom(p.buf); err == nil {
		t.Fatalf("duplicate ACK answered with %d bytes", n)
	}
	// Now silence: block 2 twice more (Retries 2), then an ERROR and a
	// failed transfer.
	for i := 0; i < 2; i++ {
		if op, blk, _, err = p.read(); err != nil || op != opDATA || blk != 2 {
			t.Fatalf("retry %d: op %d block %d err %v", i, op, blk, err)
		}
	}
	if op, _, _, err = p.read(); err != nil || op != opERROR {
		t.Fatalf("after the retries: op %d err %v, want ERROR", op, err)
	}
	ev := waitFailed(t, e, time.Second)
	if ev.Fault != FaultClient || !errors.Is(ev.Cause, errTooManyRetries) {
		t.Errorf("event %+v", ev)
	}
}

// TestLockStepJunkDoesNotExtend: packets that are not the awaited ACK do
// not re-arm the timeout, so a client cannot hold a transfer forever by
// repeating an old ACK.
func TestLockStepJunkDoesNotExtend(t *testing.T) {
	const timeout = 400 * time.Millisecond
	e := startServer(t, func(s *Server, _ *Mapping) { s.Timeout = timeout; s.Retries = 1 })
	randomFile(t, filepath.Join(e.get, "f"), 4096)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	p.ack(1)
	if op, blk, _, err := p.read(); err != nil || op != opDATA || blk != 2 {
		t.Fatalf("op %d block %d err %v", op, blk, err)
	}
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(timeout / 4):
				p.ack(1)
			}
		}
	}()
	t0 := time.Now()
	for {
		op, blk, _, err := p.read()
		if err != nil {
			t.Fatal(err)
		}
		if op == opERROR {
			break
		}
		if op != opDATA || blk != 2 {
			t.Fatalf("op %d block %d", op, blk)
		}
	}
	// Timeout, retransmission, timeout: two timeouts, each at most two
	// receive waits.
	if d := time.Since(t0); d > 5*timeout {
		t.Errorf("given up after %v with a junk packet every %v", d, timeout/4)
	}
}

// TestLockStepClientError: the client's ERROR ends the GET at once.
func TestLockStepClientError(t *testing.T) {
	e := startServer(t, nil)
	randomFile(t, filepath.Join(e.get, "f"), 1<<20)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	p.conn.WriteTo([]byte("\x00\x05\x00\x00disk full\x00"), p.tid)
	ev := waitFailed(t, e, time.Second)
	var cs *clientStopped
	if !errors.As(ev.Cause, &cs) || cs.msg != "disk full" {
		t.Errorf("event %+v", ev)
	}
}

// TestLockStepStranger: a packet from another address or port does not
// touch the transfer (the socket is connected to the client).
func TestLockStepStranger(t *testing.T) {
	e := startServer(t, nil)
	randomFile(t, filepath.Join(e.get, "f"), 2048)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	other := newRawPeer(t)
	other.conn.WriteTo([]byte{0, opACK, 0, 1}, p.tid)
	other.conn.WriteTo([]byte("\x00\x05\x00\x00stop\x00"), p.tid)
	p.conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, _, err := p.conn.ReadFrom(p.buf); err == nil {
		t.Fatal("a stranger's ACK moved the transfer")
	}
	for blk := uint16(1); blk <= 5; blk++ {
		p.ack(blk)
		if blk == 5 {
			break
		}
		if op, b, _, err := p.read(); err != nil || op != opDATA || b != blk+1 {
			t.Fatalf("op %d block %d err %v", op, b, err)
		}
	}
	deadline := time.Now().Add(500 * time.Millisecond)
	for len(e.eventsOf(TransferFailed)) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if evs := e.eventsOf(TransferFailed); len(evs) != 0 {
		t.Errorf("failed: %+v", evs)
	}
}

// TestLockStepFallsBack: netascii is left to pin/tftp's sender (which
// converts line ends), and still works.
func TestLockStepFallsBack(t *testing.T) {
	e := startServer(t, nil)
	if err := os.WriteFile(filepath.Join(e.get, "t"), []byte("a\nb\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := newRawPeer(t)
	p.conn.WriteTo([]byte("\x00\x01t\x00netascii\x00"), e.addr)
	op, _, data, err := p.read()
	if err != nil || op != opDATA || string(data) != "a\r\nb\r\n" {
		t.Errorf("netascii: op %d %q err %v", op, data, err)
	}
	p.ack(1)
}

// TestLockStepDuplicateAckKeepsDeadline: a DATA lost on the way, and the
// client re-sending its last ACK just before the server's timeout (as
// busybox, curl and firmware clients do): the retransmission comes at the
// timeout, not a whole timeout after the duplicate.
func TestLockStepDuplicateAckKeepsDeadline(t *testing.T) {
	const timeout = 500 * time.Millisecond
	e := startServer(t, func(s *Server, _ *Mapping) { s.Timeout = timeout })
	randomFile(t, filepath.Join(e.get, "f"), 4096)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	p.ack(1)
	if op, blk, _, err := p.read(); err != nil || op != opDATA || blk != 2 {
		t.Fatalf("op %d block %d err %v", op, blk, err)
	}
	t0 := time.Now()
	time.Sleep(timeout * 9 / 10)
	p.ack(1)
	op, blk, _, err := p.read()
	d := time.Since(t0)
	if err != nil || op != opDATA || blk != 2 {
		t.Fatalf("op %d block %d err %v", op, blk, err)
	}
	t.Logf("block 2 again after %v (timeout %v)", d, timeout)
	if d > timeout*14/10 {
		t.Errorf("retransmitted after %v: the duplicate ACK re-armed the timeout (%v)", d, timeout)
	}
}

// TestLockStepEmptyDatagram: an empty datagram from the client is junk,
// not the shutdown of an abort.
func TestLockStepEmptyDatagram(t *testing.T) {
	e := startServer(t, nil)
	randomFile(t, filepath.Join(e.get, "f"), 4096)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	p.conn.WriteTo([]byte{}, p.tid)
	time.Sleep(100 * time.Millisecond)
	p.ack(1)
	if op, blk, _, err := p.read(); err != nil || op != opDATA || blk != 2 {
		t.Fatalf("after an empty datagram and ACK 1: op %d block %d err %v", op, blk, err)
	}
	if evs := e.eventsOf(TransferFailed); len(evs) != 0 {
		t.Errorf("failed: %+v", evs)
	}
}

// TestLockStepSignals: signals landing on the thread blocked in recv(2)
// (EINTR: a socket with SO_RCVTIMEO is not restarted) do not postpone the
// retransmission.
func TestLockStepSignals(t *testing.T) {
	const timeout = 400 * time.Millisecond
	e := startServer(t, func(s *Server, _ *Mapping) { s.Timeout = timeout })
	randomFile(t, filepath.Join(e.get, "f"), 4096)
	p, _, _, _ := lockStepPeer(t, e, "f", "")
	stop := make(chan struct{})
	hits := make(chan int, 1)
	go func() {
		n := 0
		defer func() { hits <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(30 * time.Millisecond):
			}
			tasks, _ := os.ReadDir("/proc/self/task")
			for _, task := range tasks {
				wchan, _ := os.ReadFile("/proc/self/task/" + task.Name() + "/wchan")
				if strings.Contains(string(wchan), "wait_for_more_packets") {
					tid, _ := strconv.Atoi(task.Name())
					syscall.Tgkill(os.Getpid(), tid, syscall.SIGURG)
					n++
				}
			}
		}
	}()
	t0 := time.Now()
	op, blk, _, err := p.read()
	d := time.Since(t0)
	close(stop)
	n := <-hits
	t.Logf("%d signals; block %d again after %v (timeout %v)", n, blk, d, timeout)
	if err != nil || op != opDATA || blk != 1 {
		t.Fatalf("op %d block %d err %v", op, blk, err)
	}
	if n == 0 {
		t.Fatal("no thread found waiting in recv: the test proves nothing")
	}
	if d > timeout*15/10 {
		t.Errorf("retransmitted after %v under signals (timeout %v)", d, timeout)
	}
}

// TestLockStepHandlerIgnoresError: a handler that drops ReadFrom's error
// and returns nil does not leak the transfer's socket (pin/tftp closes it
// only when the handler fails).
func TestLockStepHandlerIgnoresError(t *testing.T) {
	e := startServer(t, func(s *Server, _ *Mapping) { s.Timeout = 100 * time.Millisecond; s.Retries = 1 })
	done := make(chan error, 5)
	e.srv.SetHandler(HandlerFunc(func(r *Request) error {
		_, err := r.ReadFrom(strings.NewReader(strings.Repeat("x", 4096)))
		done <- err
		return nil
	}))
	fds := func() int { ents, _ := os.ReadDir("/proc/self/fd"); return len(ents) }
	before := fds()
	for range 5 {
		p := newRawPeer(t)
		p.conn.WriteTo([]byte("\x00\x01f\x00octet\x00"), e.addr)
		p.read()
		p.conn.Close() // the client goes away
	}
	for range 5 {
		if err := <-done; err == nil {
			t.Error("a transfer to a vanished client succeeded")
		}
	}
	time.Sleep(100 * time.Millisecond)
	if after := fds(); after > before {
		t.Errorf("open descriptors %d before, %d after 5 failed transfers", before, after)
	}
}

// TestLockStepLargeBlock: the largest block size is granted by default
// (the limit read from pin/tftp's sender is not lower).
func TestLockStepLargeBlock(t *testing.T) {
	e := startServer(t, nil)
	randomFile(t, filepath.Join(e.get, "f"), 200000)
	p, op, b01, data := lockStepPeer(t, e, "f", "blksize\x0065464\x00")
	if oack := string([]byte{byte(b01 >> 8), byte(b01)}) + string(data); op != 6 || oack != "blksize\x0065464\x00" {
		t.Fatalf("op %d OACK %q", op, oack)
	}
	p.ack(0)
	if op, blk, data, err := p.read(); err != nil || op != opDATA || blk != 1 || len(data) != 65464 {
		t.Fatalf("op %d block %d, %d bytes, err %v", op, blk, len(data), err)
	}
}
