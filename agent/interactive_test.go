package agent

import (
	"bytes"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// readRequestVector parses a task request sample of testdata/conformance.
func readRequestVector(t *testing.T, name string) ([]byte, manifest.TaskRequest) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(protocolDir, name))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := manifest.ParseTaskRequest(bytes.NewReader(data), name)
	if err != nil {
		t.Fatal(err)
	}
	return data, tr
}

// requestAgent is an agent that offers the vector's machines as tr says.
func requestAgent(t *testing.T, tr manifest.TaskRequest, interactive string) (*Agent, []*inventory.Machine) {
	o := &Options{ToolchainName: tr.ToolchainName, ToolchainVer: tr.ToolchainVersion, Interactive: interactive,
		RAM: 1 << 30, RunDir: "/run/bbot-agent/" + tr.ToolchainName, Instance: 1, Slots: 1}
	a := &Agent{Opts: o, Name: tr.Agent, Fingerprint: tr.Fingerprint, Log: testLog(t)}
	var ms []*inventory.Machine
	for _, h := range tr.Machines {
		ms = append(ms, inventory.FakeMachine(h))
	}
	return a, ms
}

// TestInteractiveRequest: with --interactive both the task request carries
// interactive-mode and the slot's console attach command as
// interactive-login, byte-exact with brep's interactive sample but for the
// login's value; with false it carries neither (the minimal sample,
// byte-exact). The login names the lowest idle slot.
func TestInteractiveRequest(t *testing.T) {
	want, tr := readRequestVector(t, "task-request-interactive.manifest")
	a, ms := requestAgent(t, tr, tr.InteractiveMode)
	req := a.taskRequest(ms)
	login := "socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:/run/bbot-agent/public/1/console.sock"
	if req.InteractiveMode != "both" || req.InteractiveLogin != login || req.InteractiveLogin != InteractiveLogin(PlanSlot(a.Opts, 1).RunDir) {
		t.Errorf("interactive-mode %q, interactive-login %q; want both, %q", req.InteractiveMode, req.InteractiveLogin, login)
	}
	req.InteractiveLogin = tr.InteractiveLogin // the sample's agent logs in over VNC by TCP
	var got bytes.Buffer
	if err := req.Serialize(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), want) {
		t.Errorf("task request:\n%s\nwant:\n%s", got.Bytes(), want)
	}

	// Slot 1 busy: the task would go to slot 2, whose console is named.
	a.Opts.Slots = 2
	a.slots = []*slot{{plan: PlanSlot(a.Opts, 1), job: &job{}}, {plan: PlanSlot(a.Opts, 2)}}
	if req := a.taskRequest(ms); req.InteractiveLogin != InteractiveLogin(PlanSlot(a.Opts, 2).RunDir) {
		t.Errorf("with slot 1 busy, interactive-login %q", req.InteractiveLogin)
	}

	for _, mode := range []string{"false", ""} { // "": Options built without the flag's default
		want, tr := readRequestVector(t, "task-request-minimal.manifest")
		a, ms := requestAgent(t, tr, mode)
		got.Reset()
		if err := a.taskRequest(ms).Serialize(&got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("--interactive %q: task request:\n%s\nwant:\n%s", mode, got.Bytes(), want)
		}
	}
}

// TestInteractiveRefusal: which tasks an agent refuses, by --interactive
// and the task's breakpoint, and what the note says.
func TestInteractiveRefusal(t *testing.T) {
	for _, c := range []struct {
		mode, bp, note string
	}{
		{"false", "error", "interactive build (breakpoint error) but this agent runs with --interactive false"},
		{"", "warning", "interactive build (breakpoint warning) but this agent runs with --interactive false"},
		{"false", "none", ""}, // none: not interactive
		{"false", "", ""},
		{"true", "error", ""},
		{"true", "", ""}, // a normal build
		{"both", "bpkg.update", ""},
	} {
		task := controllertest.InteractiveTask("p", "m", c.bp)
		if c.bp == "" {
			task = &manifest.Task{Fields: task.Fields[:len(task.Fields)-1]}
		}
		a := &Agent{Opts: &Options{Interactive: c.mode}}
		if got := a.interactiveRefusal(task); got != c.note {
			t.Errorf("--interactive %q, breakpoint %q: %q, want %q", c.mode, c.bp, got, c.note)
		}
	}
}

// TestReadNote: the worker's breakpoint note is its first line, without
// control characters or invalid UTF-8, capped.
func TestReadNote(t *testing.T) {
	p := filepath.Join(t.TempDir(), interactiveName)
	for in, want := range map[string]string{
		"breakpoint error reached in step update\nmore\n": "breakpoint error reached in step update",
		"  a\tb\x1b[31m\xff c  ":                          "ab[31m c",
		strings.Repeat("x", 5000):                         strings.Repeat("x", maxInteractiveNote),
		"":                                                "",
	} {
		os.WriteFile(p, []byte(in), 0o600)
		if got := readNote(p); got != want {
			t.Errorf("readNote(%.20q) = %.40q, want %.40q", in, got, want)
		}
	}
	if got := readNote(filepath.Join(t.TempDir(), "missing")); got != "" {
		t.Errorf("missing note: %q", got)
	}
}

// waitInteractive waits for slot 1's interactive machine other than the
// one at snapshot skip, as --suspended lists it.
func waitInteractive(t *testing.T, e *e2e, skip string) *Suspended {
	t.Helper()
	for deadline := time.Now().Add(240 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		held, err := ListSuspended(e.opts.RunDir)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range held {
			if h.Instance == 1 && h.Suspended.Interactive && h.Suspended.Snapshot != skip {
				return h.Suspended
			}
		}
	}
	t.Fatal("no interactive machine listed by --suspended")
	return nil
}

// consoleUntil reads the console until what came contains want.
func consoleUntil(t *testing.T, c net.Conn, want string) {
	t.Helper()
	var got []byte
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	for !bytes.Contains(got, []byte(want)) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("console: %q not received: %v; last bytes %q", want, err, got[max(0, len(got)-300):])
		}
	}
}

// TestInteractiveConsole: --interactive true; the strict controller hands
// an interactive task (breakpoint error). The guest PUTs "interactive" and
// prompts on its console; the slot is listed (running, not paused) with
// the console named in the task request's interactive-login; the test
// attaches to that console socket, types continue, and the controller
// receives the guest's own success result, once.
func TestInteractiveConsole(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.Queue(controllertest.InteractiveTask("interactive", testMachine, "error"))
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.Interactive = "true"
	e.opts.InteractiveTimeout = 600 * time.Second
	e.opts.BuildTimeout = 20 * time.Second // over by the time the person types: the interactive timeout counts
	var status statusLog
	e.onStatus = status.record
	e.start()
	rec := waitInteractive(t, e, "")
	if !strings.Contains(rec.Reason, "interactive: breakpoint error reached") || !strings.Contains(rec.Reason, "reached in step update") {
		t.Errorf("listed with reason %q", rec.Reason)
	}
	if rec.ConsoleSocket != filepath.Join(e.slotRun(1), machine.ConsoleSocketName) {
		t.Errorf("console socket %q", rec.ConsoleSocket)
	}
	reqs := srv.Requests()
	if len(reqs) == 0 || reqs[0].InteractiveMode != "true" || reqs[0].InteractiveLogin != ConsoleAttach(rec.ConsoleSocket) {
		t.Fatalf("task request: interactive-mode %q, interactive-login %q; want true, %q", reqs[0].InteractiveMode, reqs[0].InteractiveLogin, ConsoleAttach(rec.ConsoleSocket))
	}
	if st, err := machine.AdminCommand(rec.AdminSocket, "query-status"); err != nil || !strings.Contains(string(st), `"running"`) {
		t.Errorf("interactive machine status %s, %v: want running", st, err)
	}
	if !status.waitSaid("interactive interactive/1.0.0 on "+testMachine+" at its breakpoint", 10*time.Second) {
		t.Error("the slot's status never said interactive")
	}
	time.Sleep(e.opts.BuildTimeout) // past the build timeout: still waiting
	console, err := net.Dial("unix", strings.TrimPrefix(reqs[0].InteractiveLogin, "socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	consoleUntil(t, console, "type 'continue' to finish the build")
	if r := srv.Results(); len(r) != 0 {
		t.Fatalf("result before continue: %+v", r)
	}
	console.Write([]byte("ls\ncontinue\n"))
	consoleUntil(t, console, "build: interactive: continuing")
	rs := srv.WaitResults(1, 60*time.Second)
	if len(rs) != 1 || rs[0].Request.Result.Status != "success" || !strings.Contains(rs[0].Request.Result.Operations[0].Log, "continued from the console") {
		t.Fatalf("results %+v", rs)
	}
	time.Sleep(time.Second)
	e.shutdown()
	if n := len(srv.Results()); n != 1 {
		t.Errorf("%d results, want 1", n)
	}
	if rec, _ := ReadSuspended(e.slotRun(1)); rec != nil {
		t.Errorf("record left: %+v", rec)
	}
}

// TestInteractiveReleaseAndTimeout (one agent, one bootstrap, two tasks):
// an interactive machine released by the administrator (what --release
// does) and one left until --interactive-timeout are each reported abort
// with a note saying which; neither is held afterwards (--suspend-timeout
// forever would keep a held one, and its result, indefinitely); each VM is
// gone and its snapshot deleted.
func TestInteractiveReleaseAndTimeout(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.Queue(controllertest.InteractiveTask("release", testMachine, "error"))
	srv.Queue(controllertest.InteractiveTask("timeout", testMachine, "warning"))
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.Interactive = "both"
	e.opts.InteractiveTimeout = 15 * time.Second
	e.opts.SuspendTimeout = 0
	var status statusLog
	e.onStatus = status.record
	e.start()

	gone := func(rec *Suspended) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			_, err := os.Stat(rec.Snapshot)
			if os.IsNotExist(err) && processStartTime(rec.PID) != rec.StartTime {
				return
			}
		}
		t.Errorf("VM %d or snapshot %s left after the interactive build ended", rec.PID, rec.Snapshot)
	}
	released := waitInteractive(t, e, "")
	if s, err := ReleaseSuspended(e.slotRun(1)); err != nil || s == nil || !s.Interactive {
		t.Fatalf("release: %+v, %v", s, err)
	}
	rs := srv.WaitResults(1, 60*time.Second)
	if len(rs) != 1 || rs[0].Request.Result.Name != "release" || rs[0].Request.Result.Status != "abort" ||
		!strings.Contains(rs[0].Request.Result.Operations[0].Log, "interactive build released by the administrator (--release) without a result (breakpoint error reached at") {
		t.Fatalf("released: results %+v", rs)
	}
	gone(released)
	if _, err := os.Stat(filepath.Join(e.slotRun(1), releasedFile)); !os.IsNotExist(err) {
		t.Errorf("release marker left: %v", err)
	}

	timedOut := waitInteractive(t, e, released.Snapshot)
	if !strings.Contains(timedOut.Reason, "breakpoint warning reached") {
		t.Errorf("reason %q", timedOut.Reason)
	}
	rs = srv.WaitResults(2, 120*time.Second)
	if len(rs) != 2 || rs[1].Request.Result.Name != "timeout" || rs[1].Request.Result.Status != "abort" ||
		!strings.Contains(rs[1].Request.Result.Operations[0].Log, "interactive timeout (15s) passed without a result (breakpoint warning reached at") {
		t.Fatalf("timed out: results %+v", rs)
	}
	gone(timedOut)
	e.shutdown()
	if status.said("holding") {
		t.Error("an interactive machine was held after its build ended")
	}
}

func pathExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestInteractiveFeatureOff: an interactive task handed to an agent
// running with --interactive false (brep would not; a misconfigured
// controller might) is settled abort with a note, and no VM is booted for
// it; the agent asked without interactive values.
func TestInteractiveFeatureOff(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.Queue(controllertest.InteractiveTask("interactive", testMachine, "error"))
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.Interactive = "false"
	var mu sync.Mutex
	var builds []string
	e.onBoot = func(snapshot string, attempt int) {
		// A task snapshots the bootstrapped machine, which a bootstrap's
		// work snapshot (named alike) is yet to become.
		if source, _, _ := strings.Cut(snapshot, "~"); pathExists(source) {
			mu.Lock()
			builds = append(builds, snapshot)
			mu.Unlock()
		}
	}
	e.start()
	rs := srv.WaitResults(1, 180*time.Second)
	e.shutdown()
	if len(rs) != 1 || rs[0].Request.Result.Status != "abort" ||
		!strings.Contains(rs[0].Request.Result.Operations[0].Log, "interactive build (breakpoint error) but this agent runs with --interactive false") {
		t.Errorf("results %+v", rs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(builds) != 0 {
		t.Errorf("booted %v for a refused task", builds)
	}
	for _, r := range srv.Requests() {
		if r.InteractiveMode != "" || r.InteractiveLogin != "" {
			t.Errorf("request with --interactive false: interactive-mode %q, interactive-login %q", r.InteractiveMode, r.InteractiveLogin)
		}
	}
}
