package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
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
	e.drain = make(chan struct{}, 1)
	srv.QueueTask("slow", testMachine)
	e.start()
	select {
	case <-building:
	case <-time.After(120 * time.Second):
		t.Fatal("the task never started building")
	}
	srv.QueueTask("hello", testMachine) // must not be taken
	asked := len(srv.Requests())
	e.drain <- struct{}{}
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
