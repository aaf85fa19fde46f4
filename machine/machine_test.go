package machine_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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

// consoleReader collects what one console socket client receives.
type consoleReader struct {
	mu   sync.Mutex
	got  []byte
	done chan struct{} // closed at EOF or error
	err  error
}

func readConsole(c net.Conn) *consoleReader {
	r := &consoleReader{done: make(chan struct{})}
	go func() {
		defer close(r.done)
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			r.mu.Lock()
			r.got = append(r.got, buf[:n]...)
			r.mu.Unlock()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					r.err = err
				}
				return
			}
		}
	}()
	return r
}

func (r *consoleReader) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return string(r.got)
}

// wait waits until what the client received contains s.
func (r *consoleReader) wait(t *testing.T, who, s string, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(r.String(), s) {
			return
		}
	}
	got := r.String()
	t.Fatalf("console client %s did not receive %q within %s; its last bytes: %q", who, s, d, got[max(0, len(got)-300):])
}

func dialConsole(t *testing.T, cfg machine.Config) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", cfg.ConsoleSocketPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestConsoleSocket: the serial console on console.sock, with the real
// test machine. Two clients connected from the start both get the boot
// output (which the console log gets too); a client connecting later
// first gets a replay of the latest output; a line a client sends reaches
// the guest, which echoes it; a client that never reads is dropped during
// a flood while the guest runs on and the other clients keep receiving;
// VNC answers on its unix socket with an RFB banner; the sockets go with
// the machine.
func TestConsoleSocket(t *testing.T) {
	defer machine.SetConsoleClientQueueMax(64 << 10)()
	h, cfg := setup(t, "console")
	cfg.VNC = true
	m := start(t, cfg)
	if fi, err := os.Stat(cfg.ConsoleSocketPath()); err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("console socket: %v, %v", fi, err)
	}
	a := readConsole(dialConsole(t, cfg))
	bConn := dialConsole(t, cfg)
	b := readConsole(bConn)
	stalled := dialConsole(t, cfg) // never read until the end
	if _, ok := h.wait(tftp.FirstRequest, 60*time.Second); !ok {
		t.Fatal("no TFTP request from the guest")
	}
	a.wait(t, "a", "bbot-guest: build: console: ready", 60*time.Second)
	b.wait(t, "b", "bbot-guest: build: console: ready", 5*time.Second)
	// Both saw the guest's first words (the kernel is quiet; the worker's
	// first line is its OEM strings).
	for who, r := range map[string]*consoleReader{"a": a, "b": b} {
		if !strings.Contains(r.String(), "bbot-guest: oem strings:") {
			t.Errorf("client %s missed the boot output: %q", who, r.String()[:min(200, len(r.String()))])
		}
	}

	// A late client first gets the replay: the latest output, which the
	// console log ends with as well.
	b.wait(t, "b", "console: tick 1", 10*time.Second)
	lateConn := dialConsole(t, cfg)
	lateConn.SetReadDeadline(time.Now().Add(5 * time.Second))
	first := make([]byte, machine.ConsoleReplayMax)
	n, err := lateConn.Read(first)
	if err != nil || !strings.Contains(string(first[:n]), "console: tick") {
		t.Fatalf("late client's first read (the replay): %q, %v", first[:n], err)
	}
	late := readConsole(lateConn)
	late.mu.Lock()
	late.got = append([]byte(nil), first[:n]...)
	late.mu.Unlock()
	if log := string(mustRead(t, cfg.ConsolePath())); !strings.Contains(log, string(first[:n])) {
		t.Errorf("the replay is not in the console log")
	}

	// Input: a line sent by one client reaches the guest (through QEMU's
	// stdin and the serial port), which logs it for everybody.
	if _, err := bConn.Write([]byte("hello from b\n")); err != nil {
		t.Fatal(err)
	}
	want := `bbot-guest: console input "hello from b"`
	for who, r := range map[string]*consoleReader{"a": a, "b": b, "late": late} {
		r.wait(t, who, want, 30*time.Second)
	}

	// A flood far beyond the stalled client's socket buffer and queue:
	// it is dropped (its connection ends while the machine runs), the
	// others get all of it, the guest goes on ticking.
	const floodKiB = 1024
	if _, err := bConn.Write([]byte(fmt.Sprintf("flood %d\n", floodKiB))); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	doneLine := fmt.Sprintf("console: flood of %d KiB done", floodKiB)
	b.wait(t, "b", doneLine, 180*time.Second)
	t.Logf("flood of %d KiB through the console in %.1fs", floodKiB, time.Since(t0).Seconds())
	stalled.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, stalled); err != nil {
		t.Errorf("the stalled client was not dropped: %v", err)
	}
	if m.State() != machine.StateRunning {
		t.Errorf("machine %v after the flood", m.State())
	}
	for who, r := range map[string]*consoleReader{"a": a, "b": b, "late": late} {
		r.wait(t, who, doneLine, 10*time.Second)
		if got := strings.Count(r.String(), "flood 0"); got != floodKiB*16 {
			t.Errorf("client %s got %d flood lines, want %d", who, got, floodKiB*16)
		}
	}
	// The guest still runs: a tick after the flood reaches the clients.
	after := len(b.String())
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(b.String()[after:], "console: tick"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no tick after the flood")
		}
	}
	log := string(mustRead(t, cfg.ConsolePath()))
	for _, s := range []string{"bbot-guest: build: console: ready", want, doneLine} {
		if !strings.Contains(log, s) {
			t.Errorf("console log lacks %q", s)
		}
	}

	// VNC on its unix socket in the run directory: QEMU's server greets
	// with its RFB version.
	if want := filepath.Join(cfg.RunDir, machine.VNCSocketName); m.Info().VNC != want || cfg.VNCSocketPath() != want {
		t.Errorf("Info VNC %q, config %q, want %q", m.Info().VNC, cfg.VNCSocketPath(), want)
	}
	if fi, err := os.Lstat(cfg.VNCSocketPath()); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("VNC socket: %v, %v", fi, err)
	}
	machinetest.CheckVNC(t, cfg.VNCSocketPath())

	// Down: the clients' connections end, the socket file goes.
	m.ForceDown()
	for who, r := range map[string]*consoleReader{"a": a, "b": b, "late": late} {
		select {
		case <-r.done:
			if r.err != nil {
				t.Errorf("client %s: %v, want EOF", who, r.err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("client %s still connected after the machine exited", who)
		}
	}
	if _, err := os.Lstat(cfg.ConsoleSocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("console socket after exit: %v", err)
	}
	if _, err := os.Lstat(cfg.VNCSocketPath()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("VNC socket after exit: %v", err)
	}
}

// TestReattachConsole: the console of a QEMU another process started (a
// held machine an earlier agent left) is served again: QEMU's console
// chardev moves from its stdio to the socket pair ReattachConsole passes.
// A client of the new console socket first gets the log's tail (output
// from before), its input reaches the guest and the guest's answer comes
// back to it (not to the old console) and into the log, appended. Closed,
// the socket goes and QEMU runs on; a second takeover works the same;
// QEMU gone, the console ends.
// The test's Machine keeps its QMP socket: the admin socket stands in.
func TestReattachConsole(t *testing.T) {
	_, cfg := setup(t, "console")
	cfg.ConsoleSocket = filepath.Join(t.TempDir(), "first.sock") // the first agent's, out of the way
	m := start(t, cfg)
	first := readConsole(dialConsole(t, cfg))
	first.wait(t, "first", "console: tick 1", 60*time.Second)

	// The log the taken-over console goes on with: the earlier output.
	heldLog := filepath.Join(t.TempDir(), "held.log")
	if err := os.WriteFile(heldLog, mustRead(t, cfg.ConsolePath()), 0o600); err != nil {
		t.Fatal(err)
	}
	before := len(mustRead(t, heldLog))
	for round := 1; round <= 2; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		h, err := machine.ReattachConsole(ctx, cfg.AdminSocket(), cfg.RunDir, heldLog, 0, testLogger(t), cfg.Name)
		cancel()
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if want := filepath.Join(cfg.RunDir, machine.ConsoleSocketName); h.SocketPath() != want {
			t.Errorf("socket %q, want %q", h.SocketPath(), want)
		}
		c, err := net.Dial("unix", h.SocketPath())
		if err != nil {
			t.Fatal(err)
		}
		r := readConsole(c)
		r.wait(t, "taken over", "console: tick", 10*time.Second) // the replay, at least
		line := fmt.Sprintf("hello after takeover %d", round)
		if _, err := c.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("bbot-guest: console input %q", line)
		r.wait(t, "taken over", want, 30*time.Second)
		if strings.Contains(first.String(), want) {
			t.Errorf("round %d: the first console still gets the output", round)
		}
		log := string(mustRead(t, heldLog))
		if len(log) <= before || !strings.Contains(log[before:], want) {
			t.Errorf("round %d: the log lacks the new output after the old (%d bytes, %d before)", round, len(log), before)
		}
		before = len(log)
		if err := h.Close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
		}
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the client was not disconnected", round)
		}
		if _, err := os.Lstat(h.SocketPath()); err == nil {
			t.Errorf("round %d: the console socket is left", round)
		}
		if m.State() != machine.StateRunning {
			t.Fatalf("round %d: machine %v after the console closed", round, m.State())
		}
	}

	// QEMU gone: a served console ends by itself.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, err := machine.ReattachConsole(ctx, cfg.AdminSocket(), cfg.RunDir, heldLog, 0, testLogger(t), cfg.Name)
	if err != nil {
		t.Fatal(err)
	}
	m.ForceDown()
	select {
	case <-h.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the console outlived QEMU")
	}
}
