package agent

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/machine"
)

// TestHoldSurvivesRestart: a machine held for inspection outlives its
// agent, killed with SIGKILL while holding or stopped with SIGTERM; the
// next agent takes the same QEMU over (--suspended shows it, the slot is
// held, the snapshot is kept), --release ends it, and the controller gets
// the held result exactly once. Nothing is left.
func TestHoldSurvivesRestart(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.BuildTimeout, e.opts.SuspendTimeout = 6*time.Second, 0 // held until released
	for _, how := range []string{"SIGKILL", "SIGTERM"} {
		t.Run(how, func(t *testing.T) {
			before := len(srv.Sessions())
			srv.QueueTask("hang", testMachine)
			if how == "SIGKILL" {
				runCrashChild(t, e, "while-held", 0)
			} else {
				stopChildWhenHeld(t, e)
			}
			held, err := ReadSuspended(e.slotRun(1))
			if err != nil || held == nil {
				t.Fatalf("after the %s: no live held machine (%v)", how, err)
			}
			if _, err := os.Stat(held.Snapshot); err != nil {
				t.Fatalf("the held snapshot is gone: %v", err)
			}
			if n := len(srv.Results()); n != 0 && how == "SIGKILL" {
				t.Fatalf("%d results before the hold ended", n)
			}

			var status statusLog
			e.onStatus = status.record
			e.start()
			if !status.waitSaid("holding", 60*time.Second) {
				t.Fatalf("the restarted agent does not hold the machine; status: %q", status.lines)
			}
			again, err := ListSuspended(e.opts.RunDir)
			wantSocket := filepath.Join(e.slotRun(1), machine.ConsoleSocketName)
			if err != nil || len(again) != 1 || again[0].Suspended.PID != held.PID || again[0].Suspended.ConsoleSocket != wantSocket {
				t.Fatalf("--suspended after the restart: %+v, %v (want pid %d, console socket %s)", again, err, held.PID, wantSocket)
			}
			// The console is served again: a client first gets the output
			// from before the restart (the guest's last words).
			console, err := net.Dial("unix", wantSocket)
			if err != nil {
				t.Fatalf("the console of the taken-over machine: %v", err)
			}
			consoleUntil(t, console, "build: hanging")
			// Resumed (--resume), the guest reads what is typed there.
			if _, err := ResumeSuspended(e.slotRun(1)); err != nil {
				t.Fatal(err)
			}
			console.Write([]byte("inspecting\n"))
			consoleUntil(t, console, `console input "inspecting"`)
			console.Close()
			time.Sleep(time.Second)
			for _, r := range srv.Results() {
				if r.Request.Session == srv.Sessions()[before] {
					t.Fatalf("the held result was sent before the release: %+v", r.Request.Result.Status)
				}
			}
			if _, err := ReleaseSuspended(e.slotRun(1)); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			var got []string
			for time.Now().Before(deadline) {
				got = nil
				for _, r := range srv.Results() {
					if r.Request.Session == srv.Sessions()[before] {
						got = append(got, r.Request.Result.Status)
					}
				}
				if len(got) > 0 {
					break
				}
				time.Sleep(100 * time.Millisecond)
			}
			status.waitSaidAfter("holding", "idle", 30*time.Second)
			time.Sleep(time.Second) // a duplicate would come now
			e.shutdown()
			e.stop = nil
			got = nil
			for _, r := range srv.Results() {
				if r.Request.Session == srv.Sessions()[before] {
					got = append(got, r.Request.Result.Status)
				}
			}
			if len(got) != 1 || got[0] != "abort" {
				t.Errorf("results for the held task %v, want exactly [abort]", got)
			}
			if processStartTime(held.PID) == held.StartTime {
				t.Errorf("the held QEMU %d still runs after the release", held.PID)
			}
			if _, err := os.Stat(held.Snapshot); err == nil {
				t.Errorf("the held snapshot %s was not deleted", held.Snapshot)
			}
			checkNothingLeft(t, e)
		})
	}
}

// stopChildWhenHeld runs the agent as a child process until its machine
// is held, then SIGTERMs it and waits for it to exit.
func stopChildWhenHeld(t *testing.T, e *e2e) {
	t.Helper()
	cmd, logFile := startChild(t, e, "")
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if s, _ := ReadSuspended(e.slotRun(1)); s != nil {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-waited
			log, _ := os.ReadFile(logFile)
			t.Fatalf("the child never held its machine:\n%s", tail(string(log), 3000))
		}
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-waited:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		t.Fatal("the child did not stop within 60 s of SIGTERM")
	}
	log, _ := os.ReadFile(logFile)
	if !strings.Contains(string(log), "stays suspended for the next agent") {
		t.Fatalf("the child did not leave its hold:\n%s", tail(string(log), 3000))
	}
}

// TestOneShotLeavesHold: a one-shot (--fake-request, --dump-result) run
// while the daemon is down with a live held machine refuses the slot
// (exit 78, naming --release) and leaves the QEMU and its records alone;
// a stand-in process plays the held QEMU.
func TestOneShotLeavesHold(t *testing.T) {
	run := t.TempDir()
	held := exec.Command("sleep", "300")
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	defer held.Process.Kill()
	pid := held.Process.Pid
	start := processStartTime(pid)
	if err := writeVMRecord(run, vmRecord{PID: pid, StartTime: start, Mode: "build", Entry: "x"}); err != nil {
		t.Fatal(err)
	}
	if err := writeSuspended(run, Suspended{PID: pid, StartTime: start, Since: time.Now(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	a := &Agent{Opts: &Options{RunDir: run, TFTP: t.TempDir(), ToolchainName: "e2e"}, Log: testLog(t)}
	s := &slot{plan: SlotPlan{Instance: 1, RunDir: run}, log: a.Log}
	err := a.killLeftovers(s)
	var ce *ConfigError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "--release") {
		t.Fatalf("one-shot: %v, want a ConfigError naming --release", err)
	}
	time.Sleep(100 * time.Millisecond)
	if processStartTime(pid) != start {
		t.Fatal("the held QEMU was killed by a one-shot")
	}
	for _, f := range []string{vmRecordFile, suspendedFile} {
		if _, err := os.Stat(filepath.Join(run, f)); err != nil {
			t.Errorf("record %s: %v", f, err)
		}
	}
}
