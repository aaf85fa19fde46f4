package tftp

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

func get(t *testing.T, e *testEnv, name string) ([]byte, error) {
	t.Helper()
	c, _ := pintftp.NewClient(e.addr.String())
	c.SetTimeout(time.Second)
	c.SetRetries(2)
	wt, err := c.Receive(name, "octet")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_, err = wt.WriteTo(&b)
	return b.Bytes(), err
}

// TestSessionPrefix: with a session prefix, only requests carrying it are
// served; others (another guest, a local user) are refused, cannot forge
// the result, and do not count as the guest's first request.
func TestSessionPrefix(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) { m.Prefix = "5ecret" })
	os.WriteFile(filepath.Join(e.get, "manifest"), []byte("task\n"), 0o644)
	if _, err := get(t, e, "manifest"); err == nil {
		t.Error("GET without the prefix served")
	}
	if err := put(t, e, "manifest", []byte("forged\n")); err == nil {
		t.Error("PUT without the prefix accepted")
	}
	if err := put(t, e, "other/manifest", []byte("forged\n")); err == nil {
		t.Error("PUT with a wrong prefix accepted")
	}
	if _, err := os.Stat(filepath.Join(e.put, "manifest")); err == nil {
		t.Fatal("a foreign upload reached the put dir")
	}
	if n := len(e.eventsOf(FirstRequest)); n != 0 {
		t.Errorf("foreign requests counted as the guest's first request (%d)", n)
	}
	for _, ev := range e.eventsOf(TransferFailed) {
		if ev.Fault != FaultForeign {
			t.Errorf("foreign request reported as %v", ev.Fault)
		}
	}
	data, err := get(t, e, "5ecret/manifest")
	if err != nil || string(data) != "task\n" {
		t.Fatalf("GET with the prefix: %q %v", data, err)
	}
	if err := put(t, e, "/5ecret/manifest", []byte("result\n")); err != nil {
		t.Fatalf("PUT with the prefix: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.put, "manifest")); string(b) != "result\n" {
		t.Errorf("put/manifest %q", b)
	}
	if evs := e.eventsOf(UploadCompleted); len(evs) != 1 || evs[0].Name != "manifest" {
		t.Errorf("upload events %+v (the prefix must be stripped)", evs)
	}
	// The prefix is one path element: no escape through it.
	if _, err := get(t, e, "5ecret/../get/manifest"); err == nil {
		t.Error("GET through .. after the prefix served")
	}
}

// TestSourceAddress: with a source address set, other clients are refused.
func TestSourceAddress(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) { m.Source = netip.MustParseAddr("127.0.0.2") })
	os.WriteFile(filepath.Join(e.get, "manifest"), []byte("task\n"), 0o644)
	if _, err := get(t, e, "manifest"); err == nil {
		t.Error("GET from another address served")
	}
	e2 := startServer(t, func(s *Server, m *Mapping) { m.Source = netip.MustParseAddr("127.0.0.1") })
	os.WriteFile(filepath.Join(e2.get, "manifest"), []byte("task\n"), 0o644)
	if data, err := get(t, e2, "manifest"); err != nil || string(data) != "task\n" {
		t.Errorf("GET from the guest's address: %q %v", data, err)
	}
}

// TestRedirected: the same mapping behind a second server through
// Redirected serves requests without the prefix, from another address;
// the first server still refuses them. Both report to the same events.
func TestRedirected(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) {
		m.Prefix, m.Source = "5ecret", netip.MustParseAddr("127.0.0.2")
	})
	os.WriteFile(filepath.Join(e.get, "task.manifest"), []byte("task\n"), 0o644)
	if _, err := get(t, e, "task.manifest"); err == nil {
		t.Fatal("the prefixed server served a bare name")
	}
	redirected := &Server{ErrorLog: testLogger(t), Anticipate: 1}
	redirected.SetHandler(e.mapping.Redirected())
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go redirected.Serve(conn)
	t.Cleanup(func() { redirected.Shutdown(context.Background()) })
	r := &testEnv{addr: conn.LocalAddr().(*net.UDPAddr)}
	if data, err := get(t, r, "task.manifest"); err != nil || string(data) != "task\n" {
		t.Fatalf("redirected GET: %q %v", data, err)
	}
	if err := put(t, r, "result.manifest", []byte("result\n")); err != nil {
		t.Fatalf("redirected PUT: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.put, "result.manifest")); string(b) != "result\n" {
		t.Errorf("put/result.manifest %q", b)
	}
	if evs := e.eventsOf(UploadCompleted); len(evs) != 1 || evs[0].Name != "result.manifest" {
		t.Errorf("upload events %+v", evs)
	}
	// Still confined to the mapping's directories.
	if _, err := get(t, r, "../put/result.manifest"); err == nil {
		t.Error("redirected GET escaped the get dir")
	}
}
