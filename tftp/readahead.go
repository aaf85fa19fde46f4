package tftp

import (
	"io"
	"sync"
)

// readAhead reads a file in a goroutine, a few chunks ahead of the
// transfer. Lock-step TFTP waits a round trip for every block; reading the
// next block while that round trip is in flight takes the file read (a
// system call and a 64 KiB copy) off the critical path, as in.tftpd does
// with its read-ahead buffer.
type readAhead struct {
	chunks chan []byte
	free   chan []byte
	buf    []byte // the chunk being read
	off    int
	err    error
	done   chan struct{}
	once   sync.Once
	errc   chan error
}

const (
	readAheadChunk = 64 << 10
	readAheadDepth = 3
)

func newReadAhead(r io.Reader) *readAhead {
	ra := &readAhead{
		chunks: make(chan []byte, readAheadDepth),
		free:   make(chan []byte, readAheadDepth+1),
		done:   make(chan struct{}),
		errc:   make(chan error, 1),
	}
	for range readAheadDepth + 1 {
		ra.free <- make([]byte, readAheadChunk)
	}
	go ra.fill(r)
	return ra
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.chunks)
	for {
		var buf []byte
		select {
		case buf = <-ra.free:
		case <-ra.done:
			return
		}
		n, err := io.ReadFull(r, buf[:cap(buf)])
		if n > 0 {
			select {
			case ra.chunks <- buf[:n]:
			case <-ra.done:
				return
			}
		}
		if err == io.ErrUnexpectedEOF {
			err = io.EOF
		}
		if err != nil {
			ra.errc <- err
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for ra.buf == nil || ra.off == len(ra.buf) {
		if ra.buf != nil {
			ra.free <- ra.buf
			ra.buf = nil
		}
		chunk, ok := <-ra.chunks
		if !ok {
			if ra.err == nil {
				ra.err = <-ra.errc
			}
			return 0, ra.err
		}
		ra.buf, ra.off = chunk, 0
	}
	n := copy(p, ra.buf[ra.off:])
	ra.off += n
	return n, nil
}

// Close stops the reading goroutine; the underlying reader is the caller's.
func (ra *readAhead) Close() {
	ra.once.Do(func() { close(ra.done) })
}
