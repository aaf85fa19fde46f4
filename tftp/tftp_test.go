package tftp

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// requireTool fails under CI=true and skips otherwise when a client is
// missing.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (CI installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return p
}

type testEnv struct {
	root, get, put string
	srv            *Server
	mapping        *Mapping
	addr           *net.UDPAddr
	mu             sync.Mutex
	events         []Event
}

func (e *testEnv) port() string { return strconv.Itoa(e.addr.Port) }

func (e *testEnv) eventsOf(k EventKind) []Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var r []Event
	for _, ev := range e.events {
		if ev.Kind == k {
			r = append(r, ev)
		}
	}
	return r
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(logWriter{t}, nil))
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// startServer serves a mapping of <tmp>/get and <tmp>/put on 127.0.0.1.
func startServer(t testing.TB, configure func(*Server, *Mapping)) *testEnv {
	t.Helper()
	root := t.TempDir()
	e := &testEnv{root: root, get: filepath.Join(root, "get"), put: filepath.Join(root, "put")}
	os.Mkdir(e.get, 0o755)
	os.Mkdir(e.put, 0o755)
	m, err := NewMapping(e.get, e.put)
	if err != nil {
		t.Fatal(err)
	}
	m.Log = testLogger(t)
	m.Notify = func(ev Event) {
		e.mu.Lock()
		e.events = append(e.events, ev)
		e.mu.Unlock()
	}
	e.mapping = m
	e.srv = &Server{ErrorLog: testLogger(t), Anticipate: 1}
	if configure != nil {
		configure(e.srv, m)
	}
	e.srv.SetHandler(m)
	conn, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.addr = conn.LocalAddr().(*net.UDPAddr)
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(conn) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
		m.Close()
	})
	return e
}

func randomFile(t testing.TB, path string, size int64) []byte {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		t.Fatal(err)
	}
	return h.Sum(nil)
}

func fileSum(t testing.TB, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return h.Sum(nil)
}

func run(t testing.TB, name string, args ...string) error {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %v\n%s", name, args, err, out)
	}
	return nil
}

// Client commands: get(name, local, blksize) and put(local, name, blksize).
type client struct {
	name string
	get  func(e *testEnv, remote, local string, blksize int) error
	put  func(e *testEnv, local, remote string, blksize int) error
}

func clients(t *testing.T) []client {
	curl := requireTool(t, "curl")
	atftp := requireTool(t, "atftp")
	busybox := requireTool(t, "busybox")
	hpa := requireTool(t, "tftp")
	url := func(e *testEnv, name string) string { return "tftp://127.0.0.1:" + e.port() + "/" + name }
	return []client{
		{"curl",
			func(e *testEnv, r, l string, b int) error {
				return run(t, curl, "-sS", "--tftp-blksize", strconv.Itoa(b), "-o", l, url(e, r))
			},
			func(e *testEnv, l, r string, b int) error {
				return run(t, curl, "-sS", "--tftp-blksize", strconv.Itoa(b), "-T", l, url(e, r))
			}},
		{"atftp",
			func(e *testEnv, r, l string, b int) error {
				return run(t, atftp, "-g", "-r", r, "-l", l, "--option", "blksize "+strconv.Itoa(b), "127.0.0.1", e.port())
			},
			func(e *testEnv, l, r string, b int) error {
				return run(t, atftp, "-p", "-r", r, "-l", l, "--option", "blksize "+strconv.Itoa(b), "127.0.0.1", e.port())
			}},
		{"busybox",
			func(e *testEnv, r, l string, b int) error {
				return run(t, busybox, "tftp", "-g", "-r", r, "-l", l, "-b", strconv.Itoa(b), "127.0.0.1", e.port())
			},
			func(e *testEnv, l, r string, b int) error {
				return run(t, busybox, "tftp", "-p", "-r", r, "-l", l, "-b", strconv.Itoa(b), "127.0.0.1", e.port())
			}},
		{"tftp-hpa", // never sends options: always 512
			func(e *testEnv, r, l string, _ int) error {
				return run(t, hpa, "127.0.0.1", e.port(), "-m", "binary", "-c", "get", r, l)
			},
			func(e *testEnv, l, r string, _ int) error {
				return run(t, hpa, "127.0.0.1", e.port(), "-m", "binary", "-c", "put", l, r)
			}},
	}
}

func TestClientsAllBlockSizes(t *testing.T) {
	e := startServer(t, nil)
	for _, c := range clients(t) {
		for _, bs := range []int{512, 1468, 8192, 65464} {
			if c.name == "tftp-hpa" && bs != 512 {
				continue
			}
			name := fmt.Sprintf("%s-%d", c.name, bs)
			t.Run(name, func(t *testing.T) {
				src := filepath.Join(e.get, name)
				// Not a multiple of the block size, and one that is.
				for _, size := range []int64{int64(bs)*37 + 11, int64(bs) * 8, 0} {
					sum := randomFile(t, src, size)
					local := filepath.Join(t.TempDir(), "got")
					if err := c.get(e, name, local, bs); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(fileSum(t, local), sum) {
						t.Fatalf("GET %d bytes: content differs", size)
					}
					if err := c.put(e, local, name+".up", bs); err != nil {
						t.Fatal(err)
					}
					if !bytes.Equal(fileSum(t, filepath.Join(e.put, name+".up")), sum) {
						t.Fatalf("PUT %d bytes: content differs", size)
					}
				}
			})
		}
	}
	if len(e.eventsOf(FirstRequest)) != 1 {
		t.Errorf("first-request events: %v", e.eventsOf(FirstRequest))
	}
	assertNoTemp(t, e.put)
}

// TestLargeFiles moves 64 MiB each way: at blksize 512 the block number
// wraps twice.
func TestLargeFiles(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB transfers")
	}
	curl := requireTool(t, "curl")
	e := startServer(t, func(s *Server, m *Mapping) { m.MaxFileSize = 128 << 20 })
	sum := randomFile(t, filepath.Join(e.get, "big"), 64<<20)
	local := filepath.Join(t.TempDir(), "big")
	url := "tftp://127.0.0.1:" + e.port() + "/big"
	if err := run(t, curl, "-sS", "--tftp-blksize", "512", "-o", local, url); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileSum(t, local), sum) {
		t.Fatal("64 MiB GET at 512: content differs")
	}
	if err := run(t, curl, "-sS", "--tftp-blksize", "65464", "-T", local, "tftp://127.0.0.1:"+e.port()+"/big.up"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(fileSum(t, filepath.Join(e.put, "big.up")), sum) {
		t.Fatal("64 MiB PUT: content differs")
	}
	up := e.eventsOf(UploadCompleted)
	if len(up) != 1 || up[0].Size != 64<<20 || up[0].Name != "big.up" {
		t.Errorf("upload events: %+v", up)
	}
}

func TestConcurrentTransfers(t *testing.T) {
	curl := requireTool(t, "curl")
	e := startServer(t, nil)
	const n = 8
	sums := make([][]byte, n)
	for i := range n {
		sums[i] = randomFile(t, filepath.Join(e.get, fmt.Sprintf("f%d", i)), 1<<20+int64(i))
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := filepath.Join(dir, fmt.Sprintf("f%d", i))
			if errs[i] = run(t, curl, "-sS", "--tftp-blksize", "1468", "-o", local, fmt.Sprintf("tftp://127.0.0.1:%s/f%d", e.port(), i)); errs[i] != nil {
				return
			}
			errs[i] = run(t, curl, "-sS", "--tftp-blksize", "1468", "-T", local, fmt.Sprintf("tftp://127.0.0.1:%s/u%d", e.port(), i))
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !bytes.Equal(fileSum(t, filepath.Join(e.put, fmt.Sprintf("u%d", i))), sums[i]) {
			t.Errorf("transfer %d: content differs", i)
		}
	}
}

func TestMaxTransfers(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) {
		s.MaxTransfers = 1
		s.Timeout, s.Retries = time.Second, 2
	})
	// Hold one transfer open: a client that asks and never ACKs.
	randomFile(t, filepath.Join(e.get, "f"), 10000)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.WriteTo([]byte("\x00\x01f\x00octet\x00"), e.addr)
	buf := make([]byte, 1024)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Read(buf); err != nil { // the first DATA block: transfer active
		t.Fatal(err)
	}
	c, _ := pintftp.NewClient(e.addr.String())
	c.SetTimeout(time.Second)
	c.SetRetries(1)
	_, err = c.Receive("f", "octet")
	if err == nil || !strings.Contains(err.Error(), "server busy") {
		t.Errorf("second transfer: %v, want server busy", err)
	}
}

func assertNoTemp(t *testing.T, dir string) {
	t.Helper()
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if strings.Contains(filepath.Base(p), ".tftp-") {
			t.Errorf("temporary upload left: %s", p)
		}
		return nil
	})
}
