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
	block   int             // negotiated block size
	oack    []byte
	timeout time.Duration
	retries int
	pkt     [2][]byte // the block in flight and the next one
	ack     []byte
}

// newLockStep takes over a GET from pin/tftp's sender rf, or returns nil
// when the request needs pin/tftp (netascii mode, a socket not found).
func newLockStep(rf any, conn *net.UDPConn, remote *net.UDPAddr, maxBlock int, size int64, timeout time.Duration, retries int) *lockStep {
	ip4 := remote.IP.To4()
	if conn == nil || ip4 == nil {
		return nil
	}
	mode, opts, ok := requestOf(rf)
	if !ok || !strings.EqualFold(mode, "octet") {
		return nil
	}
	ls := &lockStep{block: 512, timeout: timeout, retries: retries}
	var oack []byte
	for name, value := range opts {
		switch strings.ToLower(name) {
		case "blksize":
			n, err := strconv.Atoi(value)
			if err != nil || n < 512 {
				continue // ignored, as pin/tftp does (RFC 2348 allows it)
			}
			ls.block = min(n, maxBlock, 65464)
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
		return nil
	}
	ls.rc = rc
	var serr error
	err = rc.Control(func(fd uintptr) {
		sa := &unix.SockaddrInet4{Port: remote.Port}
		copy(sa.Addr[:], ip4)
		tv := unix.NsecToTimeval(timeout.Nanoseconds())
		if serr = unix.SetsockoptTimeval(int(fd), unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); serr != nil {
			return
		}
		if serr = unix.Connect(int(fd), sa); serr != nil {
			return
		}
		serr = unix.SetNonblock(int(fd), false)
	})
	if err != nil || serr != nil {
		return nil
	}
	for i := range ls.pkt {
		ls.pkt[i] = make([]byte, 4+ls.block)
		binary.BigEndian.PutUint16(ls.pkt[i], 3) // DATA
	}
	ls.ack = make([]byte, 516)
	return ls
}

func appendOption(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, 0)
	b = append(b, value...)
	return append(b, 0)
}

// requestOf reads the transfer mode and options pin/tftp parsed into its
// sender (unexported fields; TestRequestOf pins the shape).
func requestOf(rf any) (mode string, opts map[string]string, ok bool) {
	v := reflect.ValueOf(rf)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return "", nil, false
	}
	m := v.Elem().FieldByName("mode")
	o := v.Elem().FieldByName("opts")
	if !m.IsValid() || m.Kind() != reflect.String || !o.IsValid() || o.Kind() != reflect.Map ||
		o.Type().Key().Kind() != reflect.String || o.Type().Elem().Kind() != reflect.String {
		return "", nil, false
	}
	opts = make(map[string]string, o.Len())
	for it := o.MapRange(); it.Next(); {
		opts[it.Key().String()] = it.Value().String()
	}
	return m.String(), opts, true
}

var errTooManyRetries = errors.New("no acknowledgement from the client")

// send sends src in lock-step; it returns the bytes the client
// acknowledged.
func (ls *lockStep) send(src io.Reader) (int64, error) {
	if ls.oack != nil {
		if err := ls.exchange(ls.oack, 0); err != nil {
			return 0, err
		}
	}
	var sent int64
	cur := 0
	n, err := ls.fill(src, ls.pkt[cur])
	if err != nil {
		return 0, err
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
	n, err := io.ReadFull(src, p[4:4+ls.block])
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
// here (the socket is connected), and whatever else it sends does not
// extend the timeout.
func (ls *lockStep) waitAck(p []byte, blk uint16) error {
	deadline := time.Now().Add(ls.timeout)
	for try := 0; ; {
		n, err := ls.recv()
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
		case err != nil:
			return err // ECONNREFUSED: the client's port is closed
		case n == 0:
			return ErrAborted // shut down by abort
		case n >= 4 && binary.BigEndian.Uint16(ls.ack) == 4 && binary.BigEndian.Uint16(ls.ack[2:]) == blk:
			return nil
		case n >= 4 && binary.BigEndian.Uint16(ls.ack) == 5:
			return &clientStopped{msg: strings.TrimRight(string(ls.ack[4:n]), "\x00")}
		default:
			if time.Now().Before(deadline) {
				continue
			}
		}
		// Timed out.
		if try++; try > ls.retries {
			return errTooManyRetries
		}
		if err := ls.write(p); err != nil {
			return err
		}
		deadline = time.Now().Add(ls.timeout)
	}
}

// recv waits in recv(2) for the client's next packet, at most the
// timeout (SO_RCVTIMEO: EAGAIN).
func (ls *lockStep) recv() (n int, err error) {
	cerr := ls.rc.Read(func(fd uintptr) bool {
		n, err = unix.Read(int(fd), ls.ack)
		return true
	})
	if cerr != nil {
		return 0, ErrAborted // closed by abort
	}
	return n, err
}

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
