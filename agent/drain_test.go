package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// TestDrain: a drain while a task builds lets it finish and be reported
// (success, not interrupt), asks no controller again, leaves the queued
// task alone, and Run returns nil by itself.
func TestDrain(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	building := make(chan struct{}, 1)
	e.onStatus = func(line string) {
		if strings.Contains(line, "building") {
			select {
			case building <- struct{}{}:
			default:
			}
		}
	}
	srv.QueueTask("slow", testMachine)
	e.start()
	select {
	case <-building:
	case <-time.After(120 * time.Second):
		t.Fatal("the task never started building")
	}
	srv.QueueTask("hello", testMachine) // must not be taken
	asked := len(srv.Requests())
	e.agent.Drain()
	select {
	case err := <-e.done:
		if err != nil {
			t.Fatalf("Run after a drain: %v", err)
		}
		e.done <- nil // for the cleanup's stop
	case <-time.After(120 * time.Second):
		t.Fatal("Run did not return after the drain")
	}
	rs := srv.Results()
	if len(rs) != 1 || rs[0].Request.Result.Name != "slow" || rs[0].Request.Result.Status != "success" {
		t.Fatalf("results %+v, want slow: success", rs)
	}
	if n := len(srv.Requests()); n != asked {
		t.Errorf("%d task requests after the drain began", n-asked)
	}
	if st := e.agent.State(); !st.Draining {
		t.Error("the state does not say draining")
	}
}

// TestDrainWithUnsentResult: a result left by an earlier run that cannot
// be delivered (its controller is down) does not keep a drain from ending:
// Run returns after the drain's send grace, Close does not wait for the
// result TTL, and the result stays journaled for the next start. No VM:
// there are no machines.
func TestDrainWithUnsentResult(t *testing.T) {
	defer func(d time.Duration) { drainSendGrace = d }(drainSendGrace)
	drainSendGrace = 500 * time.Millisecond
	dir := t.TempDir()
	o := &Options{Machines: filepath.Join(dir, "machines"), TFTP: filepath.Join(dir, "tftp"), TFTPPort: freeUDPPort(t) - 1,
		ToolchainName: "drain", ToolchainNum: 1, ToolchainVer: mustVersion(t, Version),
		BootstrapStartup: time.Minute, BootstrapTimeout: time.Minute, BuildStartup: time.Minute, BuildTimeout: time.Minute,
		CPU: 1, RAM: 512 << 10, ConnectTimeout: time.Second, RequestTimeout: 2 * time.Second,
		Network: "user", Accel: "tcg", StateDir: filepath.Join(dir, "state"), RunDir: filepath.Join(dir, "run"),
		PollInterval: time.Second, ResultTTL: time.Hour, FakeBootstrap: true,
		Controllers: []controller.Controller{{URL: "http://127.0.0.1:1/?build-task"}}}
	os.MkdirAll(o.Machines, 0o755)
	j, err := journal.Open(journal.Dir(o.StateDir, 1))
	if err != nil {
		t.Fatal(err)
	}
	e := &journal.Entry{URL: "http://127.0.0.1:1/?build-result", Package: "left", PackageVersion: "1.0.0", Status: "success"}
	if err := j.Receive(e, []byte(": 1\n")); err != nil {
		t.Fatal(err)
	}
	if err := j.Settle(e, journal.Sendable, "success", "", nil); err != nil {
		t.Fatal(err)
	}
	j.Close()

	a, err := New(o, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Sender.Min, a.Sender.Max = 50*time.Millisecond, 100*time.Millisecond
	a.Ready = a.Drain
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after a drain with an undeliverable result")
	}
	closed := make(chan struct{})
	go func() { a.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close waits for the undeliverable result")
	}
	if _, err := os.Stat(filepath.Join(journal.Dir(o.StateDir, 1), e.ID+".json")); err != nil {
		t.Errorf("the unsent result left the journal: %v", err)
	}
}
