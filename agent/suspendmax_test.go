package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
)

// TestSuspendMax: two slots, --suspend-max 1, holds forever: when the
// second machine is held, the first (the oldest) is released and its
// result delivered, while the second stays held.
func TestSuspendMax(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addMachine("busybox2", testMachine2)
	e.opts.Slots, e.opts.SuspendMax, e.opts.SuspendTimeout, e.opts.BuildTimeout = 2, 1, 0, 8*time.Second
	var seen statusSeen
	e.onStatus = seen.add
	srv.QueueTask("hang", testMachine)
	e.start()
	waitStatus(t, &seen, 120*time.Second, func(l string) bool { return strings.Contains(l, "1: holding") })
	if rs := srv.Results(); len(rs) != 0 {
		t.Fatalf("a result before the cap was passed: %+v", rs)
	}
	srv.QueueTask("hang", testMachine2)
	rs := srv.WaitResults(1, 120*time.Second)
	if len(rs) != 1 || rs[0].Machine != testMachine || rs[0].Request.Result.Status != "abort" {
		t.Fatalf("results %+v, want the first machine's abort", rs)
	}
	held, err := ListSuspended(e.opts.RunDir)
	if err != nil || len(held) != 1 || held[0].Instance != 2 {
		t.Fatalf("held %+v, %v; want slot 2's only", held, err)
	}
	time.Sleep(2 * time.Second)
	if n := len(srv.Results()); n != 1 {
		t.Errorf("%d results while slot 2 holds its machine", n)
	}
	if _, err := ReleaseSuspended(e.slotRun(2)); err != nil {
		t.Fatal(err)
	}
	if rs := srv.WaitResults(2, 30*time.Second); len(rs) != 2 {
		t.Errorf("after releasing slot 2: %d results, want 2", len(rs))
	}
	e.stop()
}
