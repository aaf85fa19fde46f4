package agent

import (
	"context"
	"slices"
	"sync"
	"time"
)

// heart is one long-running goroutine's heartbeat: the supervisor asks
// through beat(), which the goroutine's select loop receives from; a
// goroutine that does not answer is stuck outside its loop. A call known
// to take long but bounded (a controller request, a QEMU start) is covered
// by busy: the heart counts as answering until the bound passes, so a call
// that hangs past its bound still stops the heartbeat.
type heart struct {
	name string
	ask  chan struct{}
	done chan struct{} // closed when the goroutine is gone

	mu         sync.Mutex
	coverUntil time.Time
}

// beat is the channel a select loop receives heartbeat asks from; nil (a
// channel never ready) for a nil heart, so loops need no check.
func (h *heart) beat() <-chan struct{} {
	if h == nil {
		return nil
	}
	return h.ask
}

// busy covers a call that may take up to bound; the returned func ends the
// cover.
func (h *heart) busy(bound time.Duration) func() {
	if h == nil {
		return func() {}
	}
	h.mu.Lock()
	prev := h.coverUntil
	h.coverUntil = time.Now().Add(bound)
	h.mu.Unlock()
	return func() {
		h.mu.Lock()
		h.coverUntil = prev
		h.mu.Unlock()
	}
}

func (h *heart) covered(now time.Time) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Before(h.coverUntil)
}

// wait blocks until c is closed, answering heartbeats meanwhile: for waits
// on another goroutine that has its own heart or bound.
func (h *heart) wait(c <-chan struct{}) {
	for {
		select {
		case <-c:
			return
		case <-h.beat():
		}
	}
}

// supervisor asks every registered heart for a beat each round and tells
// whether all answered (then systemd gets WATCHDOG=1).
type supervisor struct {
	mu     sync.Mutex
	hearts []*heart
}

// add registers a goroutine; stop unregisters it.
func (s *supervisor) add(name string) (h *heart, stop func()) {
	if s == nil {
		return nil, func() {}
	}
	h = &heart{name: name, ask: make(chan struct{}), done: make(chan struct{})}
	s.mu.Lock()
	s.hearts = append(s.hearts, h)
	s.mu.Unlock()
	var once sync.Once
	return h, func() {
		once.Do(func() {
			s.mu.Lock()
			s.hearts = slices.DeleteFunc(s.hearts, func(x *heart) bool { return x == h })
			s.mu.Unlock()
			close(h.done)
		})
	}
}

// round asks every heart, giving them until timeout in all, and returns
// the names of those that did not answer.
func (s *supervisor) round(timeout time.Duration) []string {
	s.mu.Lock()
	hearts := slices.Clone(s.hearts)
	s.mu.Unlock()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var stuck []string
	expired := false
	for _, h := range hearts {
		if h.covered(time.Now()) {
			continue
		}
		if expired {
			stuck = append(stuck, h.name)
			continue
		}
		select {
		case h.ask <- struct{}{}:
		case <-h.done:
		case <-deadline.C:
			expired = true
			stuck = append(stuck, h.name)
		}
	}
	return stuck
}

// run asks every interval; ping is called after each round all hearts
// answered. A stuck goroutine is logged once per episode, naming it; no
// ping then lets systemd's watchdog restart the agent.
func (a *Agent) superviseHearts(ctx context.Context, interval time.Duration, ping func()) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var reported []string
	for {
		stuck := a.hearts.round(interval / 2)
		if len(stuck) == 0 {
			ping()
			reported = nil
		} else if !slices.Equal(stuck, reported) {
			reported = stuck
			a.Log.Error("watchdog: goroutines stuck outside their loops; not telling systemd we are alive", "stuck", stuck)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// track registers a goroutine and returns its context carrying its heart.
func (s *supervisor) track(ctx context.Context, name string) (context.Context, func()) {
	h, stop := s.add(name)
	return withHeart(ctx, h), stop
}

// senderWatchdog is the supervisor as journal.Sender uses it.
type senderWatchdog struct{ s *supervisor }

func (w senderWatchdog) Track(ctx context.Context, name string) (context.Context, func()) {
	return w.s.track(ctx, name)
}
func (senderWatchdog) Beat(ctx context.Context) <-chan struct{} { return heartOf(ctx).beat() }
func (senderWatchdog) Cover(ctx context.Context, bound time.Duration) func() {
	return heartOf(ctx).busy(bound)
}

// sessionStepBound bounds a machine session's synchronous steps (the
// start: snapshot, TFTP, tap, QEMU with its QMP timeouts; the teardown)
// for the watchdog: longer means stuck.
var sessionStepBound = 5 * time.Minute

type heartKey struct{}

// withHeart gives a goroutine's heart to the calls it makes.
func withHeart(ctx context.Context, h *heart) context.Context {
	if h == nil {
		return ctx
	}
	return context.WithValue(ctx, heartKey{}, h)
}

// heartOf is the heart of the goroutine ctx belongs to (nil: none).
func heartOf(ctx context.Context) *heart {
	h, _ := ctx.Value(heartKey{}).(*heart)
	return h
}
