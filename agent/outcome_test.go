package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/tftp"
)

func TestDecideOutcome(t *testing.T) {
	tests := []struct {
		p       phase
		ev      event
		status  string
		hold    bool
		backoff backoffScope
		publish bool
	}{
		// A worker's own result, abort included, is reported as is.
		{buildPhase, evResult, "", false, noBackoff, false},
		{buildPhase, evStartupExhausted, "abort", true, noBackoff, false},
		{buildPhase, evTimeout, "abort", true, noBackoff, false},
		{buildPhase, evNoResult, "abnormal", true, noBackoff, false},
		{buildPhase, evBadResult, "abnormal", true, noBackoff, false},
		{buildPhase, evMachineFault, "interrupt", false, machineBackoff, false},
		{buildPhase, evHostFault, "interrupt", false, hostBackoff, false},
		{buildPhase, evInterrupted, "interrupt", false, noBackoff, false},
		{buildPhase, evNotOffered, "abort", false, noBackoff, false},
		{buildPhase, evJournalFault, "interrupt", false, hostBackoff, false},
		// Interactive builds: refused, or ended at the breakpoint without
		// a result (released, timed out): abort, never held.
		{buildPhase, evInteractiveOff, "abort", false, noBackoff, false},
		{buildPhase, evInteractiveEnd, "abort", false, noBackoff, false},
		// Auxiliary machines: nothing was built, nothing is held.
		{buildPhase, evAuxiliaryUnknown, "abort", false, noBackoff, false},
		{buildPhase, evAuxiliaryFault, "abort", false, machineBackoff, false},
		{bootstrapPhase, evResult, "", false, noBackoff, true},
		{bootstrapPhase, evTimeout, "abort", true, machineBackoff, false},
		{bootstrapPhase, evStartupExhausted, "abort", true, machineBackoff, false},
		{bootstrapPhase, evForcedOff, "abnormal", false, machineBackoff, false},
		{bootstrapPhase, evVersion, "abnormal", false, machineBackoff, false},
		{bootstrapPhase, evInterrupted, "interrupt", false, noBackoff, false},
		{bootstrapPhase, evHostFault, "interrupt", false, hostBackoff, false},
	}
	for _, tc := range tests {
		o := decideOutcome(tc.p, tc.ev)
		if o.Status != tc.status || o.Hold != tc.hold || o.Backoff != tc.backoff || o.Publish != tc.publish {
			t.Errorf("phase %d %v: got %+v", tc.p, tc.ev, o)
		}
		if tc.status == "interrupt" && o.Hold {
			t.Errorf("%v: an interrupt is never held", tc.ev)
		}
		if (o.State() == "held") != o.Hold {
			t.Errorf("%v: state %s with hold %v", tc.ev, o.State(), o.Hold)
		}
	}
	if len(eventNames) != int(evAuxiliaryFault)+1 {
		t.Errorf("eventNames out of date")
	}
}

// TestEventQueueBounded: a flood of failed requests does not grow the
// queue past its bound, and decisive events still get through.
func TestEventQueueBounded(t *testing.T) {
	q := newEventQueue()
	for i := 0; i < 100000; i++ {
		q.Notify(tftp.Event{Kind: tftp.TransferFailed, Op: tftp.Get, Name: "x", Fault: tftp.FaultClient})
	}
	q.Notify(tftp.Event{Kind: tftp.UploadCompleted, Op: tftp.Put, Name: "manifest"})
	q.mu.Lock()
	n, dropped := len(q.events), q.dropped
	q.mu.Unlock()
	if n != maxQueuedEvents+1 || dropped != 100000-maxQueuedEvents {
		t.Fatalf("%d queued, %d dropped", n, dropped)
	}
	if name, ok := q.completed(resultNames); !ok || name != "manifest" {
		t.Error("the upload was dropped")
	}
}

// TestForeignRequestIsNoSignOfLife: a request refused as foreign (no
// session prefix, another source) never makes the guest count as alive.
func TestForeignRequestIsNoSignOfLife(t *testing.T) {
	q := newEventQueue()
	q.Notify(tftp.Event{Kind: tftp.TransferFailed, Op: tftp.Get, Name: "manifest", Fault: tftp.FaultForeign})
	if err := waitAlive(context.Background(), q, 100*time.Millisecond); !errors.Is(err, errStartupTimeout) {
		t.Fatalf("WaitAlive after a foreign request: %v", err)
	}
	q.Notify(tftp.Event{Kind: tftp.FirstRequest, Op: tftp.Get, Name: "manifest"})
	if err := waitAlive(context.Background(), q, 100*time.Millisecond); err != nil {
		t.Fatalf("WaitAlive after the guest's request: %v", err)
	}
}
