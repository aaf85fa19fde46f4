package controller

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/manifest"
)

// MaxTaskRequest is brep's default limit for a task request body.
const MaxTaskRequest = 100 << 10

// Client asks controllers for tasks.
type Client struct {
	Controllers []Controller
	HTTP        *http.Client // its Timeout is the per-request timeout (--request-timeout)
	Retries     int          // retry rounds per poll, on network errors, 429 and 5xx
	Log         *slog.Logger
	Rand        *rand.Rand
	Min, Max    time.Duration // backoff bounds between retry rounds
	UserAgent   string        // the requests' User-Agent; "" leaves Go's

	// OnPoll, if set, learns each controller's answer to a task request:
	// "task", "none" or "error"; OnError, if set, why it failed (one of
	// ErrorKinds). They are called from RequestTask's goroutine (metrics).
	OnPoll  func(url, answer string)
	OnError func(url, kind string)

	// fitMu guards the rotation through the machines of requests over
	// brep's limit (see fit).
	fitMu     sync.Mutex
	fitOffset int
	fitWarned bool
}

// DefaultRequestTimeout bounds one request when the HTTP client has no
// Timeout of its own (bbot's --request-timeout default).
const DefaultRequestTimeout = 300 * time.Second

// ErrorKinds are the kinds of failed task requests OnError reports: no
// answer (connection refused, reset or closed), the request timeout (or
// the poll's bound), reading the answer, an HTTP status by class (a redirect the client did not follow is
// 3xx), an answer that is not a task response, a request that could not be
// made.
var ErrorKinds = []string{"connect", "timeout", "read", "http_3xx", "http_4xx", "http_5xx", "parse", "request"}

// apiError is a failed exchange; retryable for network errors, 429, 5xx.
// kind is one of ErrorKinds.
type apiError struct {
	err       error
	retryable bool
	kind      string
}

func (e *apiError) Error() string   { return e.err.Error() }
func (e *apiError) Unwrap() error   { return e.err }
func (e *apiError) Retryable() bool { return e.retryable }

// RequestTask asks the controllers for a task, higher priority first,
// random among equals, and returns the first task found (nil, nil, nil
// when nobody has work or every controller failed; failures are logged).
// An error is returned only for a bad request or when ctx ends.
//
// offer gives the request for a controller; it is called just before each
// time the controller is asked, so that it reflects the slots of that
// moment. Its false skips the controller this time (reserved by a running
// task of a higher priority, or nothing to offer it); a skipped controller
// that is in the retry set stays there. A request over brep's limit offers
// a rotating subset of its machines (see fit).
//
// A poll runs in rounds. Round 0 asks every controller once, in priority
// order; the first task ends the poll. Controllers that failed in a
// retryable way (network errors, timeouts, 429, 5xx) are collected; a
// non-retryable failure (another 4xx, an answer that is not a task
// response) is not retried in this poll. Only when round 0 brought no task
// are the collected controllers retried, still in priority order, for up
// to Retries more rounds with a backoff (journal.Backoff(round-1, Min,
// Max)) between rounds; a controller leaves the set once it answers.
//
// Tradeoff: a task from a lower-priority controller in round 0 is taken
// even if a higher-priority one failed and might have had work after a
// retry. A hung or failing top controller must not starve the farm: it now
// delays the others by at most one request timeout per poll, where retrying
// it first cost request timeout x (retries+1) (about 25 minutes by default).
//
// The whole poll is bounded by a deadline of (len(Controllers)+1) x T +
// 2 x Max, where T is HTTP.Timeout (DefaultRequestTimeout when unset): round
// 0 needs at most one T per controller, and the retry rounds together get
// one more T plus room for the backoffs. By default (T 300 s, Max 60 s) a
// poll of one hung controller ends after about 12 minutes whatever Retries
// is. A retry round whose backoff would pass the deadline is not started.
// Reaching the deadline ends the poll like "no task"; ctx ending ends it at
// once with ctx's error.
func (c *Client) RequestTask(ctx context.Context, offer func(Controller) (manifest.TaskRequest, bool)) (*manifest.TaskResponse, *Controller, error) {
	ctls := OrderControllers(c.Controllers, c.Rand)
	deadline := time.Now().Add(c.pollBound(len(ctls)))
	pctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	pending := ctls // asked in this round, in priority order
	for round := 0; len(pending) > 0 && round <= c.Retries; round++ {
		if round > 0 {
			d := journal.Backoff(round-1, c.Min, c.Max)
			if time.Until(deadline) <= d {
				c.Log.Warn("poll time bound reached, not retrying", "controllers", len(pending), "round", round)
				return nil, nil, nil
			}
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, nil, ctx.Err()
			case <-t.C:
			}
		}
		var failed []Controller
		for _, ctl := range pending {
			req, ok := offer(ctl)
			if !ok {
				c.Log.Debug("not asked", "url", ctl.URL, "round", round)
				if round > 0 { // still owes an answer
					failed = append(failed, ctl)
				}
				continue
			}
			body, err := c.fit(req)
			if err != nil {
				return nil, nil, err
			}
			resp, err := c.ask(pctx, ctl, body)
			if ctx.Err() != nil {
				return nil, nil, ctx.Err()
			}
			c.answered(ctl.URL, resp, err)
			if err != nil {
				if pctx.Err() != nil {
					c.Log.Warn("poll time bound reached", "url", ctl.URL, "round", round, "error", err)
					return nil, nil, nil
				}
				var ae *apiError
				retry := errors.As(err, &ae) && ae.Retryable()
				c.Log.Warn("controller failed", "url", ctl.URL, "round", round, "retryable", retry, "error", err)
				if retry {
					failed = append(failed, ctl)
				}
				continue
			}
			if resp.Session() == "" {
				c.Log.Debug("no task", "url", ctl.URL)
				continue
			}
			return resp, &ctl, nil
		}
		pending = failed
	}
	return nil, nil, nil
}

// answered reports one controller's answer to OnPoll and OnError.
func (c *Client) answered(url string, resp *manifest.TaskResponse, err error) {
	switch {
	case err != nil:
		if c.OnError != nil {
			kind := "timeout" // the poll's bound, which is a deadline
			var ae *apiError
			if errors.As(err, &ae) && ae.kind != "" {
				kind = ae.kind
			}
			c.OnError(url, kind)
		}
		if c.OnPoll != nil {
			c.OnPoll(url, "error")
		}
	case c.OnPoll == nil:
	case resp.Session() == "":
		c.OnPoll(url, "none")
	default:
		c.OnPoll(url, "task")
	}
}

// netKind tells a request timeout from a failure to connect.
func netKind(err error, otherwise string) string {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return otherwise
}

// fit serializes req below brep's limit. When the whole request is over
// it, a subset of its machines is offered: as many as fit, starting at a
// rotating offset that advances by the number offered, so that over
// successive requests every machine gets its turn. The subset's size is
// found by serializing (sizes grow with the count), not by estimating.
func (c *Client) fit(req manifest.TaskRequest) ([]byte, error) {
	body, err := serialize(req)
	if err != nil || len(body) < MaxTaskRequest {
		return body, err
	}
	n := len(req.Machines)
	c.fitMu.Lock()
	defer c.fitMu.Unlock()
	offset := 0
	if n > 0 {
		offset = c.fitOffset % n
	}
	subset := func(k int) manifest.TaskRequest {
		r := req
		r.Machines = make([]manifest.MachineHeader, k)
		for i := range k {
			r.Machines[i] = req.Machines[(offset+i)%n]
		}
		return r
	}
	// Binary search for the largest fitting count below n (n does not fit).
	fits, tooMany := 0, n
	var fitting []byte
	for tooMany-fits > 1 {
		k := (fits + tooMany) / 2
		b, err := serialize(subset(k))
		if err != nil {
			return nil, err
		}
		if len(b) < MaxTaskRequest {
			fits, fitting = k, b
		} else {
			tooMany = k
		}
	}
	if fits == 0 {
		if n > 1 {
			return nil, fmt.Errorf("task request is %d bytes, over brep's limit even with one of its %d machines", len(body), n)
		}
		return nil, fmt.Errorf("task request is %d bytes, over brep's limit", len(body))
	}
	c.fitOffset = (offset + fits) % n
	if !c.fitWarned {
		c.fitWarned = true
		c.Log.Warn("task request over brep's limit: offering the machines in turns", "offered", fits, "machines", n, "limit", MaxTaskRequest)
	}
	return fitting, nil
}

func serialize(req manifest.TaskRequest) ([]byte, error) {
	var b bytes.Buffer
	err := req.Serialize(&b)
	return b.Bytes(), err
}

// requestTimeout is the per-request timeout.
func (c *Client) requestTimeout() time.Duration {
	if c.HTTP != nil && c.HTTP.Timeout > 0 {
		return c.HTTP.Timeout
	}
	return DefaultRequestTimeout
}

// pollBound is the longest a poll of n controllers may take (see
// RequestTask).
// PollBound is the longest a RequestTask call takes (see RequestTask).
func (c *Client) PollBound() time.Duration { return c.pollBound(len(c.Controllers)) }

func (c *Client) pollBound(n int) time.Duration {
	// The largest backoff journal.Backoff gives before jitter.
	min, max := c.Min, c.Max
	if min <= 0 {
		min = time.Second
	}
	if max < min {
		max = min
	}
	return time.Duration(n+1)*c.requestTimeout() + 2*max
}

// ask POSTs the request to one controller once, within the request
// timeout.
func (c *Client) ask(ctx context.Context, ctl Controller, body []byte) (*manifest.TaskResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, c.requestTimeout())
	defer cancel()
	return c.post(ctx, ctl.URL, body)
}

func (c *Client) post(ctx context.Context, url string, body []byte) (*manifest.TaskResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, &apiError{err, false, "request"}
	}
	req.Header.Set("Content-Type", "text/manifest")
	if c.UserAgent != "" {
		req.Header.Set("User-Agent", c.UserAgent)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, &apiError{err, true, netKind(err, "connect")}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, &apiError{fmt.Errorf("reading answer: %w", err), true, netKind(err, "read")}
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5:
		return nil, &apiError{fmt.Errorf("HTTP %d: %s", resp.StatusCode, firstLine(data)), true, httpKind(resp.StatusCode)}
	case resp.StatusCode/100 != 2:
		return nil, &apiError{fmt.Errorf("HTTP %d: %s", resp.StatusCode, firstLine(data)), false, httpKind(resp.StatusCode)}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return &manifest.TaskResponse{}, nil // be lenient: an empty body is no task
	}
	tr, err := manifest.ParseTaskResponse(bytes.NewReader(data), "task response from "+url)
	if err != nil {
		return nil, &apiError{err, false, "parse"}
	}
	return tr, nil
}

// httpKind is an HTTP status's class as an error kind (a status outside
// 3xx..5xx, which no server should send, counts as 4xx).
func httpKind(status int) string {
	if c := status / 100; c >= 3 && c <= 5 {
		return "http_" + strconv.Itoa(c) + "xx"
	}
	return "http_4xx"
}

func firstLine(b []byte) string {
	s := strings.TrimSpace(string(b))
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}

// ResultRequestFor builds the result request for a task response: session
// echoed, challenge signed when one was issued, our agent checksum.
func ResultRequestFor(resp *manifest.TaskResponse, key *rsa.PrivateKey, agentChecksum string, res manifest.Result) (manifest.ResultRequest, error) {
	rr := manifest.ResultRequest{Session: resp.Session(), AgentChecksum: agentChecksum, Result: res}
	if ch := resp.Challenge(); ch != "" {
		if key == nil {
			return rr, errors.New("the controller sent a challenge but no --auth-key is set")
		}
		sig, err := SignChallenge(key, ch)
		if err != nil {
			return rr, err
		}
		rr.Challenge = sig
	}
	return rr, nil
}
