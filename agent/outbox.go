package agent

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/manifest"
)

// MaxResultRequest is brep's default limit for a result request; bodies
// must stay strictly below it.
const MaxResultRequest = 15 << 20

// pendingResult is one result request waiting in the outbox.
type pendingResult struct {
	URL       string    `json:"url"`
	Created   time.Time `json:"created"`
	Request   string    `json:"request"`   // the serialized result request
	Interrupt bool      `json:"interrupt"` // resend as abort on a 400
	AbortForm string    `json:"abort,omitempty"`
}

// Outbox persists result requests before they are POSTed, and retries
// them: network errors, 429 and 5xx until the TTL (counted from
// persistence) passes, then failed/; other 4xx go to failed/ at once; 2xx
// deletes them.
type Outbox struct {
	Dir    string // state dir: results/ and failed/ below it
	TTL    time.Duration
	Client *http.Client
	Log    *slog.Logger
	// Backoff bounds: the first retry waits about Min, doubling up to Max,
	// each with 0.5-1.5x jitter.
	Min, Max time.Duration

	wg sync.WaitGroup
}

func (o *Outbox) results() string { return filepath.Join(o.Dir, "results") }
func (o *Outbox) failed() string  { return filepath.Join(o.Dir, "failed") }

// Persist writes the result request (fsync + rename) and returns its id.
func (o *Outbox) Persist(url string, rr manifest.ResultRequest) (string, error) {
	rr = truncateLogs(rr, MaxResultRequest-64<<10)
	var b bytes.Buffer
	if err := rr.Serialize(&b); err != nil {
		return "", err
	}
	p := pendingResult{URL: url, Created: time.Now().UTC(), Request: b.String(), Interrupt: rr.Result.Status == "interrupt"}
	if p.Interrupt {
		abort := rr
		abort.Result.Status = "abort"
		var ab bytes.Buffer
		if err := abort.Serialize(&ab); err != nil {
			return "", err
		}
		p.AbortForm = ab.String()
	}
	data, err := json.MarshalIndent(p, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(o.results(), 0o755); err != nil {
		return "", err
	}
	var rnd [4]byte
	crand.Read(rnd[:])
	id := time.Now().UTC().Format("20060102T150405.000000000") + "-" + hex.EncodeToString(rnd[:])
	return id, WriteFileAtomic(filepath.Join(o.results(), id+".json"), data, 0o644)
}

// Pending lists the ids in results/, oldest first.
func (o *Outbox) Pending() ([]string, error) {
	ents, err := os.ReadDir(o.results())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ids []string
	for _, e := range ents {
		if id, ok := strings.CutSuffix(e.Name(), ".json"); ok && !strings.HasPrefix(id, ".") {
			ids = append(ids, id)
		}
	}
	sort.Strings(ids)
	return ids, nil
}

// SendAsync sends the result in the background (see Send) and then calls
// done, if not nil, with whether it left the outbox.
func (o *Outbox) SendAsync(ctx context.Context, id string, done func(bool)) {
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		ok := o.Send(ctx, id)
		if done != nil {
			done(ok)
		}
	}()
}

// Wait waits for background sends.
func (o *Outbox) Wait() { o.wg.Wait() }

// Send POSTs the persisted result until it is delivered, refused, expired
// or ctx ends (then it stays in results/ for the next start). It reports
// whether the result left the outbox.
func (o *Outbox) Send(ctx context.Context, id string) bool {
	path := filepath.Join(o.results(), id+".json")
	data, err := os.ReadFile(path)
	if err != nil {
		o.Log.Error("reading persisted result", "id", id, "error", err)
		return false
	}
	var p pendingResult
	if err := json.Unmarshal(data, &p); err != nil {
		o.moveFailed(id, "unreadable outbox entry: "+err.Error())
		return true
	}
	body := p.Request
	for attempt := 0; ; attempt++ {
		status, answer, err := o.post(ctx, p.URL, body)
		switch {
		case err == nil && status/100 == 2:
			os.Remove(path)
			o.Log.Info("result delivered", "id", id, "url", p.URL, "status", status)
			return true
		case err == nil && status == http.StatusBadRequest && p.Interrupt && body != p.AbortForm:
			// Older controllers do not know "interrupt".
			o.Log.Warn("controller refused interrupt, resending as abort", "id", id, "answer", answer)
			body = p.AbortForm
			continue
		case err == nil && status != http.StatusTooManyRequests && status/100 == 4:
			o.moveFailed(id, fmt.Sprintf("HTTP %d: %s", status, answer))
			return true
		}
		why := fmt.Sprintf("HTTP %d: %s", status, answer)
		if err != nil {
			why = err.Error()
		}
		if time.Since(p.Created) > o.TTL {
			o.moveFailed(id, "result TTL passed; last error: "+why)
			return true
		}
		delay := backoff(attempt, o.Min, o.Max)
		o.Log.Warn("result upload failed, retrying", "id", id, "error", why, "retry-in", delay.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return false
		case <-time.After(delay):
		}
	}
}

// backoff returns the n-th retry delay: n² growth from min, capped at max,
// with 0.5-1.5x jitter.
func backoff(n int, min, max time.Duration) time.Duration {
	if min <= 0 {
		min = time.Second
	}
	if max < min {
		max = min
	}
	d := min * time.Duration((n+1)*(n+1))
	if d > max || d <= 0 {
		d = max
	}
	return time.Duration(float64(d) * (0.5 + rand.Float64()))
}

func (o *Outbox) post(ctx context.Context, url, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "text/manifest")
	resp, err := o.Client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(answer)), nil
}

func (o *Outbox) moveFailed(id, why string) {
	os.MkdirAll(o.failed(), 0o755)
	if err := os.Rename(filepath.Join(o.results(), id+".json"), filepath.Join(o.failed(), id+".json")); err != nil {
		o.Log.Error("moving result to failed/", "id", id, "error", err)
	}
	WriteFileAtomic(filepath.Join(o.failed(), id+".why"), []byte(why+"\n"), 0o644)
	o.Log.Error("result not delivered, kept in failed/", "id", id, "why", why)
}

// truncateLogs cuts the middle out of the longest logs (with a marker
// line) until the serialized request fits in limit bytes.
func truncateLogs(rr manifest.ResultRequest, limit int) manifest.ResultRequest {
	size := func() int {
		var b bytes.Buffer
		rr.Serialize(&b)
		return b.Len()
	}
	ops := append([]manifest.OperationResult(nil), rr.Result.Operations...)
	rr.Result.Operations = ops
	for over := size() - limit; over > 0; over = size() - limit {
		longest := 0
		for i := range ops {
			if len(ops[i].Log) > len(ops[longest].Log) {
				longest = i
			}
		}
		l := ops[longest].Log
		if len(l) < 1024 {
			break // nothing worth cutting: let the controller decide
		}
		cut := over + over/50 + 256 // serialization overhead of the wrapping
		if cut > len(l)-512 {
			cut = len(l) - 512
		}
		head := (len(l) - cut) / 2
		tail := len(l) - cut - head
		head = lineStart(l, head)
		tailStart := len(l) - tail
		for tailStart < len(l) && l[tailStart]&0xC0 == 0x80 {
			tailStart++ // not inside a UTF-8 sequence
		}
		marker := fmt.Sprintf("\n... [bbot-agent: %d bytes of this log truncated] ...\n", tailStart-head)
		ops[longest].Log = l[:head] + marker + l[tailStart:]
	}
	return rr
}

// lineStart backs i up to a line boundary when one is near, and never
// splits a UTF-8 sequence.
func lineStart(s string, i int) int {
	if j := strings.LastIndexByte(s[:i], '\n'); j >= 0 && i-j < 4096 {
		return j + 1
	}
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return i
}
