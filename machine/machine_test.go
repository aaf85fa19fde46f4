package machine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

type tlog struct{ t testing.TB }

func (w tlog) Write(p []byte) (int, error) { w.t.Log(strings.TrimSpace(string(p))); return len(p), nil }

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// harness is a TFTP server serving one task to one test machine.
type harness struct {
	t       *testing.T
	get     string
	put     string
	addr    *net.UDPAddr
	started time.Time
	mu      sync.Mutex
	events  []tftp.Event
	signal  chan struct{}
}

func newHarness(t *testing.T, pkg string) *harness {
	h := &harness{t: t, signal: make(chan struct{}, 100)}
	h.serve(t, pkg, "127.0.0.1:0")
	return h
}

// serve starts the TFTP server on addr with the task for package pkg.
func (h *harness) serve(t *testing.T, pkg, addr string) {
	root := t.TempDir()
	h.get, h.put = filepath.Join(root, "get"), filepath.Join(root, "put")
	os.Mkdir(h.get, 0o755)
	os.Mkdir(h.put, 0o755)
	task := fmt.Sprintf(": 1\nname: %s\nversion: 1.0.0\nrepository-url: https://example.org/1\nmachine: x86_64-linux_test-busybox\ntarget: x86_64-linux-gnu\n", pkg)
	os.WriteFile(filepath.Join(h.get, "manifest"), []byte(task), 0o644)
	m, err := tftp.NewMapping(h.get, h.put)
	if err != nil {
		t.Fatal(err)
	}
	m.Notify = func(e tftp.Event) {
		h.mu.Lock()
		h.events = append(h.events, e)
		h.mu.Unlock()
		h.signal <- struct{}{}
	}
	srv := &tftp.Server{}
	srv.SetHandler(m)
	conn, err := tftp.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	h.addr = conn.LocalAddr().(*net.UDPAddr)
	go srv.Serve(conn)
	t.Cleanup(func() {
		// A guest stopped mid-transfer leaves it to time out: don't wait.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		m.Close()
	})
}

// wait returns the first event of kind, or fails after d.
func (h *harness) wait(kind tftp.EventKind, d time.Duration) (tftp.Event, bool) {
	deadline := time.After(d)
	for {
		h.mu.Lock()
		for _, e := range h.events {
			if e.Kind == kind {
				h.mu.Unlock()
				return e, true
			}
		}
		h.mu.Unlock()
		select {
		case <-h.signal:
		case <-deadline:
			return tftp.Event{}, false
		}
	}
}

func (h *harness) config(t *testing.T, mode string) machine.Config {
	dir := machinetest.Image(t)
	data, err := os.ReadFile(filepath.Join(dir, "manifest"))
	if err != nil {
		t.Fatal(err)
	}
	mc, err := manifest.ParseMachine(bytes.NewReader(data), "manifest")
	if err != nil {
		t.Fatal(err)
	}
	return machine.Config{
		Name:       mc.Name,
		Dir:        dir,
		RunDir:     t.TempDir(),
		Accel:      "tcg",
		CPUs:       1,
		RAM:        256 << 10,
		Network:    "user",
		OEMStrings: []string{fmt.Sprintf("bbot.tftp=10.0.2.2:%d", h.addr.Port), "bbot.mode=" + mode},
		Options:    mc.Options,
	}
}

func start(t *testing.T, cfg machine.Config) *machine.Machine {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m, err := machine.Start(ctx, cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		m.ForceDown()
		if t.Failed() {
			log, _ := os.ReadFile(cfg.ConsolePath())
			t.Logf("console log:\n%s", log)
		}
	})
	return m
}

func processGone(pid int) bool {
	return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func setup(t *testing.T, pkg string) (*harness, machine.Config) {
	machinetest.LockVM(t)
	h := newHarness(t, pkg)
	return h, h.config(t, "build")
}

func TestBootHello(t *testing.T) {
	h, cfg := setup(t, "hello")
	t0 := time.Now()
	m := start(t, cfg)
	first, ok := h.wait(tftp.FirstRequest, 60*time.Second)
	if !ok {
		t.Fatal("no TFTP request from the guest")
	}
	t.Logf("boot to first TFTP request: %.2fs", first.Time.Sub(t0).Seconds())
	up, ok := h.wait(tftp.UploadCompleted, 60*time.Second)
	if !ok {
		t.Fatal("no result")
	}
	t.Logf("boot to result: %.2fs", up.Time.Sub(t0).Seconds())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("guest did not power off: %v", err)
	}
	res, err := manifest.ParseResult(bytes.NewReader(mustRead(t, filepath.Join(h.put, "manifest"))), "result")
	if err != nil || res.Status != "success" || len(res.Operations) != 3 {
		t.Fatalf("result %+v, %v", res, err)
	}
	if m.State() != machine.StateExited || !processGone(m.PID()) {
		t.Errorf("state %v", m.State())
	}
	if _, err := os.Stat(cfg.QMPSocket()); err == nil {
		t.Error("QMP socket left behind")
	}
	// Operations after exit are safe and say so.
	if err := m.Suspend(context.Background()); !errors.Is(err, machine.ErrExited) {
		t.Errorf("suspend after exit: %v", err)
	}
	if err := m.ForceDown(); err != nil {
		t.Errorf("force down after exit: %v", err)
	}
	if err := m.Shutdown(context.Background(), time.Second); err != nil {
		t.Errorf("shutdown after exit: %v", err)
	}
}

func mustRead(t *testing.T, p string) []byte {
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestPowerButton: system_powerdown makes the guest power itself off.
func TestPowerButton(t *testing.T) {
	h, cfg := setup(t, "hang")
	m := start(t, cfg)
	if _, ok := h.wait(tftp.FirstRequest, 60*time.Second); !ok {
		t.Fatal("no TFTP request")
	}
	time.Sleep(time.Second) // let the guest reach its hang
	t0 := time.Now()
	if err := m.Shutdown(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("power button to exit: %.2fs", time.Since(t0).Seconds())
	if !strings.Contains(string(mustRead(t, cfg.ConsolePath())), "powering off (power button)") {
		t.Error("the guest did not act on the power button (forced down instead)")
	}
}

// TestSuspendResume: a paused guest stops making progress; resumed, it
// completes.
func TestSuspendResume(t *testing.T) {
	h, cfg := setup(t, "slow")
	m := start(t, cfg)
	if _, ok := h.wait(tftp.FirstRequest, 60*time.Second); !ok {
		t.Fatal("no TFTP request")
	}
	ctx := context.Background()
	if err := m.Suspend(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx); err != nil || st != "paused" {
		t.Fatalf("status %q, %v", st, err)
	}
	if m.State() != machine.StatePaused {
		t.Errorf("state %v", m.State())
	}
	before, _ := os.Stat(cfg.ConsolePath())
	time.Sleep(7 * time.Second) // longer than the guest's 5 s sleep
	after, _ := os.Stat(cfg.ConsolePath())
	if before.Size() != after.Size() {
		t.Errorf("console grew while paused: %d -> %d", before.Size(), after.Size())
	}
	if _, ok := h.wait(tftp.UploadCompleted, 0); ok {
		t.Fatal("result uploaded while paused")
	}
	if err := m.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Status(ctx); st != "running" {
		t.Errorf("status after resume %q", st)
	}
	if _, ok := h.wait(tftp.UploadCompleted, 60*time.Second); !ok {
		t.Fatal("no result after resume")
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.Wait(wctx); err != nil {
		t.Fatal(err)
	}
}

// TestForceDownHung: a hung guest is forced down and nothing is left.
func TestForceDownHung(t *testing.T) {
	h, cfg := setup(t, "hang")
	m := start(t, cfg)
	if _, ok := h.wait(tftp.FirstRequest, 60*time.Second); !ok {
		t.Fatal("no TFTP request")
	}
	time.Sleep(time.Second)         // let the task download finish
	m.Suspend(context.Background()) // force down works on a paused machine too
	pid := m.PID()
	if err := m.ForceDown(); err != nil {
		t.Fatal(err)
	}
	if !processGone(pid) {
		t.Errorf("QEMU %d still exists", pid)
	}
	for _, p := range []string{cfg.QMPSocket(), cfg.PIDFile()} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
	if err := m.ForceDown(); err != nil {
		t.Errorf("second force down: %v", err)
	}
}

// TestMisboot: a machine that never talks is noticed within the startup
// timeout (here: no kernel, so the firmware finds nothing to boot).
func TestMisboot(t *testing.T) {
	h, cfg := setup(t, "hello")
	cfg.Options = ""
	m := start(t, cfg)
	const startup = 5 * time.Second
	t0 := time.Now()
	if _, ok := h.wait(tftp.FirstRequest, startup); ok {
		t.Fatal("a machine without kernel talked")
	}
	if d := time.Since(t0); d > startup+2*time.Second {
		t.Errorf("mis-boot noticed after %s", d)
	}
	m.ForceDown()
	if !processGone(m.PID()) {
		t.Error("QEMU left running")
	}
}

// TestQMPLatency measures query-status round trips.
func TestQMPLatency(t *testing.T) {
	h, cfg := setup(t, "hang")
	m := start(t, cfg)
	if _, ok := h.wait(tftp.FirstRequest, 60*time.Second); !ok {
		t.Fatal("no TFTP request")
	}
	const n = 100
	t0 := time.Now()
	for range n {
		if _, err := m.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("QMP query-status: %.3f ms average over %d", float64(time.Since(t0).Microseconds())/1000/n, n)
}
