package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/tftp"
)

// EventQueue collects TFTP events without ever blocking a transfer and lets
// one consumer wait for them.
type EventQueue struct {
	mu     sync.Mutex
	events []tftp.Event
	signal chan struct{}
	// lastUpload is when the last completed upload was reported.
	lastUpload time.Time
	// dropped counts events not queued because the queue was full.
	dropped int
}

// maxQueuedEvents bounds the queue: a flood of failed requests (a guest,
// or a local user without the session prefix, while nobody consumes) must
// not grow it without end. Events that can decide a session are always
// queued; the session ends at the first one.
const maxQueuedEvents = 1024

func NewEventQueue() *EventQueue { return &EventQueue{signal: make(chan struct{}, 1)} }

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
func (q *EventQueue) Notify(e tftp.Event) {
	if e.Fault == tftp.FaultForeign {
		// Not the guest (no session prefix, wrong source): never a sign
		// of life, never a result; the mapping logged it.
		return
	}
	q.mu.Lock()
	if len(q.events) >= maxQueuedEvents && !decisive(e) {
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

func (q *EventQueue) uploadTime() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lastUpload
}

// Next returns the next event, waiting until one comes or ctx ends.
func (q *EventQueue) Next(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, true) }

// peek waits for an event without consuming it.
func (q *EventQueue) peek(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, false) }

func (q *EventQueue) wait(ctx context.Context, consume bool) (tftp.Event, error) {
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
		case <-q.signal:
		case <-ctx.Done():
			return tftp.Event{}, ctx.Err()
		}
	}
}

// ErrStartupTimeout means the machine never talked to the TFTP server.
var ErrStartupTimeout = errors.New("no TFTP request from the machine within the startup timeout")

// ErrBuildTimeout means no result arrived within the build timeout.
var ErrBuildTimeout = errors.New("no result uploaded within the build timeout")

// WaitUpload waits for the first request (within startup; 0 = no limit)
// and then for a completed upload of one of names (within total, counted
// from the call). The upload's completion event ends the wait: there is no
// polling. It returns the uploaded name.
func WaitUpload(ctx context.Context, q *EventQueue, names []string, startup, total time.Duration) (string, error) {
	deadline := time.Now().Add(total)
	startDeadline := deadline
	if startup > 0 && startup < total {
		startDeadline = time.Now().Add(startup)
	}
	alive := false
	for {
		d := deadline
		if !alive {
			d = startDeadline
		}
		waitCtx, cancel := context.WithDeadline(ctx, d)
		e, err := q.Next(waitCtx)
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return "", ctx.Err()
			case !alive:
				return "", ErrStartupTimeout
			}
			return "", ErrBuildTimeout
		}
		alive = true
		if e.Kind != tftp.UploadCompleted {
			continue
		}
		if name, err := tftp.CleanName(e.Name); err == nil && slices.Contains(names, name) {
			return name, nil
		}
	}
}
