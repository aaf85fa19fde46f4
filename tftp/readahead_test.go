package tftp

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

func TestReadAhead(t *testing.T) {
	for _, size := range []int{0, 1, readAheadChunk - 1, readAheadChunk, readAheadChunk + 1, 5*readAheadChunk + 123} {
		data := make([]byte, size)
		rand.Read(data)
		ra := newReadAhead(bytes.NewReader(data))
		// Odd read sizes, as TFTP block sizes are.
		got, err := io.ReadAll(iotest.OneByteReader(io.LimitReader(ra, int64(size))))
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("size %d: %d bytes, %v", size, len(got), err)
		}
		if n, err := ra.Read(make([]byte, 10)); n != 0 || err != io.EOF {
			t.Fatalf("size %d: after end: %d, %v", size, n, err)
		}
		ra.Close()
	}
	// Errors come through after the data before them.
	boom := errors.New("boom")
	ra := newReadAhead(io.MultiReader(bytes.NewReader([]byte("abc")), iotest.ErrReader(boom)))
	got, err := io.ReadAll(ra)
	if string(got) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("got %q, %v", got, err)
	}
	// Close stops the goroutine of an abandoned transfer.
	ra = newReadAhead(bytes.NewReader(make([]byte, 10*readAheadChunk)))
	ra.Read(make([]byte, 100))
	ra.Close()
}
