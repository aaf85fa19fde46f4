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
	answered   time.Time // last answer (or cover) the supervisor saw
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

func (h *heart) mark(now time.Time) {
	h.mu.Lock()
	h.answered = now
	h.mu.Unlock()
}

// silentFor is how long the heart has not answered.
func (h *heart) silentFor(now time.Time) time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return now.Sub(h.answered)
}

// askOnce asks the heart, for up to timeout; covered or gone counts as
// answered (checked again at the end: a cover may begin while it asks).
func (h *heart) askOnce(timeout time.Duration) {
	if h.covered(time.Now()) {
		h.mark(time.Now())
		return
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case h.ask <- struct{}{}:
		h.mark(time.Now())
	case <-h.done:
		h.mark(time.Now())
	case <-t.C:
		if h.covered(time.Now()) {
			h.mark(time.Now())
		}
	}
}

// supervisor asks every registered heart for a beat each round and tells
// whether all have answered recently (then systemd gets WATCHDOG=1).
type supervisor struct {
	mu     sync.Mutex
	hearts []*heart
}

// add registers a goroutine; stop unregisters it.
func (s *supervisor) add(name string) (h *heart, stop func()) {
	if s == nil {
		return nil, func() {}
	}
	h = &heart{name: name, ask: make(chan struct{}), done: make(chan struct{}), answered: time.Now()}
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

// round asks every heart at once, each for up to timeout, and returns the
// names of those silent for longer than maxSilence: one slow answer is not
// a stuck goroutine, a silence spanning rounds is.
func (s *supervisor) round(timeout, maxSilence time.Duration) []string {
	s.mu.Lock()
	hearts := slices.Clone(s.hearts)
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, h := range hearts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.askOnce(timeout)
		}()
	}
	wg.Wait()
	var stuck []string
	now := time.Now()
	for _, h := range hearts {
		if h.silentFor(now) > maxSilence {
			stuck = append(stuck, h.name)
		}
	}
	return stuck
}

// superviseHearts runs a round every interval/2 (each ask waits up to
// interval/4) and pings after each round in which no goroutine has been
// silent for more than interval. With interval = WatchdogSec/2, a
// goroutine stuck outside its loop for more than about WatchdogSec/2 stops
// the pings, and systemd restarts the agent WatchdogSec after the last
// one; a single slow answer costs nothing. A stuck goroutine is logged
// once per episode, naming it.
func (a *Agent) superviseHearts(ctx context.Context, interval time.Duration, ping func()) {
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	var reported []string
	for {
		stuck := a.hearts.round(interval/4, interval)
		if len(stuck) == 0 {
			ping()
			reported = nil
		} else if !slices.Equal(stuck, reported) {
			reported = stuck
			if a.onStuck != nil {
				a.onStuck(stuck)
			}
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
