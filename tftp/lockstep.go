package tftp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// lockStep is a GET served in lock-step (one block in flight) by the
// agent's own loop instead of pin/tftp's sender. pin/tftp still receives
// the request, parses it, opens the transfer's socket and runs the
// handler; only the block loop differs. Two things in pin/tftp's
// sender.go bound its lock-step speed:
//
//   - ReadFrom fills its one send buffer for block n+1 only after block n
//     is acknowledged, so every block's read (a read(2) and a copy of up
//     to 64 KiB) is on the round trip. Here the next block is read into a
//     second buffer right after the send, while the client is busy with
//     the block, as in.tftpd does.
//   - sendDatagram waits for each ACK in Go's network poller (recvfrom
//     EAGAIN, park, epoll_wait, reschedule, recvfrom again). Here the
//     socket is connected to the client and blocking, with SO_RCVTIMEO
//     as the retransmission timeout: one recv(2) per ACK.
//
// testdata/bench.sh measures both against in.tftpd.
type lockStep struct {
	rc      syscall.RawConn // reads and writes hold the socket open
	aborted func() bool
	block   int // negotiated block size
	oack    []byte
	timeout time.Duration
	retries int
	pkt     [2][]byte // the block in flight and the next one
	ack     []byte
	// shortened: SO_RCVTIMEO is set to what was left of a wait, not to
	// the timeout.
	shortened bool
}

// pinRequest is what the loop takes from pin/tftp's sender: the parsed
// request and the block size limit pin/tftp worked out for it (the
// server's maximum, and the interface's MTU with ClampToMTU).
type pinRequest struct {
	mode        string
	opts        map[string]string
	maxBlockLen int
}

// lockStepFor says whether the loop can serve this GET: an octet-mode
// request from an IPv4 client on a socket found in pin/tftp's sender.
// Anything else (netascii, IPv6, a pin/tftp whose sender has another
// shape) stays with pin/tftp's sender.
func lockStepFor(rf any, conn *net.UDPConn, remote net.UDPAddr) (pinRequest, bool) {
	if conn == nil || remote.IP.To4() == nil {
		return pinRequest{}, false
	}
	req, ok := requestOf(rf)
	if !ok || !strings.EqualFold(req.mode, "octet") {
		return pinRequest{}, false
	}
	return req, true
}

// newLockStep prepares the transfer's socket for the loop: connected to
// the client, blocking, SO_RCVTIMEO the timeout. size is the content's
// size (-1: unknown); aborted tells an abort's shutdown(2) from an empty
// datagram.
func newLockStep(req pinRequest, conn *net.UDPConn, remote net.UDPAddr, maxBlock int, size int64,
	timeout time.Duration, retries int, aborted func() bool) (*lockStep, error) {
	ls := &lockStep{block: 512, timeout: timeout, retries: retries, aborted: aborted}
	limit := min(maxBlock, 65464)
	if req.maxBlockLen >= 512 {
		limit = min(limit, req.maxBlockLen)
	}
	var oack []byte
	for name, value := range req.opts {
		switch strings.ToLower(name) {
		case "blksize":
			n, err := strconv.Atoi(value)
			if err != nil || n < 512 {
				continue // ignored, as pin/tftp does (RFC 2348 allows it)
			}
			ls.block = min(n, limit)
			oack = appendOption(oack, name, strconv.Itoa(ls.block))
		case "tsize":
			// Not for an empty or unknown size: curl refuses tsize 0, and
			// pin/tftp leaves it out too.
			if size > 0 {
				oack = appendOption(oack, name, strconv.FormatInt(size, 10))
			}
		}
	}
	if oack != nil {
		ls.oack = append([]byte{0, 6}, oack...)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	ls.rc = rc
	sa := &unix.SockaddrInet4{Port: remote.Port}
	copy(sa.Addr[:], remote.IP.To4())
	var serr error
	err = rc.Control(func(fd uintptr) {
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); serr != nil {
			return
		}
		if serr = unix.Connect(int(fd), sa); serr != nil {
			return
		}
		serr = unix.SetNonblock(int(fd), false)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, err
	}
	// A small file needs no full-size buffers (it cannot grow past its
	// announced size either: the loop stops at a short block).
	buf := ls.block
	if size >= 0 && size < int64(buf) {
		buf = int(size)
	}
	for i := range ls.pkt {
		ls.pkt[i] = make([]byte, 4+buf)
		binary.BigEndian.PutUint16(ls.pkt[i], 3) // DATA
	}
	ls.ack = make([]byte, 516)
	return ls, nil
}

func appendOption(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, value...)
	return append(b, 0)
}

// requestOf reads the request pin/tftp parsed into its sender
// (unexported fields; TestRequestOf pins the shape).
func requestOf(rf any) (pinRequest, bool) {
	v := reflect.ValueOf(rf)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return pinRequest{}, false
	}
	m := v.Elem().FieldByName("mode")
	o := v.Elem().FieldByName("opts")
	b := v.Elem().FieldByName("maxBlockLen")
	if !m.IsValid() || m.Kind() != reflect.String || !o.IsValid() || o.Kind() != reflect.Map ||
		o.Type().Key().Kind() != reflect.String || o.Type().Elem().Kind() != reflect.String ||
		!b.IsValid() || b.Kind() != reflect.Int {
		return pinRequest{}, false
	}
	req := pinRequest{mode: m.String(), opts: make(map[string]string, o.Len()), maxBlockLen: int(b.Int())}
	for it := o.MapRange(); it.Next(); {
		req.opts[it.Key().String()] = it.Value().String()
	}
	return req, true
}

var errTooManyRetries = errors.New("no acknowledgement from the client")

// send sends src in lock-step; it returns the bytes the client
// acknowledged.
func (ls *lockStep) send(src io.Reader) (int64, error) {
	var sent int64
	cur := 0
	n, err := ls.fill(src, ls.pkt[cur])
	if err != nil {
		return 0, err
	}
	if ls.oack != nil {
		if err := ls.exchange(ls.oack, 0); err != nil {
			return 0, err
		}
	}
	for blk := uint16(1); ; blk++ {
		p := ls.pkt[cur][:4+n]
		binary.BigEndian.PutUint16(p[2:], blk)
		if err := ls.write(p); err != nil {
			return sent, err
		}
		last := n < ls.block
		var next int
		if !last {
			// Read the next block while the client takes this one.
			next, err = ls.fill(src, ls.pkt[1-cur])
			if err != nil {
				return sent, err
			}
		}
		if err := ls.waitAck(p, blk); err != nil {
			return sent, err
		}
		sent += int64(n)
		if last {
			return sent, nil
		}
		cur, n = 1-cur, next
	}
}

func (ls *lockStep) fill(src io.Reader, p []byte) (int, error) {
	n, err := io.ReadFull(src, p[4:])
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	return n, err
}

// exchange sends p and waits for the ACK of block blk.
func (ls *lockStep) exchange(p []byte, blk uint16) error {
	if err := ls.write(p); err != nil {
		return err
	}
	return ls.waitAck(p, blk)
}

// waitAck waits for the ACK of blk, retransmitting p on each timeout.
// Older ACKs (duplicates) are ignored, not answered: answering them is
// the Sorcerer's Apprentice bug. Only the client's address and port get
// here (the socket is connected). Whatever else arrives (junk, a
// duplicate ACK, an empty datagram, a signal, a soft ICMP error) does not
// extend the wait: the next recv gets only what is left of it.
func (ls *lockStep) waitAck(p []byte, blk uint16) error {
	deadline := time.Now().Add(ls.timeout)
	for try := 0; ; {
		n, err := ls.recv()
		switch {
		case err == nil && n >= 4 && binary.BigEndian.Uint16(ls.ack) == 4 && binary.BigEndian.Uint16(ls.ack[2:]) == blk:
			if ls.shortened {
				return ls.setTimeout(ls.timeout)
			}
			return nil
		case err == nil && n >= 4 && binary.BigEndian.Uint16(ls.ack) == 5:
			return &clientStopped{msg: strings.TrimRight(string(ls.ack[4:n]), "\x00")}
		case err == nil && n == 0 && ls.aborted():
			return ErrAborted // shut down by abort
		case err == errClosed:
			return ErrAborted
		case err != nil && err != unix.EAGAIN && err != unix.EINTR && !softError(err):
			return err // ECONNREFUSED: the client's port is closed
		}
		if left := time.Until(deadline); err != unix.EAGAIN && left > 0 {
			// SO_RCVTIMEO of 0 would wait forever.
			if err := ls.setTimeout(max(left, time.Millisecond)); err != nil {
				return err
			}
			continue
		}
		// Timed out.
		if try++; try > ls.retries {
			return errTooManyRetries
		}
		if ls.shortened {
			if err := ls.setTimeout(ls.timeout); err != nil {
				return err
			}
		}
		if err := ls.write(p); err != nil {
			return err
		}
		deadline = time.Now().Add(ls.timeout)
	}
}

// softError is an error a connected UDP socket reports for an ICMP
// message or a full queue that a retransmission may get past (an
// unconnected socket, as pin/tftp's, never sees them).
func softError(err error) bool {
	switch err {
	case unix.EMSGSIZE, unix.EHOSTUNREACH, unix.ENETUNREACH, unix.ENOBUFS, unix.EPERM:
		return true
	}
	return false
}

func (ls *lockStep) setTimeout(d time.Duration) error {
	var serr error
	err := ls.rc.Control(func(fd uintptr) {
		tv := unix.NsecToTimeval(d.Nanoseconds())
		serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		return ErrAborted
	}
	ls.shortened = d != ls.timeout
	return serr
}

// recv waits in recv(2) for the client's next packet, at most the
// timeout (SO_RCVTIMEO: EAGAIN).
func (ls *lockStep) recv() (n int, err error) {
	cerr := ls.rc.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), ls.ack)
		return true
	})
	if cerr != nil {
		return 0, errClosed
	}
	return n, err
}

// errClosed: the socket was closed (by an abort).
var errClosed = errors.New("closed")

// write sends p; a soft error counts as sent (the timeout retransmits).
func (ls *lockStep) write(p []byte) error {
	var err error
	cerr := ls.rc.Write(func(fd uintptr) bool {
		for {
			err = unix.Send(int(fd), p, unix.MSG_NOSIGNAL)
			if err != unix.EINTR {
				return true
			}
		}
	})
	if cerr != nil {
		return ErrAborted
	}
	if softError(err) {
		return nil
	}
	return err
}

// clientStopped is the client's ERROR packet.
type clientStopped struct{ msg string }

func (e *clientStopped) Error() string { return fmt.Sprintf("the client stopped: %q", e.msg) }

// wakeReceive makes a recv(2) blocked on c return at once, as Close does
// not: shutdown(2) of a UDP socket wakes its waiters (it fails with
// ENOTCONN when the socket is not connected, and wakes them all the same).
func wakeReceive(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) { unix.Shutdown(int(fd), unix.SHUT_RDWR) })
}
