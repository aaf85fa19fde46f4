package result

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pierrec/lz4/v4"
)

func compress(t testing.TB, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := lz4.NewWriter(&b)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// zeros is a reader of n zero bytes that is never held in memory.
type zeros struct{ n int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.n == 0 {
		return 0, io.EOF
	}
	k := int64(len(p))
	k = min(k, z.n)
	clear(p[:k])
	z.n -= k
	return int(k), nil
}

func TestDecompress(t *testing.T) {
	manifest := []byte(": 1\nname: hello\nversion: 1.0.0\nstatus: success\n")
	big := bytes.Repeat([]byte("line of a log\n"), 100000)
	for _, tc := range []struct {
		name  string
		in    []byte
		limit int64
		want  []byte
		fault string // "" = no error
	}{
		{name: "manifest", in: compress(t, manifest), limit: 1 << 20, want: manifest},
		{name: "exactly the limit", in: compress(t, big), limit: int64(len(big)), want: big},
		{name: "two frames", in: append(compress(t, manifest[:10]), compress(t, manifest[10:])...), limit: 1 << 20, want: manifest},
		{name: "empty file", in: nil, limit: 1 << 20, want: nil},
		{name: "one byte over", in: compress(t, big), limit: int64(len(big)) - 1, fault: "decompresses to more than"},
		{name: "not lz4", in: manifest, limit: 1 << 20, fault: "result.manifest.lz4: "},
		{name: "truncated", in: compress(t, big)[:1000], limit: 1 << 30, fault: "result.manifest.lz4: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			n, err := Decompress(&out, bytes.NewReader(tc.in), tc.limit)
			var gf *GuestFault
			switch {
			case tc.fault == "" && err != nil:
				t.Fatalf("error %v", err)
			case tc.fault == "":
				if n != int64(len(tc.want)) || !bytes.Equal(out.Bytes(), tc.want) {
					t.Errorf("got %d bytes, want %d", n, len(tc.want))
				}
			case !errors.As(err, &gf) || !strings.Contains(err.Error(), tc.fault):
				t.Errorf("error %v, want a guest fault with %q", err, tc.fault)
			}
		})
	}
}

// TestDecompressBomb: 1 GiB of zeros (a few MiB compressed) is refused
// once the limit is passed, without decompressing the rest.
func TestDecompressBomb(t *testing.T) {
	var b bytes.Buffer
	zw := lz4.NewWriter(&b)
	if _, err := io.Copy(zw, &zeros{n: 1 << 30}); err != nil {
		t.Fatal(err)
	}
	zw.Close()
	t.Logf("1 GiB compresses to %d bytes", b.Len())
	t0 := time.Now()
	n, err := Decompress(io.Discard, &b, 8<<20)
	var gf *GuestFault
	if !errors.As(err, &gf) || n != 8<<20+1 {
		t.Fatalf("%d bytes, %v", n, err)
	}
	t.Logf("refused after %d bytes in %v: %v", n, time.Since(t0), err)
}

type failingReader struct{ after []byte }

func (r *failingReader) Read(p []byte) (int, error) {
	if len(r.after) == 0 {
		return 0, syscall.EIO
	}
	n := copy(p, r.after)
	r.after = r.after[n:]
	return n, nil
}

type failingWriter struct{}

func (failingWriter) Write(p []byte) (int, error) { return 0, syscall.ENOSPC }

// TestDecompressHostErrors: the host's read and write errors are not the
// guest's fault.
func TestDecompressHostErrors(t *testing.T) {
	in := compress(t, bytes.Repeat([]byte("x"), 1<<20))
	_, err := Decompress(io.Discard, &failingReader{after: in[:len(in)/2]}, 1<<30)
	var gf *GuestFault
	if !errors.Is(err, syscall.EIO) || errors.As(err, &gf) {
		t.Errorf("read error: %v", err)
	}
	_, err = Decompress(failingWriter{}, bytes.NewReader(in), 1<<30)
	if !errors.Is(err, syscall.ENOSPC) || errors.As(err, &gf) {
		t.Errorf("write error: %v", err)
	}
}
