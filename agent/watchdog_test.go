package agent

import (
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"
)

// loop is a goroutine with a select loop that answers its heart until
// stopped; blocked makes it stop answering (stuck outside its loop).
func loop(ctx context.Context, h *heart, blocked <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-blocked:
			<-ctx.Done() // stuck: no select on the heart any more
			return
		case <-h.beat():
		}
	}
}

func TestWatchdogRound(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var s supervisor
	a, stopA := s.add("a")
	defer stopA()
	b, stopB := s.add("b")
	defer stopB()
	blockB := make(chan struct{})
	go loop(ctx, a, nil)
	go loop(ctx, b, blockB)

	const silence = 100 * time.Millisecond
	if stuck := s.round(time.Second, silence); len(stuck) != 0 {
		t.Fatalf("answering loops reported stuck: %v", stuck)
	}
	close(blockB)
	time.Sleep(150 * time.Millisecond)
	if stuck := s.round(50*time.Millisecond, silence); !slices.Equal(stuck, []string{"b"}) {
		t.Fatalf("stuck = %v, want [b]", stuck)
	}

	// A bounded call covers b until its bound passes.
	uncover := b.busy(300 * time.Millisecond)
	if stuck := s.round(50*time.Millisecond, silence); len(stuck) != 0 {
		t.Fatalf("covered heart reported stuck: %v", stuck)
	}
	time.Sleep(400 * time.Millisecond)
	if stuck := s.round(50*time.Millisecond, silence); !slices.Equal(stuck, []string{"b"}) {
		t.Fatalf("after its bound, stuck = %v, want [b]", stuck)
	}
	uncover()

	// A goroutine that ends is no longer asked.
	stopB()
	if stuck := s.round(50*time.Millisecond, silence); len(stuck) != 0 {
		t.Fatalf("a removed heart reported stuck: %v", stuck)
	}
}

// TestWatchdogCoverStartsDuringAsk: a goroutine that enters a bounded call
// while it is being asked (the dispatcher going from its scan into a poll)
// is not stuck.
func TestWatchdogCoverStartsDuringAsk(t *testing.T) {
	var s supervisor
	h, stop := s.add("dispatcher")
	defer stop()
	time.Sleep(20 * time.Millisecond)
	go func() {
		time.Sleep(30 * time.Millisecond)
		h.busy(time.Minute)
	}()
	if stuck := s.round(100*time.Millisecond, 10*time.Millisecond); len(stuck) != 0 {
		t.Fatalf("a heart covered during the ask reported stuck: %v", stuck)
	}
}

func TestWatchdogRemovedDuringRound(t *testing.T) {
	var s supervisor
	_, stop := s.add("leaving")
	go func() {
		time.Sleep(50 * time.Millisecond)
		stop()
	}()
	if stuck := s.round(2*time.Second, time.Second); len(stuck) != 0 {
		t.Fatalf("a heart removed while asked reported stuck: %v", stuck)
	}
}

// TestWatchdogSlowAnswerKeepsPinging: a loop that answers late once in a
// while (busy for less than the interval between its selects) is not
// taken for stuck.
func TestWatchdogSlowAnswerKeepsPinging(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &Agent{Log: slog.New(slog.DiscardHandler), hearts: &supervisor{}}
	h, stop := a.hearts.add("slow")
	defer stop()
	go func() {
		for ctx.Err() == nil {
			time.Sleep(25 * time.Millisecond) // work outside the loop
			select {
			case <-h.beat():
			case <-time.After(time.Millisecond):
			}
		}
	}()
	var pings atomic.Int32
	go a.superviseHearts(ctx, 80*time.Millisecond, func() { pings.Add(1) })
	time.Sleep(100 * time.Millisecond)
	before := pings.Load()
	time.Sleep(400 * time.Millisecond)
	// Rounds every 40 ms: about 10 in 400 ms; a miss now and then is fine,
	// a stop is not.
	if n := pings.Load() - before; n < 7 {
		t.Fatalf("%d pings in 400 ms with a goroutine that answers every 25 ms", n)
	}
}

// TestWatchdogPings: the supervisor pings while all answer and stops
// pinging once one is stuck.
func TestWatchdogPings(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := &Agent{Log: slog.New(slog.DiscardHandler), hearts: &supervisor{}}
	h, stop := a.hearts.add("worker")
	defer stop()
	block := make(chan struct{})
	go loop(ctx, h, block)
	var pings atomic.Int32
	go a.superviseHearts(ctx, 40*time.Millisecond, func() { pings.Add(1) })
	time.Sleep(300 * time.Millisecond)
	if n := pings.Load(); n < 3 {
		t.Fatalf("%d pings in 300 ms at a 40 ms interval while every goroutine answers", n)
	}
	close(block)
	time.Sleep(100 * time.Millisecond)
	before := pings.Load()
	time.Sleep(300 * time.Millisecond)
	if after := pings.Load(); after != before {
		t.Fatalf("pinged %d times with a goroutine stuck", after-before)
	}
}

// TestWatchdogNilHeart: code paths outside a tracked goroutine (one-shot
// modes) work with no heart.
func TestWatchdogNilHeart(t *testing.T) {
	h := heartOf(context.Background())
	if h != nil || h.beat() != nil {
		t.Fatal("no heart expected")
	}
	h.busy(time.Second)()
	var s *supervisor
	ctx, stop := s.track(context.Background(), "x")
	stop()
	if heartOf(ctx) != nil {
		t.Fatal("a nil supervisor gave a heart")
	}
}
