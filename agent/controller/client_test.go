package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/manifest"
)

func testRequest(t *testing.T) manifest.TaskRequest {
	return manifest.TaskRequest{
		Agent: "test-agent", ToolchainName: "ci", ToolchainVersion: mustVersion(t, "0.17.0"),
		Machines: []manifest.MachineHeader{{ID: "id1", Name: "x86_64-linux_test", Summary: "test"}},
	}
}

// offerAll offers req to every controller.
func offerAll(req manifest.TaskRequest) func(Controller) (manifest.TaskRequest, bool) {
	return func(Controller) (manifest.TaskRequest, bool) { return req, true }
}

func testClient(t *testing.T, ctls ...Controller) *Client {
	return &Client{Controllers: ctls, HTTP: &http.Client{Timeout: 5 * time.Second}, Retries: 3,
		Log: testLog(t), Rand: rand.New(rand.NewPCG(1, 2)), Min: time.Millisecond, Max: 5 * time.Millisecond}
}

func TestClientFaults(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  func(n int) int
		wantOK bool
	}{
		{"500 then task", func(n int) int {
			if n <= 2 {
				return 500
			}
			return 0
		}, true},
		{"connection closed then task", func(n int) int {
			if n == 1 {
				return -1
			}
			return 0
		}, true},
		{"429 then task", func(n int) int {
			if n == 1 {
				return 429
			}
			return 0
		}, true},
		{"garbage", func(int) int { return -2 }, false},
		{"always 503", func(int) int { return 503 }, false},
		{"404", func(int) int { return 404 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := controllertest.New()
			defer srv.Close()
			srv.QueueTask("hello", "x86_64-linux_test")
			var calls atomic.Int32
			srv.Fault = func(r *http.Request, n int) int { calls.Add(1); return tc.fault(n) }
			c := testClient(t, Controller{URL: srv.TaskURL()})
			resp, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
			if err != nil {
				t.Fatal(err)
			}
			if got := resp != nil; got != tc.wantOK {
				t.Fatalf("task received: %v, want %v", got, tc.wantOK)
			}
			if tc.name == "404" && calls.Load() != 1 {
				t.Errorf("a 4xx was retried %d times", calls.Load())
			}
			if tc.name == "always 503" && calls.Load() != 4 {
				t.Errorf("503: %d attempts, want 1 + 3 retries", calls.Load())
			}
		})
	}
}

func TestClientPriorities(t *testing.T) {
	low, high := controllertest.New(), controllertest.New()
	defer low.Close()
	defer high.Close()
	low.QueueTask("low-task", "x86_64-linux_test")
	high.QueueTask("high-task", "x86_64-linux_test")
	c := testClient(t, Controller{URL: low.TaskURL(), Priority: 1}, Controller{URL: high.TaskURL(), Priority: 9})
	resp, ctl, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
	if err != nil || resp == nil || resp.Task.Name() != "high-task" || ctl.Priority != 9 {
		t.Fatalf("got %v from %v (%v)", resp, ctl, err)
	}
	// The high one is empty now: the low one's task comes next.
	resp, _, _ = c.RequestTask(context.Background(), offerAll(testRequest(t)))
	if resp == nil || resp.Task.Name() != "low-task" {
		t.Fatalf("second task %v", resp)
	}
	resp, _, _ = c.RequestTask(context.Background(), offerAll(testRequest(t)))
	if resp != nil {
		t.Fatalf("no task expected, got %v", resp.Task.Name())
	}
	if n := len(low.Requests()); n != 2 {
		t.Errorf("low controller asked %d times", n)
	}
}

func TestClientInterrupted(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.Fault = func(*http.Request, int) int { return 500 }
	c := testClient(t, Controller{URL: srv.TaskURL()})
	c.Min, c.Max = time.Hour, time.Hour
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, _, err := c.RequestTask(ctx, offerAll(testRequest(t)))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v", err)
	}
}

func TestResultRequestFor(t *testing.T) {
	resp := &manifest.TaskResponse{Fields: manifest.Fields{{Name: "session", Value: "s"}, {Name: "challenge", Value: "c"}}}
	if _, err := ResultRequestFor(resp, nil, "x", manifest.Result{}); err == nil || !strings.Contains(err.Error(), "auth-key") {
		t.Errorf("challenge without key: %v", err)
	}
}

// pollLog records which controller was asked, in order, across servers.
type pollLog struct {
	mu    sync.Mutex
	asked []string
}

func (l *pollLog) add(name string) {
	l.mu.Lock()
	l.asked = append(l.asked, name)
	l.mu.Unlock()
}

func (l *pollLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.asked, ",")
}

func (l *pollLog) count(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.asked {
		if a == name {
			n++
		}
	}
	return n
}

// pollServer is a controller named name whose n-th request is answered by
// fault (see controllertest.Server.Fault); hang makes every request block
// until the test ends.
func pollServer(t *testing.T, log *pollLog, name string, hang bool, fault func(n int) int) *controllertest.Server {
	srv := controllertest.New()
	t.Cleanup(srv.Close)
	done := make(chan struct{})
	t.Cleanup(func() { close(done) }) // runs before srv.Close
	srv.Fault = func(r *http.Request, n int) int {
		log.add(name)
		if hang {
			<-done
			return 500
		}
		if fault != nil {
			return fault(n)
		}
		return 0
	}
	return srv
}

// pollTimeout is the request timeout of the poll tests.
const pollTimeout = 300 * time.Millisecond

func pollClient(t *testing.T, ctls ...Controller) *Client {
	c := testClient(t, ctls...)
	c.HTTP.Timeout = pollTimeout
	c.Retries = 4
	return c
}

// A hung top-priority controller costs one request timeout, not
// timeout x (retries+1): the lower controller's task is taken in round 0.
func TestClientHungTopController(t *testing.T) {
	var log pollLog
	hung := pollServer(t, &log, "hung", true, nil)
	low := pollServer(t, &log, "low", false, nil)
	low.QueueTask("low-task", "x86_64-linux_test")
	c := pollClient(t, Controller{URL: hung.TaskURL(), Priority: 9}, Controller{URL: low.TaskURL(), Priority: 1})
	start := time.Now()
	resp, ctl, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
	elapsed := time.Since(start)
	if err != nil || resp == nil || resp.Task.Name() != "low-task" || ctl.Priority != 1 {
		t.Fatalf("got %v from %v (%v)", resp, ctl, err)
	}
	if got := log.String(); got != "hung,low" {
		t.Errorf("asked %s, want hung,low", got)
	}
	// One timeout plus slack; retrying the hung one would take 5 timeouts.
	if elapsed > 3*pollTimeout {
		t.Errorf("poll took %v, want about one request timeout (%v)", elapsed, pollTimeout)
	}
}

// A flaky controller is retried in later rounds, after the other failed
// ones of the round, in priority order, and its task comes back.
func TestClientFlakyRetried(t *testing.T) {
	flaky := func(n int) int {
		if n <= 2 {
			return 503
		}
		return 0
	}
	t.Run("alone", func(t *testing.T) {
		var log pollLog
		srv := pollServer(t, &log, "flaky", false, flaky)
		srv.QueueTask("hello", "x86_64-linux_test")
		c := pollClient(t, Controller{URL: srv.TaskURL()})
		resp, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
		if err != nil || resp == nil || resp.Task.Name() != "hello" {
			t.Fatalf("got %v (%v)", resp, err)
		}
		if got := log.String(); got != "flaky,flaky,flaky" {
			t.Errorf("asked %s", got)
		}
	})
	t.Run("by rounds", func(t *testing.T) {
		var log pollLog
		high := pollServer(t, &log, "high", false, flaky)
		high.QueueTask("high-task", "x86_64-linux_test")
		low := pollServer(t, &log, "low", false, func(int) int { return 503 })
		c := pollClient(t, Controller{URL: low.TaskURL(), Priority: 1}, Controller{URL: high.TaskURL(), Priority: 5})
		resp, ctl, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
		if err != nil || resp == nil || resp.Task.Name() != "high-task" || ctl.Priority != 5 {
			t.Fatalf("got %v from %v (%v)", resp, ctl, err)
		}
		// Retrying high first (the old way) would ask high,high,high.
		if got := log.String(); got != "high,low,high,low,high" {
			t.Errorf("asked %s, want high,low,high,low,high", got)
		}
	})
}

// 4xx and garbage are not retried in the poll; 503 is, Retries times.
func TestClientNotRetried(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault int
	}{{"400", 400}, {"garbage", -2}} {
		t.Run(tc.name, func(t *testing.T) {
			var log pollLog
			bad := pollServer(t, &log, "bad", false, func(int) int { return tc.fault })
			bad.QueueTask("hello", "x86_64-linux_test")
			busy := pollServer(t, &log, "busy", false, func(int) int { return 503 })
			c := pollClient(t, Controller{URL: bad.TaskURL(), Priority: 2}, Controller{URL: busy.TaskURL(), Priority: 1})
			resp, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
			if err != nil || resp != nil {
				t.Fatalf("got %v (%v)", resp, err)
			}
			if got := log.String(); got != "bad,busy,busy,busy,busy,busy" {
				t.Errorf("asked %s, want bad once, busy 1 + 4 times", got)
			}
		})
	}
}

// With every controller hung the poll still ends, within its bound of
// (controllers+1) timeouts + 2 x Max, not retries x controllers timeouts.
func TestClientPollBounded(t *testing.T) {
	var log pollLog
	a := pollServer(t, &log, "a", true, nil)
	b := pollServer(t, &log, "b", true, nil)
	c := pollClient(t, Controller{URL: a.TaskURL(), Priority: 2}, Controller{URL: b.TaskURL(), Priority: 1})
	bound := c.pollBound(2) // 3 x 300 ms + 10 ms
	start := time.Now()
	resp, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
	elapsed := time.Since(start)
	if err != nil || resp != nil {
		t.Fatalf("got %v (%v)", resp, err)
	}
	if log.count("a") < 1 || log.count("b") < 1 {
		t.Errorf("round 0 did not ask every controller: %s", log.String())
	}
	// The old per-controller retries took 2 x 5 x 300 ms = 3 s.
	if elapsed > bound+time.Second {
		t.Errorf("poll took %v, bound %v", elapsed, bound)
	}
}

// Cancelling ctx ends a poll at once, in a request or between rounds.
func TestClientPollCancel(t *testing.T) {
	t.Run("in a request", func(t *testing.T) {
		var log pollLog
		a := pollServer(t, &log, "a", true, nil)
		b := pollServer(t, &log, "b", true, nil)
		c := pollClient(t, Controller{URL: a.TaskURL()}, Controller{URL: b.TaskURL()})
		c.HTTP.Timeout = time.Hour
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, _, err := c.RequestTask(ctx, offerAll(testRequest(t)))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("cancelled poll took %v", d)
		}
		if got := log.String(); got != "a" && got != "b" {
			t.Errorf("asked %s after the cancel", got)
		}
	})
	t.Run("between rounds", func(t *testing.T) {
		var log pollLog
		srv := pollServer(t, &log, "busy", false, func(int) int { return 503 })
		c := pollClient(t, Controller{URL: srv.TaskURL()})
		c.Min, c.Max = time.Hour, time.Hour
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		start := time.Now()
		_, _, err := c.RequestTask(ctx, offerAll(testRequest(t)))
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("cancelled poll took %v", d)
		}
	})
}

// The offer is asked per controller, each time before it is asked; false
// skips the controller, and a skipped one is kept for the retry rounds.
func TestClientOffer(t *testing.T) {
	t.Run("per controller", func(t *testing.T) {
		var log pollLog
		high := pollServer(t, &log, "high", false, nil)
		high.QueueTask("high-task", "x86_64-linux_test")
		low := pollServer(t, &log, "low", false, nil)
		low.QueueTask("low-task", "x86_64-linux_other")
		c := pollClient(t, Controller{URL: high.TaskURL(), Priority: 100}, Controller{URL: low.TaskURL(), Priority: 1})
		var offered []string
		offer := func(ctl Controller) (manifest.TaskRequest, bool) {
			offered = append(offered, ctl.URL)
			if ctl.Priority == 100 {
				return manifest.TaskRequest{}, false // say, reserved
			}
			req := testRequest(t)
			req.Machines[0].Name = "x86_64-linux_other"
			return req, true
		}
		resp, ctl, err := c.RequestTask(context.Background(), offer)
		if err != nil || resp == nil || resp.Task.Name() != "low-task" || ctl.Priority != 1 {
			t.Fatalf("got %v from %v (%v)", resp, ctl, err)
		}
		if got := log.String(); got != "low" {
			t.Errorf("asked %s, want low only", got)
		}
		if len(offered) != 2 || offered[0] != high.TaskURL() || offered[1] != low.TaskURL() {
			t.Errorf("offers made for %v", offered)
		}
	})
	t.Run("each round", func(t *testing.T) {
		var log pollLog
		srv := pollServer(t, &log, "flaky", false, func(n int) int {
			if n == 1 {
				return 503
			}
			return 0
		})
		srv.QueueTask("hello", "x86_64-linux_test")
		c := pollClient(t, Controller{URL: srv.TaskURL()})
		calls := 0
		offer := func(Controller) (manifest.TaskRequest, bool) {
			calls++
			// Skipped in round 1, asked again in round 2.
			return testRequest(t), calls != 2
		}
		resp, _, err := c.RequestTask(context.Background(), offer)
		if err != nil || resp == nil || resp.Task.Name() != "hello" {
			t.Fatalf("got %v (%v)", resp, err)
		}
		if calls != 3 || log.String() != "flaky,flaky" {
			t.Errorf("%d offers, asked %s; want 3 offers, flaky,flaky", calls, log.String())
		}
	})
}

// bigRequest has n machines whose headers take about 250 bytes each.
func bigRequest(t *testing.T, n int) manifest.TaskRequest {
	req := testRequest(t)
	req.Machines = nil
	for i := range n {
		req.Machines = append(req.Machines, manifest.MachineHeader{ID: fmt.Sprintf("id%d", i),
			Name: fmt.Sprintf("x86_64-linux_m%d", i), Summary: strings.Repeat("a long summary ", 14)})
	}
	return req
}

// A request over brep's limit offers the machines in turns, all of them
// over a few polls, with one warning for the client's life.
func TestClientRequestLimit(t *testing.T) {
	srv := controllertest.New() // refuses a body of 100 KiB or more
	defer srv.Close()
	var logBuf syncBuffer
	c := testClient(t, Controller{URL: srv.TaskURL()})
	c.Log = slog.New(slog.NewTextHandler(&logBuf, nil))
	req := bigRequest(t, 2000)
	if b, _ := serialize(req); len(b) < 4*MaxTaskRequest {
		t.Fatalf("request of %d bytes is too small for the test", len(b))
	}
	const polls = 6
	for range polls {
		if resp, _, err := c.RequestTask(context.Background(), offerAll(req)); err != nil || resp != nil {
			t.Fatalf("got %v (%v)", resp, err)
		}
	}
	reqs := srv.Requests()
	if len(reqs) != polls {
		t.Fatalf("%d requests accepted, want %d; log:\n%s", len(reqs), polls, logBuf.String())
	}
	seen := map[string]bool{}
	for _, r := range reqs {
		b, _ := serialize(r)
		if len(b) >= MaxTaskRequest || len(r.Machines) == 0 {
			t.Errorf("request of %d bytes, %d machines", len(b), len(r.Machines))
		}
		for _, m := range r.Machines {
			seen[m.Name] = true
		}
	}
	if len(seen) != len(req.Machines) {
		t.Errorf("%d of %d machines offered over %d polls", len(seen), len(req.Machines), polls)
	}
	if n := strings.Count(logBuf.String(), "over brep's limit"); n != 1 {
		t.Errorf("%d warnings, want 1; log:\n%s", n, logBuf.String())
	}
}

// A request that does not fit even with one machine is an error, and
// nobody is asked.
func TestClientRequestTooBig(t *testing.T) {
	for _, n := range []int{1, 3} {
		srv := controllertest.New()
		defer srv.Close()
		c := testClient(t, Controller{URL: srv.TaskURL()})
		req := bigRequest(t, n)
		req.Machines[0].Summary = strings.Repeat("x", MaxTaskRequest)
		for i := range req.Machines {
			req.Machines[i].Summary = req.Machines[0].Summary
		}
		_, _, err := c.RequestTask(context.Background(), offerAll(req))
		if err == nil || !strings.Contains(err.Error(), "over brep's limit") || len(srv.Requests()) != 0 {
			t.Errorf("%d machines: got %v, %d requests", n, err, len(srv.Requests()))
		}
	}
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Task requests say who asks (controllers log it; brep's admins tell agent
// builds apart by it).
func TestClientUserAgent(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hello", "x86_64-linux_test")
	var mu sync.Mutex
	var agents []string
	srv.Fault = func(r *http.Request, n int) int {
		mu.Lock()
		defer mu.Unlock()
		agents = append(agents, r.UserAgent())
		if n == 1 {
			return 503 // the retry carries it too
		}
		return 0
	}
	c := testClient(t, Controller{URL: srv.TaskURL()})
	c.UserAgent = "bbot-agent/0.17.0 (0123456789ab)"
	resp, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t)))
	if err != nil || resp == nil {
		t.Fatalf("no task: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(agents) != 2 {
		t.Fatalf("%d requests", len(agents))
	}
	for _, ua := range agents {
		if ua != c.UserAgent {
			t.Errorf("User-Agent %q", ua)
		}
	}
}
