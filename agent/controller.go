package agent

import (
	"bytes"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/manifest"
)

// MaxTaskRequest is brep's default limit for a task request body.
const MaxTaskRequest = 100 << 10

// Client asks controllers for tasks.
type Client struct {
	Controllers []Controller
	HTTP        *http.Client
	Retries     int // per controller, on network errors and 5xx
	Log         *slog.Logger
	Rand        *rand.Rand
	Min, Max    time.Duration // retry backoff bounds
}

// apiError is a failed exchange; retryable for network errors, 429, 5xx.
type apiError struct {
	err       error
	retryable bool
}

func (e *apiError) Error() string   { return e.err.Error() }
func (e *apiError) Unwrap() error   { return e.err }
func (e *apiError) Retryable() bool { return e.retryable }

// RequestTask offers the machines to the controllers, higher priority
// first, random among equals, and returns the first task found (nil, nil
// when nobody has work).
func (c *Client) RequestTask(ctx context.Context, req manifest.TaskRequest) (*manifest.TaskResponse, *Controller, error) {
	var b bytes.Buffer
	if err := req.Serialize(&b); err != nil {
		return nil, nil, err
	}
	if b.Len() >= MaxTaskRequest {
		return nil, nil, fmt.Errorf("task request is %d bytes, over brep's limit", b.Len())
	}
	body := b.Bytes()
	for _, ctl := range OrderControllers(c.Controllers, c.Rand) {
		resp, err := c.ask(ctx, ctl, body)
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if err != nil {
			c.Log.Warn("controller failed", "url", ctl.URL, "error", err)
			continue
		}
		if resp.Session() == "" {
			c.Log.Debug("no task", "url", ctl.URL)
			continue
		}
		return resp, &ctl, nil
	}
	return nil, nil, nil
}

// ask POSTs the request to one controller, retrying what is retryable.
func (c *Client) ask(ctx context.Context, ctl Controller, body []byte) (*manifest.TaskResponse, error) {
	var last error
	for attempt := 0; attempt <= c.Retries; attempt++ {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(journal.Backoff(attempt-1, c.Min, c.Max)):
			}
		}
		resp, err := c.post(ctx, ctl.URL, body)
		if err == nil {
			return resp, nil
		}
		last = err
		var ae *apiError
		if !errors.As(err, &ae) || !ae.Retryable() {
			return nil, err
		}
		c.Log.Debug("retrying controller", "url", ctl.URL, "attempt", attempt+1, "error", err)
	}
	return nil, last
}

func (c *Client) post(ctx context.Context, url string, body []byte) (*manifest.TaskResponse, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, &apiError{err, false}
	}
	req.Header.Set("Content-Type", "text/manifest")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, &apiError{err, true}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, &apiError{fmt.Errorf("reading answer: %w", err), true}
	}
	switch {
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode/100 == 5:
		return nil, &apiError{fmt.Errorf("HTTP %d: %s", resp.StatusCode, firstLine(data)), true}
	case resp.StatusCode/100 != 2:
		return nil, &apiError{fmt.Errorf("HTTP %d: %s", resp.StatusCode, firstLine(data)), false}
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return &manifest.TaskResponse{}, nil // be lenient: an empty body is no task
	}
	tr, err := manifest.ParseTaskResponse(bytes.NewReader(data), "task response from "+url)
	if err != nil {
		return nil, &apiError{err, false}
	}
	return tr, nil
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

// ResultRequest builds the result request for a task response: session
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
