package tftp

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// TestOnTransfer: every request is reported once done, with its direction,
// its bytes and its error: a GET and a PUT that complete, a GET of a
// missing file that fails.
func TestOnTransfer(t *testing.T) {
	type report struct {
		op    Op
		bytes int64
		ok    bool
	}
	var mu sync.Mutex
	var got []report
	e := startServer(t, func(s *Server, _ *Mapping) {
		s.OnTransfer = func(op Op, n int64, err error) {
			mu.Lock()
			got = append(got, report{op, n, err == nil})
			mu.Unlock()
		}
	})
	data := bytes.Repeat([]byte("x"), 3000)
	if err := os.WriteFile(filepath.Join(e.get, "task"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := pintftp.NewClient(e.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetRetries(1)
	wt, err := c.Receive("task", "octet")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := wt.WriteTo(io.Discard); err != nil || n != int64(len(data)) {
		t.Fatalf("GET: %d bytes, %v", n, err)
	}
	rf, err := c.Send("result", "octet")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rf.ReadFrom(strings.NewReader("status: success\n")); err != nil {
		t.Fatalf("PUT: %v", err)
	}
	if wt, err := c.Receive("missing", "octet"); err == nil {
		if _, err := wt.WriteTo(io.Discard); err == nil {
			t.Fatal("GET of a missing file succeeded")
		}
	}
	want := []report{{Get, 3000, true}, {Put, 16, true}, {Get, 0, false}}
	// The server reports after its side of the exchange ends, which may
	// be just after the client's.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n >= len(want) || time.Now().After(deadline) {
			break
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(want) {
		t.Fatalf("reports %+v, want %+v", got, want)
	}
	// Each transfer's own goroutine reports: in any order.
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("reports %+v: missing %+v", got, w)
		}
	}
}
