package tftp

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// rawRequest sends an RRQ or WRQ with an arbitrary name (bytes the library
// clients and curl would not send) and returns the server's first answer.
func rawRequest(t *testing.T, e *testEnv, op uint16, name string, opts ...string) (opcode uint16, msg string) {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pkt := []byte{0, byte(op)}
	pkt = append(pkt, name...)
	pkt = append(pkt, 0)
	pkt = append(pkt, "octet\x00"...)
	for _, o := range opts {
		pkt = append(pkt, o...)
		pkt = append(pkt, 0)
	}
	conn.WriteTo(pkt, e.addr)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 70000)
	n, _, err := conn.ReadFrom(buf)
	if err != nil {
		return 0, "no answer: " + err.Error()
	}
	if n < 4 {
		return 0, "short packet"
	}
	opcode = uint16(buf[0])<<8 | uint16(buf[1])
	if opcode == 5 {
		msg = string(bytes.TrimRight(buf[4:n], "\x00"))
	}
	return opcode, msg
}

const (
	opRRQ   = 1
	opWRQ   = 2
	opDATA  = 3
	opACK   = 4
	opERROR = 5
)

// TestAbuse throws traversal and abuse probes at the server: every one is
// refused with a short fixed text, nothing outside the mapping is read or
// written, no temporary is left, and the server keeps serving.
func TestAbuse(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) {
		m.MaxFileSize = 64 << 10
		s.Timeout, s.Retries = time.Second, 2
	})
	secret := filepath.Join(e.root, "secret")
	os.WriteFile(secret, []byte("SECRET"), 0o644)
	os.WriteFile(filepath.Join(e.get, "ok"), []byte("fine"), 0o644)
	os.Mkdir(filepath.Join(e.get, "dir"), 0o755)
	os.Mkdir(filepath.Join(e.put, "dir"), 0o755)
	os.Symlink("/", filepath.Join(e.get, "rootlink"))
	os.Symlink("../secret", filepath.Join(e.get, "escape"))
	os.Symlink("/etc/passwd", filepath.Join(e.get, "abslink"))
	os.Symlink("/dev/zero", filepath.Join(e.get, "devlink"))
	os.Symlink("..", filepath.Join(e.put, "up"))
	os.Symlink("../secret", filepath.Join(e.put, "overwrite"))
	if err := syscall.Mkfifo(filepath.Join(e.get, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshotTree(t, e.root)

	probes := []struct {
		op   uint16
		name string
	}{
		{opRRQ, "../secret"},
		{opRRQ, "/etc/passwd"},
		{opRRQ, "//etc/passwd"},
		{opRRQ, "a/../../secret"},
		{opRRQ, ".."},
		{opRRQ, "/../secret"},
		{opRRQ, "rootlink/etc/passwd"},
		{opRRQ, "escape"},
		{opRRQ, "abslink"},
		{opRRQ, "devlink"},
		{opRRQ, "..\\secret"},
		{opRRQ, "ok\x01"},
		{opRRQ, ""},
		{opRRQ, "/"},
		{opRRQ, "."},
		{opRRQ, "dir"},
		{opRRQ, "fifo"},
		{opRRQ, "%2e%2e/secret"},
		{opWRQ, "../x"},
		{opWRQ, "/tmp/bbot-abs"},
		{opWRQ, "a/../../x"},
		{opWRQ, "up/x"},
		{opWRQ, "overwrite"},
		{opWRQ, "dir"},
		{opWRQ, "missing/x"},
		{opWRQ, "x\\..\\..\\y"},
		{opWRQ, ""},
		{opWRQ, "x\x7f"},
	}
	for _, p := range probes {
		op, msg := rawRequest(t, e, p.op, p.name)
		if op != opERROR {
			t.Errorf("op %d %q: answered with opcode %d, want ERROR", p.op, p.name, op)
			continue
		}
		if strings.Contains(msg, "/") || len(msg) > 40 {
			t.Errorf("op %d %q: error text %q reveals too much", p.op, p.name, msg)
		}
		// The server still serves the next client.
		c, _ := pintftp.NewClient(e.addr.String())
		wt, err := c.Receive("ok", "octet")
		if err != nil {
			t.Fatalf("after %q: %v", p.name, err)
		}
		var b bytes.Buffer
		wt.WriteTo(&b)
		if b.String() != "fine" {
			t.Fatalf("after %q: got %q", p.name, b.String())
		}
	}

	// Oversize uploads: announced (tsize) and unannounced.
	curl := requireTool(t, "curl")
	atftp := requireTool(t, "atftp")
	big := filepath.Join(t.TempDir(), "big")
	randomFile(t, big, 200<<10)
	if err := run(t, curl, "-sS", "-T", big, "tftp://127.0.0.1:"+e.port()+"/big"); err == nil {
		t.Errorf("oversize PUT with tsize accepted")
	}
	if err := run(t, atftp, "-p", "-r", "big2", "-l", big, "127.0.0.1", e.port()); err == nil {
		t.Errorf("oversize PUT without tsize accepted")
	}
	// A WRQ whose tsize is over the cap is refused at once.
	if op, msg := rawRequest(t, e, opWRQ, "liar", "tsize", strconv.Itoa(1<<30)); op != opERROR || msg != "too large" {
		t.Errorf("PUT announcing 1 GiB: opcode %d %q", op, msg)
	}

	after := snapshotTree(t, e.root)
	if before != after {
		t.Errorf("tree changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if _, err := os.Stat("/tmp/bbot-abs"); err == nil {
		t.Errorf("absolute PUT wrote /tmp/bbot-abs")
		os.Remove("/tmp/bbot-abs")
	}
	if data, _ := os.ReadFile(secret); string(data) != "SECRET" {
		t.Errorf("secret overwritten: %q", data)
	}
	assertNoTemp(t, e.put)
	if n := len(e.eventsOf(UploadCompleted)); n != 0 {
		t.Errorf("%d uploads completed", n)
	}
	if n := len(e.eventsOf(TransferFailed)); n < len(probes) {
		t.Errorf("only %d failures reported for %d probes", n, len(probes))
	}
}

// snapshotTree lists every path under root with its size (symlinks by
// target), to prove nothing was written.
func snapshotTree(t *testing.T, root string) string {
	var b strings.Builder
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if fi.Mode()&os.ModeSymlink != 0 {
			target, _ := os.Readlink(p)
			b.WriteString(rel + " -> " + target + "\n")
			return nil
		}
		b.WriteString(rel + " " + fi.Mode().String() + " " + strconv.FormatInt(fi.Size(), 10) + "\n")
		return nil
	})
	return b.String()
}

// TestRepeatedPutReplaces: a worker retrying its upload replaces the file.
func TestRepeatedPutReplaces(t *testing.T) {
	e := startServer(t, nil)
	c, _ := pintftp.NewClient(e.addr.String())
	for _, content := range []string{"first attempt, longer", "second"} {
		rf, err := c.Send("manifest", "octet")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rf.ReadFrom(strings.NewReader(content)); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(filepath.Join(e.put, "manifest"))
	if string(data) != "second" {
		t.Errorf("got %q", data)
	}
	if n := len(e.eventsOf(UploadCompleted)); n != 2 {
		t.Errorf("%d upload events", n)
	}
}

// TestPartialUploadInvisible: an upload cut off midway never appears under
// its name and leaves no temporary.
func TestPartialUploadInvisible(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) { s.Timeout, s.Retries = 300*time.Millisecond, 1 })
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteTo([]byte("\x00\x02manifest\x00octet\x00"), e.addr)
	buf := make([]byte, 600)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, tid, err := conn.ReadFrom(buf) // ACK 0
	if err != nil {
		t.Fatal(err)
	}
	block := append([]byte{0, opDATA, 0, 1}, bytes.Repeat([]byte("x"), 512)...)
	conn.WriteTo(block, tid)
	conn.ReadFrom(buf) // ACK 1; then silence
	deadline := time.Now().Add(5 * time.Second)
	for len(e.eventsOf(TransferFailed)) == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if len(e.eventsOf(TransferFailed)) == 0 {
		t.Fatal("abandoned upload not reported")
	}
	if _, err := os.Stat(filepath.Join(e.put, "manifest")); err == nil {
		t.Error("partial upload visible under its name")
	}
	assertNoTemp(t, e.put)
}

func TestCleanName(t *testing.T) {
	good := map[string]string{"manifest": "manifest", "/manifest": "manifest", "a/b": "a/b", "a//b": "a/b", "./a": "a"}
	for in, want := range good {
		if got, err := CleanName(in); err != nil || got != want {
			t.Errorf("%q: %q, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "/", "//x", "..", "a/..", "../a", "a\\b", "a\nb", "\x00"} {
		if got, err := CleanName(in); err == nil {
			t.Errorf("%q accepted as %q", in, got)
		}
	}
}
