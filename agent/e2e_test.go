package agent

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

const testMachine = "x86_64-linux_test-busybox"

// e2e is a host with one test machine on a loop-mounted btrfs, a TFTP
// root and an agent wired as the command wires it.
type e2e struct {
	t         testing.TB
	root      string
	onSuspend func(*machine.Machine)
	onStatus  func(string)
	onBoot    func(snapshot string, attempt int)
	// maxUploadTar, if set, lowers upload.tar's cap; onTimings receives
	// each delivered task's timings.
	maxUploadTar int64
	onTimings    func(taskTimings)
	opts         Options
	agent        *Agent
	stop         func()
	done         chan error // Run's return
}

func freeUDPPort(t testing.TB) int {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func newE2E(t testing.TB, controllers ...controller.Controller) *e2e {
	machinetest.RequireQEMU(t)
	machinetest.LockVM(t)
	root := btrfstest.Mount(t, 1<<30)
	m := filepath.Join(root, "machines", "vol", "busybox")
	os.MkdirAll(m, 0o755)
	img := filepath.Join(m, "busybox-1.0")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	machinetest.CopyImage(t, img)
	btrfs.SetReadOnly(img, true)
	os.Symlink("busybox-1.0", filepath.Join(m, "busybox-1"))
	tc := filepath.Join(root, "tftp", "toolchains", "e2e")
	os.MkdirAll(tc, 0o755)
	os.WriteFile(filepath.Join(tc, "toolchain"), []byte(": 1\nbbot-version: "+Version+"\n"), 0o644)

	e := &e2e{t: t, root: root}
	e.opts = Options{
		Machines: filepath.Join(root, "machines"), TFTP: filepath.Join(root, "tftp"),
		TFTPPort: freeUDPPort(t) - 1, ToolchainName: "e2e", ToolchainNum: 1,
		ToolchainVer: mustVersion(t, Version), ToolchainID: "tc1",
		BootstrapStartup: 60 * time.Second, BootstrapTimeout: 120 * time.Second, BootstrapRetries: 1,
		BuildStartup: 60 * time.Second, BuildTimeout: 60 * time.Second, BuildRetries: 1,
		CPU: 1, RAM: 512 << 10,
		ConnectTimeout: 5 * time.Second, RequestTimeout: 10 * time.Second, RequestRetries: 2,
		Network: "user", Accel: "tcg", QEMUUser: "nobody", // as bbot runs it: -runas, -sandbox
		StateDir: filepath.Join(t.TempDir(), "state"), RunDir: filepath.Join(t.TempDir(), "run"),
		PollInterval: 200 * time.Millisecond, SuspendTimeout: 2 * time.Second, ResultTTL: time.Hour,
		Controllers: controllers,
	}
	t.Cleanup(e.checkClean)
	return e
}

// slotRun is slot n's run directory (the address plan).
func (e *e2e) slotRun(n int) string { return PlanSlot(&e.opts, n).RunDir }

// start wires and runs the agent until the returned stop is called.
func (e *e2e) start() {
	a, err := New(&e.opts, testLog(e.t))
	if err != nil {
		e.t.Fatal(err)
	}
	cleanup := a.Close
	a.Client.Min, a.Client.Max = 10*time.Millisecond, 50*time.Millisecond
	a.Sender.Min, a.Sender.Max = 10*time.Millisecond, 100*time.Millisecond
	a.VMs.onSuspend = e.onSuspend
	a.VMs.onBoot = e.onBoot
	a.VMs.maxUpload = 8 << 20 // the "huge" task reaches the cap in seconds, even on a loaded host
	a.VMs.maxUploadTar = e.maxUploadTar
	a.onTimings = e.onTimings
	a.Status = e.onStatus
	// Every e2e test runs the watchdog's supervisor, strictly (a 5 s
	// silence, where systemd's 60 s allows 30 s): a wait that does not
	// answer its heartbeat fails the test.
	a.WatchdogInterval, a.Watchdog = 5*time.Second, func() {}
	a.onStuck = func(stuck []string) { e.t.Errorf("watchdog: goroutines stuck: %v", stuck) }
	e.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	e.done = done
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	e.stop = func() { once.Do(func() { e.stopAgent(cancel, done, a, cleanup) }) }
	e.t.Cleanup(e.shutdown)
}

func (e *e2e) stopAgent(cancel func(), done chan error, a *Agent, cleanup func()) {
	{
		cancel()
		select {
		case err := <-done:
			if err != nil {
				e.t.Errorf("agent: %v", err)
			}
		case <-time.After(60 * time.Second):
			e.t.Error("agent did not stop within 60s of SIGINT")
			return
		}
		cleanup()
	}
}

func (e *e2e) shutdown() {
	if e.stop != nil {
		e.stop()
		e.stop = nil
	}
}

// checkClean: no QEMU process of ours, no temporary snapshot, no task dir.
func (e *e2e) checkClean() {
	e.shutdown()
	e.checkHost(e.t)
}

// checkHost fails t for a process with our run dir in its command line, a
// temporary snapshot or TFTP task files left behind.
func (e *e2e) checkHost(t testing.TB) {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && strings.Contains(string(data), e.opts.RunDir) {
			t.Errorf("process left running: %s", strings.ReplaceAll(string(data), "\x00", " "))
		}
	}
	filepath.WalkDir(e.opts.Machines, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.Contains(d.Name(), "~") {
			t.Errorf("temporary snapshot left: %s", p)
		}
		return nil
	})
	// Every slot's directories (build/<tc>-<i>, bootstrap/<tc>-<i>).
	dirs, _ := filepath.Glob(filepath.Join(e.opts.TFTP, "build", "*"))
	boots, _ := filepath.Glob(filepath.Join(e.opts.TFTP, "bootstrap", "*"))
	for _, d := range append(dirs, boots...) {
		if ents, err := os.ReadDir(d); err == nil && len(ents) > 0 {
			t.Errorf("TFTP files left in %s: %v", d, ents)
		}
	}
}

// bootstrapThenStop runs the agent until the machine is bootstrapped (with
// the real QEMU) and stops it, so that a test can break something after.
func (e *e2e) bootstrapThenStop() {
	e.start()
	for deadline := time.Now().Add(120 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e")); err == nil {
			break
		}
	}
	e.shutdown()
	e.stop = nil
}

// misbootingImage makes the machine image one the firmware cannot boot (no
// kernel), with short bootstrap limits.
func (e *e2e) misbootingImage() {
	img := filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-1.0")
	btrfs.SetReadOnly(img, false)
	os.WriteFile(filepath.Join(img, "manifest"), []byte(": 1\nid: broken\nname: "+testMachine+"\nsummary: s\ntype: kvm\n"), 0o644)
	btrfs.SetReadOnly(img, true)
	e.opts.BootstrapStartup, e.opts.BootstrapRetries, e.opts.SuspendTimeout = 3*time.Second, 1, time.Second
}

// statusLog records the agent's STATUS= lines (install with record).
type statusLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *statusLog) record(s string) { l.mu.Lock(); l.lines = append(l.lines, s); l.mu.Unlock() }

// said reports whether a status line contained sub.
func (l *statusLog) said(sub string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Contains(strings.Join(l.lines, "\n"), sub)
}

// waitSaid waits up to d for a status line containing sub.
func (l *statusLog) waitSaid(sub string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if l.said(sub) {
			return true
		}
	}
	return false
}

// waitSaidAfter waits up to d for a status line containing then, after
// one containing first (the agent says "idle" before it bootstraps too).
func (l *statusLog) waitSaidAfter(first, then string, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		l.mu.Lock()
		seen := false
		for _, line := range l.lines {
			if seen && strings.Contains(line, then) {
				l.mu.Unlock()
				return true
			}
			seen = seen || strings.Contains(line, first)
		}
		l.mu.Unlock()
	}
	return false
}

func statuses(rs []controllertest.Result) map[string]string {
	m := map[string]string{}
	for _, r := range rs {
		m[r.Request.Result.Name] = r.Request.Result.Status
	}
	return m
}

// TestEndToEnd: bootstrap, then several tasks in fresh snapshots through a
// strict controller that authenticates the agent.
func TestEndToEnd(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	key, err := controller.LoadKey(filepath.Join(protocolDir, "test-agent-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv.RequireKey(&key.PublicKey)
	for _, pkg := range []string{"hello", "error", "crash", "garbage", "escape", "huge"} {
		srv.QueueTask(pkg, testMachine)
	}
	srv.QueueTask("elsewhere", "x86_64-linux_not-here") // never offered: never handed out
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.AuthKey = filepath.Join(protocolDir, "test-agent-key.pem")
	// A file outside the TFTP mapping that the "escape" task aims at.
	outside := filepath.Join(e.opts.TFTP, "build", "x")
	e.start()
	results := srv.WaitResults(6, 240*time.Second)
	e.shutdown()
	got := statuses(results)
	want := map[string]string{"hello": "success", "error": "error", "crash": "abnormal", "garbage": "abnormal", "escape": "success", "huge": "abnormal"}
	for pkg, st := range want {
		if got[pkg] != st {
			t.Errorf("%s: status %q, want %q", pkg, got[pkg], st)
			for _, r := range results {
				if r.Request.Result.Name == pkg {
					t.Logf("%s: %+v", pkg, r.Request.Result.Operations)
				}
			}
		}
	}
	for _, r := range results {
		rr := r.Request
		if rr.AgentChecksum == "" || rr.Challenge == "" {
			t.Errorf("%s: checksum %q, challenge %q", rr.Result.Name, rr.AgentChecksum, rr.Challenge)
		}
		if rr.Result.Name == "hello" && len(rr.Result.Operations) != 3 {
			t.Errorf("hello: operations %+v", rr.Result.Operations)
		}
		if rr.Result.Name == "garbage" && !strings.Contains(rr.Result.Operations[0].Log, "expected after name") {
			t.Errorf("garbage: diagnostics %q", rr.Result.Operations[0].Log)
		}
		if rr.Result.Name == "escape" && strings.Contains(rr.Result.Operations[0].Log, "succeeded") {
			t.Errorf("escape: %s", rr.Result.Operations[0].Log)
		}
	}
	if d := srv.Drops(); len(d) != 0 {
		t.Errorf("controller dropped results: %v", d)
	}
	if _, err := os.Stat(outside); err == nil {
		t.Errorf("escape wrote %s", outside)
	}
	if _, err := os.Stat("/tmp/bbot-escape"); err == nil {
		t.Errorf("escape wrote /tmp/bbot-escape")
		os.Remove("/tmp/bbot-escape")
	}
	reqs := srv.Requests()
	if len(reqs) == 0 || reqs[0].Fingerprint == "" || len(reqs[0].Machines) != 1 || reqs[0].Machines[0].Name != testMachine {
		t.Errorf("task requests: %+v", reqs)
	}
}

// TestHangSuspends: a task that never uploads is aborted after the build
// timeout; the machine is suspended (not killed) and the result is
// delivered once the administrator kills QEMU.
func TestHangSuspends(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hang", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.BuildTimeout = 15 * time.Second
	e.opts.SuspendTimeout = 0 // forever: only the administrator releases it
	held := make(chan *machine.Machine, 1)
	e.onSuspend = func(m *machine.Machine) { held <- m }
	e.start()
	var m *machine.Machine
	select {
	case m = <-held:
	case <-time.After(120 * time.Second):
		t.Fatal("machine never got suspended")
	}
	if st, err := m.Status(context.Background()); err != nil || st != "paused" {
		t.Errorf("held machine status %q, %v", st, err)
	}
	time.Sleep(time.Second)
	if r := srv.Results(); len(r) != 0 {
		t.Fatalf("result sent while the machine is held: %+v", r)
	}
	// The administrator finds it, lets it run, then releases it (the admin
	// commands go through the second QMP socket).
	rec, err := ReadSuspended(e.slotRun(1))
	if err != nil || rec == nil || rec.PID != m.PID() || !strings.Contains(rec.Reason, "build timeout") {
		t.Fatalf("suspended record %+v, %v", rec, err)
	}
	// It can be reached as the record says: the console socket replays
	// the guest's last lines, VNC greets on its unix socket beside it.
	plan := PlanSlot(&e.opts, 1)
	if rec.ConsoleSocket != filepath.Join(plan.RunDir, machine.ConsoleSocketName) || rec.VNC != filepath.Join(plan.RunDir, machine.VNCSocketName) {
		t.Errorf("suspended record: console socket %q, VNC %q; plan %+v", rec.ConsoleSocket, rec.VNC, plan)
	}
	console, err := net.Dial("unix", rec.ConsoleSocket)
	if err != nil {
		t.Fatalf("console socket: %v", err)
	}
	console.SetReadDeadline(time.Now().Add(5 * time.Second))
	replay := make([]byte, machine.ConsoleReplayMax)
	n, err := console.Read(replay)
	console.Close()
	if err != nil || !strings.Contains(string(replay[:n]), "bbot-guest: build: hanging") {
		t.Errorf("console socket replay %q, %v", replay[:n], err)
	}
	machinetest.CheckVNC(t, rec.VNC)
	if _, err := ResumeSuspended(e.slotRun(1)); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(context.Background()); err != nil || st != "running" {
		t.Errorf("after --resume: status %q, %v", st, err)
	}
	if _, err := ReleaseSuspended(e.slotRun(1)); err != nil {
		t.Fatal(err)
	}
	results := srv.WaitResults(1, 30*time.Second)
	if len(results) != 1 || results[0].Request.Result.Status != "abort" {
		t.Fatalf("results %+v", results)
	}
	if log := results[0].Request.Result.Operations[0].Log; !strings.Contains(log, "build timeout") {
		t.Errorf("diagnostics %q", log)
	}
	if rec, _ := ReadSuspended(e.slotRun(1)); rec != nil {
		t.Errorf("suspended record left: %+v", rec)
	}
	for _, n := range []string{machine.ConsoleSocketName, machine.VNCSocketName} {
		if _, err := os.Lstat(filepath.Join(e.slotRun(1), n)); !os.IsNotExist(err) {
			t.Errorf("%s after the release: %v", n, err)
		}
	}
}

// TestControllerFaults: a controller answering 500, garbage, or closing
// the connection does not stop the agent, and the result still arrives
// (its first POST failing too).
func TestControllerFaults(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hello", testMachine)
	faults := []int{500, -2, -1, 502}
	var results int
	var mu sync.Mutex
	srv.Fault = func(r *http.Request, n int) int {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.RawQuery == "build-result" {
			if results++; results == 1 {
				return 503
			}
			return 0
		}
		if n <= len(faults) {
			return faults[n-1]
		}
		return 0
	}
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.start()
	rs := srv.WaitResults(1, 180*time.Second)
	e.shutdown()
	if len(rs) != 1 || rs[0].Request.Result.Status != "success" {
		t.Fatalf("results %+v", rs)
	}
	if results != 2 {
		t.Errorf("%d result POSTs, want 2 (one failed)", results)
	}
}

// TestControllerPriorities: of two controllers with work, the higher
// priority's task runs first.
func TestControllerPriorities(t *testing.T) {
	low, high := controllertest.New(), controllertest.New()
	defer low.Close()
	defer high.Close()
	low.QueueTask("error", testMachine)
	high.QueueTask("hello", testMachine)
	e := newE2E(t, controller.Controller{URL: low.TaskURL(), Priority: 1}, controller.Controller{URL: high.TaskURL(), Priority: 2})
	e.start()
	hr := high.WaitResults(1, 180*time.Second)
	lr := low.WaitResults(1, 180*time.Second)
	e.shutdown()
	if len(hr) != 1 || hr[0].Request.Result.Status != "success" || len(lr) != 1 || lr[0].Request.Result.Status != "error" {
		t.Fatalf("high %+v, low %+v", hr, lr)
	}
	if !hr[0].Received.Before(lr[0].Received) {
		t.Errorf("the lower priority's task ran first")
	}
}

// TestInterrupt: SIGINT during a build forces the machine down and reports
// the task as "interrupt"; a controller that refuses that gets "abort".
func TestInterrupt(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.RefuseInterrupt = true
	srv.QueueTask("hang", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.start()
	get := filepath.Join(e.opts.TFTP, "build", "e2e-1", "get", "manifest")
	deadline := time.Now().Add(120 * time.Second)
	for _, err := os.Stat(get); err != nil && time.Now().Before(deadline); _, err = os.Stat(get) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // the guest is up and hanging
	t0 := time.Now()
	e.shutdown()
	t.Logf("stopped %.1fs after SIGINT", time.Since(t0).Seconds())
	rs := srv.Results()
	if len(rs) != 1 || rs[0].Request.Result.Status != "abort" {
		t.Fatalf("results %+v", rs)
	}
	errs := srv.Errors()
	if len(errs) != 1 || !strings.Contains(errs[0], "interrupt") {
		t.Errorf("controller errors %v: the interrupt was not tried first", errs)
	}
}

// TestRecoverKillsLeftovers: a VM recorded in the run dir by a crashed
// agent is killed at start-up, its stale run files removed; a reused pid
// (another process now) is not killed.
func TestRecoverKillsLeftovers(t *testing.T) {
	run := t.TempDir()
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	pid := cmd.Process.Pid
	writeVMRecord(run, vmRecord{PID: pid, StartTime: processStartTime(pid), Mode: "build"})
	// An unrelated process whose pid was "reused": the start time differs.
	other := exec.Command("sleep", "300")
	other.Start()
	defer other.Process.Kill()
	// The crashed agent's console socket and its QEMU's VNC socket stay
	// behind (their listeners were never closed).
	for _, n := range []string{machine.ConsoleSocketName, machine.VNCSocketName} {
		ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(run, n), Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ln.SetUnlinkOnClose(false)
		ln.Close()
	}
	a := &Agent{Opts: &Options{RunDir: run, TFTP: t.TempDir(), ToolchainName: "e2e"}, Log: testLog(t)}
	s := &slot{plan: SlotPlan{Instance: 1, RunDir: run}, log: a.Log}
	a.killLeftovers(s)
	for _, n := range []string{machine.ConsoleSocketName, machine.VNCSocketName} {
		if _, err := os.Lstat(filepath.Join(run, n)); !os.IsNotExist(err) {
			t.Errorf("stale %s: %v", n, err)
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("leftover QEMU not killed")
	}
	writeVMRecord(run, vmRecord{PID: other.Process.Pid, StartTime: processStartTime(other.Process.Pid) + 1, Mode: "build"})
	a.killLeftovers(s)
	if err := other.Process.Signal(syscall.Signal(0)); err != nil {
		t.Errorf("unrelated process killed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(run, vmRecordFile)); err == nil {
		t.Error("VM record left")
	}
	// What is not a socket is left alone under a socket's name; the
	// one-instance layout (the run dir's top) never had console or VNC
	// sockets, so none is removed there.
	notSocket := filepath.Join(run, machine.VNCSocketName)
	os.WriteFile(notSocket, []byte("keep"), 0o600)
	a.killLeftovers(s)
	if data, _ := os.ReadFile(notSocket); string(data) != "keep" {
		t.Error("a file that is not a socket was removed")
	}
	os.Remove(notSocket)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(run, machine.ConsoleSocketName), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	a.killLeftoversIn(s, false)
	if _, err := os.Lstat(filepath.Join(run, machine.ConsoleSocketName)); err != nil {
		t.Errorf("the one-instance layout's recovery removed a console socket: %v", err)
	}
}

// BenchmarkTaskOverhead measures the agent's own costs per task against
// the guest's boot-to-result time, with real VMs and a local controller:
// task response → QEMU started (goal ≤ 50 ms) and result upload completed
// → result persisted and POST answered (goal ≤ 20 ms; teardown runs in
// parallel). Run with -benchtime=Nx; each iteration is one hello task.
func BenchmarkTaskOverhead(b *testing.B) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(b, controller.Controller{URL: srv.TaskURL()})
	var mu sync.Mutex
	var all []taskTimings
	e.start()
	e.agent.onTimings = func(tt taskTimings) { mu.Lock(); all = append(all, tt); mu.Unlock() }
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		srv.QueueTask("hello", testMachine)
		srv.WaitResults(i+1, 120*time.Second)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(all)
		mu.Unlock()
		if n >= b.N || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.StopTimer()
	e.shutdown()
	if len(all) == 0 {
		b.Fatal("no timings")
	}
	// Median with min and max over the tasks, per phase.
	var toQEMU, boot, persisted, answered []time.Duration
	for _, tt := range all {
		toQEMU = append(toQEMU, tt.QEMUStarted.Sub(tt.Received))
		boot = append(boot, tt.Uploaded.Sub(tt.QEMUStarted))
		persisted = append(persisted, tt.Persisted.Sub(tt.Uploaded))
		answered = append(answered, tt.Answered.Sub(tt.Uploaded))
	}
	report := func(ds []time.Duration, unit string) {
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
		slices.Sort(ds)
		b.ReportMetric(ms(ds[len(ds)/2]), unit)
		b.ReportMetric(ms(ds[0]), unit+"-min")
		b.ReportMetric(ms(ds[len(ds)-1]), unit+"-max")
	}
	report(toQEMU, "ms-response-to-qemu")
	report(persisted, "ms-upload-to-persisted")
	report(answered, "ms-upload-to-answered")
	report(boot, "ms-guest-boot-to-result")
}

// TestBootstrapMisboot: a machine that never talks is retried, then held
// for inspection (soft fail), then skipped this round with its work
// snapshot deleted; the agent keeps going.
func TestBootstrapMisboot(t *testing.T) {
	e := newE2E(t)
	e.misbootingImage()
	a, err := New(&e.opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	var held atomic.Int32
	a.VMs.onSuspend = func(*machine.Machine) { held.Add(1) }
	ms, err := a.Enumerator.Enumerate(context.Background())
	if err != nil || len(ms) != 0 {
		t.Fatalf("%d machines, %v", len(ms), err)
	}
	// Afterwards the machine waits out its own backoff: a second
	// enumeration does not boot it again.
	t0 := time.Now()
	if ms, _ := a.Enumerator.Enumerate(context.Background()); len(ms) != 0 || time.Since(t0) > 2*time.Second {
		t.Errorf("second enumeration: %d machines after %s", len(ms), time.Since(t0))
	}
	if held.Load() != 1 {
		t.Errorf("held %d machines for inspection, want 1", held.Load())
	}
}
