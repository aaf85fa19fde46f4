package result

import (
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// CompressedSuffix marks a result the worker uploaded compressed
// (result.manifest.lz4: an LZ4 frame stream, as bbot's worker sends it).
const CompressedSuffix = ".lz4"

// Decompress writes the LZ4 frame stream src, decompressed, to dst and
// returns the decompressed size. The limit applies to the decompressed
// bytes: more is a decompression bomb, a *GuestFault like a corrupt or
// truncated frame; errors reading src or writing dst are the host's and
// returned as they are.
func Decompress(dst io.Writer, src io.Reader, limit int64) (int64, error) {
	in := &recordingReader{r: src}
	out := &recordingWriter{w: dst}
	zr := lz4.NewReader(in)
	// One block at a time: memory stays at one block (at most 4 MiB)
	// whatever the frame says.
	if err := zr.Apply(lz4.ConcurrencyOption(1)); err != nil {
		return 0, err
	}
	n, err := io.Copy(out, io.LimitReader(zr, limit+1))
	switch {
	case in.err != nil:
		return n, in.err
	case out.err != nil:
		return n, out.err
	case err != nil:
		return n, &GuestFault{Err: fmt.Errorf("result.manifest%s: %w", CompressedSuffix, err)}
	case n > limit:
		return n, &GuestFault{Err: fmt.Errorf("result.manifest%s decompresses to more than %d bytes", CompressedSuffix, limit)}
	}
	return n, nil
}

// recordingReader keeps the first read error (other than EOF) of the
// host's file, so that it is not mistaken for a corrupt frame.
type recordingReader struct {
	r   io.Reader
	err error
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) && r.err == nil {
		r.err = err
	}
	return n, err
}

type recordingWriter struct {
	w   io.Writer
	err error
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	n, err := w.w.Write(p)
	if err != nil && w.err == nil {
		w.err = err
	}
	return n, err
}
