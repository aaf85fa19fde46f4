package tftp

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// TestRequestOf pins the shape of pin/tftp's sender that requestOf reads:
// without it every GET would silently fall back to pin/tftp's slower loop.
func TestRequestOf(t *testing.T) {
	got := make(chan string, 1)
	srv := pintftp.NewServer(func(name string, rf io.ReaderFrom) error {
		mode, opts, ok := requestOf(rf)
		if !ok {
			got <- "not found"
			return errors.New("no")
		}
		got <- mode + " blksize=" + opts["blksize"]
		return errors.New("done")
	}, nil)
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(conn)
	defer srv.Shutdown()
	p := newRawPeer(t)
	p.conn.WriteTo([]byte("\x00\x01x\x00octet\x00blksize\x001468\x00"), conn.LocalAddr())
	select {
	case s := <-got:
		if s != "octet blksize=1468" {
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
