package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

// TestWorkerAbortNotHeld: a worker that reports abort itself is reported
// as is, at once, and the machine is not held: the next task runs.
func TestWorkerAbortNotHeld(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("worker-abort", testMachine) // the test guest aborts unknown packages
	srv.QueueTask("hello", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.SuspendTimeout = 0 // a hold would last forever
	var held atomic.Int32
	e.onSuspend = func(*machine.Machine) { held.Add(1) }
	e.start()
	rs := srv.WaitResults(2, 180*time.Second)
	e.shutdown()
	got := statuses(rs)
	if got["worker-abort"] != "abort" || got["hello"] != "success" {
		t.Errorf("statuses %v", got)
	}
	if held.Load() != 0 {
		t.Errorf("a worker's own abort held the machine")
	}
}

// TestHeldOutcomeSurvivesSIGTERM: a guest fault's outcome is final when
// the machine is held; SIGTERM leaves the hold to the next agent, which
// sends it as abort when the hold ends (an interrupt would make brep
// re-queue a build that hangs again).
func TestHeldOutcomeSurvivesSIGTERM(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hang", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.BuildTimeout, e.opts.SuspendTimeout = 8*time.Second, 0
	held := make(chan int, 1)
	e.onSuspend = func(m *machine.Machine) { held <- m.Info().PID }
	e.start()
	select {
	case pid := <-held:
		// The session's TFTP prefix is a secret: never on QEMU's command
		// line, which every local user can read.
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil || strings.Contains(string(cmdline), "bbot.tftp-prefix") || !strings.Contains(string(cmdline), "path=") {
			t.Errorf("QEMU command line %q, %v", cmdline, err)
		}
	case <-time.After(180 * time.Second):
		t.Fatal("machine not held")
	}
	e.shutdown() // SIGINT while held
	if rs := srv.Results(); len(rs) != 0 {
		t.Fatalf("results %+v sent while the machine stays held", rs)
	}
	if s, _ := ReadSuspended(e.slotRun(1)); s == nil {
		t.Fatal("SIGINT ended the hold")
	}
	e.opts.SuspendTimeout = time.Second
	e.start()
	rs := srv.WaitResults(1, 60*time.Second)
	e.shutdown()
	if len(rs) != 1 || rs[0].Request.Result.Status != "abort" {
		t.Fatalf("results %+v, want one abort", rs)
	}
}

// TestHostFaultBacksOff: a QEMU that fails to start is a host fault: the
// task is reported interrupt (re-queued by brep, never abort) and the agent
// backs off instead of draining the queue.
func TestHostFaultBacksOff(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	qemu := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	os.WriteFile(qemu, []byte("#!/bin/sh\necho 'qemu: broken on purpose' >&2\nexit 1\n"), 0o755)
	e.opts.PollInterval = 2 * time.Second
	var status statusLog
	e.onStatus = status.record
	e.bootstrapThenStop() // with the real QEMU; then break it
	e.opts.QEMU = qemu
	for i := 0; i < 6; i++ {
		srv.QueueTask("hello", testMachine)
	}
	e.stop = nil
	e.start()
	time.Sleep(7 * time.Second)
	e.shutdown()
	rs := srv.Results()
	for _, r := range rs {
		if r.Request.Result.Status != "interrupt" {
			t.Errorf("host fault reported as %s", r.Request.Result.Status)
		}
	}
	// Backoff 2 s, then 4 s (±jitter on the poll only): at most 3 tasks in 7 s.
	if len(rs) == 0 || len(rs) > 3 {
		t.Errorf("%d tasks taken in 7 s with a broken QEMU, want 1..3", len(rs))
	}
	if !status.said("backing off") {
		t.Errorf("STATUS never said it backs off: %q", status.lines)
	}
}

// TestFullStateDir: with the state dir full, no journal entry can be
// written: the task is not performed (no snapshot, no VM), interrupt is
// POSTed once from memory, and the agent backs off.
func TestFullStateDir(t *testing.T) {
	machinetest.Require(t, os.Geteuid() == 0, "needs root to mount a tmpfs")
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	state := filepath.Join(t.TempDir(), "state")
	os.MkdirAll(state, 0o700)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", state).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", state).Run() })
	e.opts.StateDir = state
	e.opts.PollInterval = time.Second
	var status statusLog
	e.onStatus = status.record
	e.start()
	if !status.waitSaidAfter("bootstrapping", "idle", 120*time.Second) { // bootstrapped, polled: the journal is open
		t.Fatalf("never idle after bootstrapping: %q", status.lines)
	}
	// Fill it up.
	f, _ := os.Create(filepath.Join(state, "filler"))
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			break
		}
	}
	f.Close()
	console := filepath.Join(e.slotRun(1), "console.log")
	fi0, _ := os.Stat(console)
	srv.QueueTask("hello", testMachine)
	rs := srv.WaitResults(1, 30*time.Second)
	time.Sleep(time.Second)
	e.shutdown()
	if len(rs) != 1 || rs[0].Request.Result.Status != "interrupt" {
		t.Fatalf("results %+v, want one interrupt", rs)
	}
	if fi, err := os.Stat(console); err == nil && (fi0 == nil || !fi.ModTime().Equal(fi0.ModTime())) {
		t.Error("a VM was started without a journal entry")
	}
	if !status.said("backing off") {
		t.Errorf("STATUS never said it backs off: %q", status.lines)
	}
}

// TestBootstrapForcedOffNotPublished: a worker that uploads its bootstrap
// manifest but never powers off (power button ignored) is forced down; its
// bootstrap is not published, the machine is withheld, nothing is left.
func TestBootstrapForcedOffNotPublished(t *testing.T) {
	e := newE2E(t)
	tc := filepath.Join(e.opts.TFTP, "toolchains", "e2e", "toolchain")
	os.WriteFile(tc, []byte(": 1\nbbot-version: "+Version+"\ntest-hang-version: 1.0.0\n"), 0o644)
	a, err := New(&e.opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.VMs.powerOffWait, a.VMs.powerButtonGrace = 2*time.Second, 2*time.Second
	ms, err := a.Enumerator.Enumerate(context.Background())
	if err != nil || len(ms) != 0 {
		t.Fatalf("%d machines offered after a forced power-off, %v", len(ms), err)
	}
	if _, err := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e")); err == nil {
		t.Error("bootstrap published after a forced power-off")
	}
	if !a.Enumerator.Withheld(filepath.Join(e.opts.Machines, "vol", "busybox")) {
		t.Error("machine not withheld after a failed bootstrap")
	}
}

// TestMisbootRetryFreshSnapshot: each mis-boot retry boots a fresh
// snapshot: what the first attempt wrote into its snapshot is gone.
func TestMisbootRetryFreshSnapshot(t *testing.T) {
	e := newE2E(t)
	e.misbootingImage()
	a, err := New(&e.opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	var boots []string
	a.VMs.onBoot = func(snapshot string, attempt int) {
		_, err := os.Stat(filepath.Join(snapshot, "dirty"))
		boots = append(boots, fmt.Sprintf("attempt %d dirty=%v", attempt, err == nil))
		os.WriteFile(filepath.Join(snapshot, "dirty"), []byte("left by an attempt\n"), 0o644)
	}
	a.Enumerator.Enumerate(context.Background())
	if len(boots) != 2 || boots[0] != "attempt 1 dirty=false" || boots[1] != "attempt 2 dirty=false" {
		t.Errorf("boots %v: want two attempts, each on a clean snapshot", boots)
	}
}

// TestHostWriteFailure: the host cannot store the guest's upload (the TFTP
// task dirs on a full filesystem): a host fault, reported interrupt at
// once (not after the build timeout), the machine not held, the agent
// backing off.
func TestHostWriteFailure(t *testing.T) {
	machinetest.Require(t, os.Geteuid() == 0, "needs root to mount a tmpfs")
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.BuildTimeout = 120 * time.Second
	build := filepath.Join(e.opts.TFTP, "build", "e2e-1")
	os.MkdirAll(build, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", build).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", build).Run() })
	var held atomic.Int32
	e.onSuspend = func(*machine.Machine) { held.Add(1) }
	var status statusLog
	e.onStatus = status.record
	srv.QueueTask("huge", testMachine) // 1 GiB upload: ENOSPC at 1 MiB
	e.start()
	rs := srv.WaitResults(1, 100*time.Second)
	status.waitSaid("backing off", 10*time.Second)
	e.shutdown()
	checkHostFault(t, rs, "failed on the host", held.Load(), &status)
}

// TestQEMUDiesIsHostFault: QEMU killed under the agent (here: SIGKILL by
// timeout(1) 3 s after its start, before the guest's first request) is a
// host fault: interrupt, never a held guest fault, and a backoff.
func TestQEMUDiesIsHostFault(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	var held atomic.Int32
	e.onSuspend = func(*machine.Machine) { held.Add(1) }
	var status statusLog
	e.onStatus = status.record
	e.bootstrapThenStop() // with the real QEMU; then let it be killed (1 s: before any guest can upload a result)
	qemu := filepath.Join(t.TempDir(), "qemu-system-x86_64")
	os.WriteFile(qemu, []byte("#!/bin/sh\nexec timeout -s KILL 1 qemu-system-x86_64 \"$@\"\n"), 0o755)
	e.opts.QEMU = qemu
	srv.QueueTask("hello", testMachine)
	e.stop = nil
	e.start()
	rs := srv.WaitResults(1, 120*time.Second)
	status.waitSaid("backing off", 10*time.Second)
	e.shutdown()
	checkHostFault(t, rs, "QEMU ended abnormally", held.Load(), &status)
}

// checkHostFault: one interrupt result whose diagnostics say why, no
// machine held, and STATUS said the agent backs off.
func checkHostFault(t *testing.T, rs []controllertest.Result, why string, held int32, status *statusLog) {
	t.Helper()
	if len(rs) != 1 || rs[0].Request.Result.Status != "interrupt" {
		t.Fatalf("results %+v, want one interrupt", rs)
	}
	if !strings.Contains(rs[0].Request.Result.Operations[0].Log, why) {
		t.Errorf("diagnostics %q, want %q", rs[0].Request.Result.Operations[0].Log, why)
	}
	if held != 0 {
		t.Error("a host fault held the machine")
	}
	if !status.said("backing off") {
		t.Errorf("STATUS never said it backs off: %q", status.lines)
	}
}
