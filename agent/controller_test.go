package agent

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/manifest"
)

func testRequest(t *testing.T) manifest.TaskRequest {
	return manifest.TaskRequest{
		Agent: "test-agent", ToolchainName: "ci", ToolchainVersion: mustVersion(t, Version),
		Machines: []manifest.MachineHeader{{ID: "id1", Name: "x86_64-linux_test", Summary: "test"}},
	}
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
			resp, _, err := c.RequestTask(context.Background(), testRequest(t))
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
	resp, ctl, err := c.RequestTask(context.Background(), testRequest(t))
	if err != nil || resp == nil || resp.Task.Name() != "high-task" || ctl.Priority != 9 {
		t.Fatalf("got %v from %v (%v)", resp, ctl, err)
	}
	// The high one is empty now: the low one's task comes next.
	resp, _, _ = c.RequestTask(context.Background(), testRequest(t))
	if resp == nil || resp.Task.Name() != "low-task" {
		t.Fatalf("second task %v", resp)
	}
	resp, _, _ = c.RequestTask(context.Background(), testRequest(t))
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
	_, _, err := c.RequestTask(ctx, testRequest(t))
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
