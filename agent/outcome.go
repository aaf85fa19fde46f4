package agent

import "github.com/build2/bbot-agent-go/agent/journal"

// event is what happened to a machine session, as the session saw it. The
// session only reports events; decideOutcome alone says what becomes of
// the task (SPEC §9 as built: README "Failure outcomes").
type event int

const (
	evResult           event = iota // the worker uploaded a parsable result (any status, abort included)
	evStartupExhausted              // no TFTP request within the startup timeout, retries exhausted
	evTimeout                       // build or bootstrap timeout passed without a result
	evNoResult                      // the machine powered off without a result
	evBadResult                     // unparsable, oversize, refused or over-10,000-operation result
	evForcedOff                     // bootstrap: the guest had to be forced down after its upload
	evVersion                       // bootstrap: the worker reports a bbot other than --toolchain-ver wants
	evMachineFault                  // host fault scoped to one machine: snapshot, lock busy after a bounded wait
	evHostFault                     // host-wide fault: state dir, TFTP bind/dirs, tap, QEMU start, write failure during upload
	evInterrupted                   // SIGTERM/SIGINT before the outcome was final
	evNotOffered                    // the task names a machine this agent did not offer
	evJournalFault                  // the task's journal entry could not be written
	evInteractiveOff                // an interactive task for an agent running with --interactive false
	evInteractiveEnd                // an interactive build released, timed out or powered off at its breakpoint, without a result
	evAuxiliaryUnknown              // the task names an auxiliary machine this agent did not offer
	evAuxiliaryFault                // an auxiliary machine did not start or upload a valid environment
)

var eventNames = [...]string{"result", "startup-exhausted", "timeout", "no-result", "bad-result", "forced-off",
	"version", "machine-fault", "host-fault", "interrupted", "not-offered", "journal-fault",
	"interactive-off", "interactive-end",
	"auxiliary-unknown", "auxiliary-fault"}

func (e event) String() string { return eventNames[e] }

// backoffScope is what a fault withholds.
type backoffScope int

const (
	noBackoff      backoffScope = iota
	machineBackoff              // this machine only, with its own capped backoff
	hostBackoff                 // the whole agent: no task is asked for until it passes
)

// outcome is what becomes of a task (or bootstrap) after an event.
type outcome struct {
	// Status is the reported status; "" keeps the worker's own.
	Status string
	// Hold: suspend the machine and keep it for inspection; the result is
	// final (journal state held) and sent when the hold ends.
	Hold bool
	// Journaled is false when the result can only be sent from memory.
	Journaled bool
	Backoff   backoffScope
	// Publish: a bootstrap's snapshot becomes the bootstrapped machine.
	Publish bool
}

// State is the journal state the result is written in.
func (o outcome) State() journal.State {
	if o.Hold {
		return journal.Held
	}
	return journal.Sendable
}

// phase says which kind of session produced the event.
type phase int

const (
	buildPhase phase = iota
	bootstrapPhase
)

// decideOutcome is the one place that maps what happened to what is
// reported (SPEC §9, issue "never lose or mis-report"): a worker's result
// is reported as is and never held; a guest fault is final and held; a host
// fault is an interrupt (brep re-queues the build) and backs off.
func decideOutcome(p phase, ev event) outcome {
	o := outcome{Journaled: true}
	switch ev {
	case evResult:
		o.Publish = p == bootstrapPhase
	case evStartupExhausted, evTimeout:
		o.Status, o.Hold = "abort", true
	case evNoResult, evBadResult:
		o.Status, o.Hold = "abnormal", true
	case evForcedOff, evVersion:
		// Only bootstraps report these: not published, the machine waits.
		o.Status, o.Backoff = "abnormal", machineBackoff
	case evMachineFault:
		o.Status, o.Backoff = "interrupt", machineBackoff
	case evHostFault:
		o.Status, o.Backoff = "interrupt", hostBackoff
	case evInterrupted:
		o.Status = "interrupt"
	case evNotOffered, evInteractiveOff, evAuxiliaryUnknown:
		o.Status = "abort"
	case evInteractiveEnd:
		// A person had the machine: nothing is left to inspect.
		o.Status = "abort"
	case evAuxiliaryFault:
		// The build never ran: nothing to inspect in it, and the faulty
		// auxiliary machine waits out its own backoff.
		o.Status, o.Backoff = "abort", machineBackoff
	case evJournalFault:
		o.Status, o.Journaled, o.Backoff = "interrupt", false, hostBackoff
	}
	if p == bootstrapPhase && o.Hold {
		// A held bootstrap holds its own machine only; afterwards the
		// machine backs off like any failed bootstrap.
		o.Backoff = machineBackoff
	}
	return o
}
