package controller

import (
	"context"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/build2/bbot-agent-go/agent/controllertest"
)

// reports records OnPoll and OnError calls as "url answer" and "url kind".
type reports struct {
	mu            sync.Mutex
	polls, errors []string
}

func (r *reports) install(c *Client) {
	c.OnPoll = func(url, answer string) { r.mu.Lock(); r.polls = append(r.polls, url+" "+answer); r.mu.Unlock() }
	c.OnError = func(url, kind string) { r.mu.Lock(); r.errors = append(r.errors, url+" "+kind); r.mu.Unlock() }
}

func (r *reports) get() (polls, errors []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.polls), slices.Clone(r.errors)
}

// TestClientReports: each answer is reported once, as task, none or error,
// and each failure with its kind.
func TestClientReports(t *testing.T) {
	for _, tc := range []struct {
		name       string
		fault      []int // the n-th request's fault (controllertest.Server.Fault)
		queue      bool
		polls      []string
		errorKinds []string
	}{
		{"task", nil, true, []string{"task"}, nil},
		{"none", nil, false, []string{"none"}, nil},
		{"5xx, closed, 429, then task", []int{503, -1, 429}, true, []string{"error", "error", "error", "task"},
			[]string{"http_5xx", "connect", "http_4xx"}},
		{"garbage", []int{-2}, true, []string{"error"}, []string{"parse"}},
		{"404", []int{404}, true, []string{"error"}, []string{"http_4xx"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := controllertest.New()
			defer srv.Close()
			if tc.queue {
				srv.QueueTask("hello", "x86_64-linux_test")
			}
			srv.Fault = func(_ *http.Request, n int) int {
				if n <= len(tc.fault) {
					return tc.fault[n-1]
				}
				return 0
			}
			c := testClient(t, Controller{URL: srv.TaskURL()})
			var r reports
			r.install(c)
			if _, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t))); err != nil {
				t.Fatal(err)
			}
			polls, errs := r.get()
			var wantPolls, wantErrs []string
			for _, p := range tc.polls {
				wantPolls = append(wantPolls, srv.TaskURL()+" "+p)
			}
			for _, k := range tc.errorKinds {
				wantErrs = append(wantErrs, srv.TaskURL()+" "+k)
			}
			if !slices.Equal(polls, wantPolls) || !slices.Equal(errs, wantErrs) {
				t.Errorf("polls %q, errors %q; want %q, %q", polls, errs, wantPolls, wantErrs)
			}
			for _, e := range errs {
				if k := e[strings.LastIndexByte(e, ' ')+1:]; !slices.Contains(ErrorKinds, k) {
					t.Errorf("kind %q is not in ErrorKinds", k)
				}
			}
		})
	}
}

// TestClientReportsTimeoutAndConnect: a hung controller is a timeout, a
// closed port a connect error.
func TestClientReportsTimeoutAndConnect(t *testing.T) {
	var log pollLog
	hung := pollServer(t, &log, "hung", true, nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String() + "/?build-task"
	l.Close()
	c := pollClient(t, Controller{URL: hung.TaskURL(), Priority: 2}, Controller{URL: closed, Priority: 1})
	c.Retries = 0
	var r reports
	r.install(c)
	if _, _, err := c.RequestTask(context.Background(), offerAll(testRequest(t))); err != nil {
		t.Fatal(err)
	}
	_, errs := r.get()
	want := []string{hung.TaskURL() + " timeout", closed + " connect"}
	if !slices.Equal(errs, want) {
		t.Errorf("errors %q, want %q", errs, want)
	}
}
