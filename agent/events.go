package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/tftp"
)

// eventQueue collects TFTP events without ever blocking a transfer and lets
// one consumer wait for them.
type eventQueue struct {
	mu     sync.Mutex
	events []tftp.Event
	signal chan struct{}
	// lastUpload is when the last completed upload was reported.
	lastUpload time.Time
	// dropped counts events not queued because the queue was full.
	dropped int
	// firstRequest is when the guest's first request came (metrics).
	firstRequest time.Time
}

// maxQueuedEvents bounds the queue: a flood of failed requests (a guest,
// or a local user without the session prefix, while nobody consumes) must
// not grow it without end. Events that can decide a session are always
// queued; the session ends at the first one.
const maxQueuedEvents = 1024

func newEventQueue() *eventQueue { return &eventQueue{signal: make(chan struct{}, 1)} }

// decisive reports whether an event can end a session's wait.
func decisive(e tftp.Event) bool {
	switch e.Kind {
	case tftp.UploadCompleted:
		return true
	case tftp.TransferFailed:
		return e.Fault == tftp.FaultHost || e.Fault == tftp.FaultRefused
	}
	return e.Kind == tftp.FirstRequest
}

// Notify is a tftp.Mapping.Notify function.
func (q *eventQueue) Notify(e tftp.Event) {
	if e.Fault == tftp.FaultForeign {
		// Not the guest (no session prefix, wrong source): never a sign
		// of life, never a result; the mapping logged it.
		return
	}
	q.mu.Lock()
	if e.Kind == tftp.FirstRequest && q.firstRequest.IsZero() {
		q.firstRequest = e.Time
	}
	// Decisive events get a second allowance: a guest can send refused
	// uploads at packet rate while nobody consumes (a hold, the power-off
	// wait), and the first decisive event already decides.
	if n := len(q.events); (n >= maxQueuedEvents && !decisive(e)) || n >= 2*maxQueuedEvents {
		q.dropped++
		q.mu.Unlock()
		return
	}
	q.events = append(q.events, e)
	if e.Kind == tftp.UploadCompleted {
		q.lastUpload = e.Time
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// firstRequestTime is when the guest's first request came (zero: none yet).
func (q *eventQueue) firstRequestTime() time.Time {
	if q == nil {
		return time.Time{}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.firstRequest
}

func (q *eventQueue) uploadTime() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lastUpload
}

// Next returns the next event, waiting until one comes or ctx ends.
func (q *eventQueue) Next(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, true) }

// peek waits for an event without consuming it.
func (q *eventQueue) peek(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, false) }

func (q *eventQueue) wait(ctx context.Context, consume bool) (tftp.Event, error) {
	for {
		q.mu.Lock()
		if len(q.events) > 0 {
			e := q.events[0]
			if consume {
				q.events = q.events[1:]
			}
			q.mu.Unlock()
			return e, nil
		}
		q.mu.Unlock()
		select {
		case <-heartOf(ctx).beat():
		case <-q.signal:
		case <-ctx.Done():
			return tftp.Event{}, ctx.Err()
		}
	}
}

// errStartupTimeout means the machine never talked to the TFTP server.
var errStartupTimeout = errors.New("no TFTP request from the machine within the startup timeout")
