package journal

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Sender POSTs sendable entries: network errors, redirects, 429 and 5xx
// are retried with capped jittered backoff until the TTL (counted from
// the entry's settling) passes, then the entry goes to failed/; other 4xx
// go to failed/ at once; a 2xx removes the entry.
type Sender struct {
	Client *http.Client // its CheckRedirect is ignored: redirects are never followed
	TTL    time.Duration
	Failed string // failed/ directory
	Log    *slog.Logger
	// UserAgent is the POSTs' User-Agent; "" leaves Go's.
	UserAgent string
	// Min and Max bound the retry backoff.
	Min, Max time.Duration
	// AbortForm, if set, rewrites an interrupt request as abort, for
	// controllers that answer 400 to "interrupt".
	AbortForm func(dst io.Writer, src io.Reader) error
	// Delivered, if set, is called after a 2xx and before the entry is
	// removed (crash points use it); UploadDelivered likewise after an
	// upload's 2xx, before that is recorded.
	Delivered       func(*Entry)
	UploadDelivered func(*Entry)
	// Watchdog, if set, supervises the sending goroutines.
	Watchdog Watchdog
	// Finalize, if set, writes an entry's body again from the worker's
	// kept result with notes (the agent's, then the failed uploads'): the
	// agent's result pipeline, for SendUploads.
	Finalize func(dst io.Writer, src io.ReadSeeker, e *Entry, notes string) error

	wg sync.WaitGroup
}

// Watchdog is the agent's supervisor of long-running goroutines, as the
// sender needs it: Track registers a goroutine (its context carries the
// registration; the func ends it), Beat is the channel its waits answer
// on, Cover marks a call bounded by bound as progress.
type Watchdog interface {
	Track(ctx context.Context, name string) (context.Context, func())
	Beat(ctx context.Context) <-chan struct{}
	Cover(ctx context.Context, bound time.Duration) func()
}

// Async sends in the background; done, if set, learns whether the entry
// left the journal.
func (s *Sender) Async(ctx context.Context, j *Journal, e *Entry, done func(bool)) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if s.Watchdog != nil {
			var untrack func()
			ctx, untrack = s.Watchdog.Track(ctx, "outbox "+e.ID)
			defer untrack()
		}
		ok := s.Send(ctx, j, e)
		if done != nil {
			done(ok)
		}
	}()
}

// Wait waits for background sends.
func (s *Sender) Wait() { s.wg.Wait() }

// Send POSTs the entry (its uploads first: SendUploads) until it is
// delivered, refused, expired or ctx ends (it then stays for the next
// start). It reports whether the entry left the journal.
func (s *Sender) Send(ctx context.Context, j *Journal, e *Entry) bool {
	if !s.SendUploads(ctx, j, e) {
		return false
	}
	abort := false
	for attempt := 0; ; attempt++ {
		uncover := s.cover(ctx)
		status, answer, err := s.post(ctx, j, e, abort)
		uncover()
		switch {
		case err == nil && status/100 == 2:
			if s.Delivered != nil {
				s.Delivered(e)
			}
			if err := j.Remove(e.ID); err != nil {
				s.Log.Error("removing delivered journal entry", "id", e.ID, "error", err)
			}
			s.Log.Log(context.Background(), logx.LevelNotice, "result delivered", "id", e.ID, "package", e.Package, "status", e.Status, "url", e.URL, "http", status)
			return true
		case err == nil && status == http.StatusBadRequest && e.Status == "interrupt" && !abort && s.AbortForm != nil:
			s.Log.Warn("controller refused interrupt, resending as abort", "id", e.ID, "answer", answer)
			abort = true
			continue
		case err == nil && status/100 == 4 && status != http.StatusTooManyRequests:
			s.fail(j, e, fmt.Sprintf("HTTP %d: %s", status, answer))
			return true
		}
		why := fmt.Sprintf("HTTP %d: %s", status, answer)
		if err != nil {
			why = err.Error()
		}
		settled := e.Settled
		if settled.IsZero() {
			settled = e.Created
		}
		if time.Since(settled) > s.TTL {
			s.fail(j, e, "result TTL passed; last error: "+why)
			return true
		}
		delay := Backoff(attempt, s.Min, s.Max)
		s.Log.Warn("result upload failed, retrying", "id", e.ID, "error", why, "retry-in", delay.Round(time.Millisecond))
		if !s.sleep(ctx, delay) {
			return false
		}
	}
}

// sleep waits d, answering the watchdog; false when ctx ends first.
func (s *Sender) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var beat <-chan struct{}
	if s.Watchdog != nil {
		beat = s.Watchdog.Beat(ctx)
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-beat:
		}
	}
}

// cover tells the watchdog that a POST (bounded by the HTTP client's
// timeout) is under way.
func (s *Sender) cover(ctx context.Context) func() {
	if s.Watchdog == nil {
		return func() {}
	}
	bound := s.Client.Timeout
	if bound <= 0 {
		bound = 10 * time.Minute
	}
	return s.Watchdog.Cover(ctx, bound+10*time.Second)
}

func (s *Sender) fail(j *Journal, e *Entry, why string) {
	if err := j.Fail(e, s.Failed, why); err != nil {
		s.Log.Error("moving result to failed/", "id", e.ID, "error", err)
	}
	s.Log.Error("result not delivered, kept in failed/", "id", e.ID, "package", e.Package, "why", why)
}

// post streams the body file (or its abort form) to the result URL.
func (s *Sender) post(ctx context.Context, j *Journal, e *Entry, abort bool) (int, string, error) {
	f, err := os.Open(j.BodyPath(e.ID))
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	var body io.Reader = f
	var size int64
	if abort {
		var b bytes.Buffer
		if err := s.AbortForm(&b, f); err != nil {
			return 0, "", err
		}
		body, size = &b, int64(b.Len())
	} else {
		fi, err := f.Stat()
		if err != nil {
			return 0, "", err
		}
		size = fi.Size()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.URL, body)
	if err != nil {
		return 0, "", err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "text/manifest")
	resp, err := s.do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	text := strings.TrimSpace(string(answer))
	if resp.StatusCode/100 == 3 {
		return 0, "", fmt.Errorf("HTTP %d redirect to %q: not followed", resp.StatusCode, resp.Header.Get("Location"))
	}
	return resp.StatusCode, text, nil
}

// do sends req with the agent's User-Agent and without following
// redirects: a redirect would turn the POST into a GET that "succeeds"; it
// is a failure instead, retried until the TTL.
func (s *Sender) do(req *http.Request) (*http.Response, error) {
	if s.UserAgent != "" {
		req.Header.Set("User-Agent", s.UserAgent)
	}
	client := *s.Client
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return client.Do(req)
}

// PostBytes POSTs a request from memory once, without redirects (when the
// journal cannot be written).
func (s *Sender) PostBytes(ctx context.Context, url string, body []byte) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "text/manifest")
	resp, err := s.do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// Backoff returns the n-th retry delay: growing from min, capped at max,
// with 0.5-1.5x jitter.
func Backoff(n int, min, max time.Duration) time.Duration {
	if min <= 0 {
		min = time.Second
	}
	if max < min {
		max = min
	}
	d := min * time.Duration((n+1)*(n+1))
	if d > max || d <= 0 || n > 1000 {
		d = max
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

// legacyResult is an entry of the first outbox format (results/*.json).
type legacyResult struct {
	URL       string    `json:"url"`
	Created   time.Time `json:"created"`
	Request   string    `json:"request"`
	Interrupt bool      `json:"interrupt"`
}

// ImportLegacy moves results left in the old outbox (dir/results/*.json)
// into j as sendable entries, so that an upgrade loses none.
func (j *Journal) ImportLegacy(dir string) (int, error) {
	old := filepath.Join(dir, "results")
	ents, err := os.ReadDir(old)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	var errs []error
	for _, de := range ents {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") {
			continue
		}
		p := filepath.Join(old, de.Name())
		data, err := os.ReadFile(p)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var lr legacyResult
		if err := json.Unmarshal(data, &lr); err != nil || lr.URL == "" {
			errs = append(errs, fmt.Errorf("%s: unreadable old outbox entry: %v", p, err))
			continue
		}
		status := "unknown"
		if lr.Interrupt {
			status = "interrupt"
		}
		e := &Entry{ID: id, URL: lr.URL, Created: lr.Created, Settled: lr.Created}
		if err := j.Receive(e, []byte(lr.Request)); err != nil {
			return n, err
		}
		if err := j.Settle(e, Sendable, status, "imported from the old outbox", nil); err != nil {
			return n, err
		}
		if err := os.Remove(p); err != nil {
			return n, err
		}
		n++
	}
	return n, errors.Join(errs...)
}
