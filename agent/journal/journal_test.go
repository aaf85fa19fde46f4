package journal

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func testLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestLifecycle(t *testing.T) {
	state := t.TempDir()
	j, err := Open(Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := Open(Dir(state, 1)); !errors.Is(err, ErrBusy) {
		t.Fatalf("second Open: %v, want ErrBusy", err)
	}
	e := &Entry{URL: "http://x/", Session: "s1", Package: "p", Status: "interrupt"}
	if err := j.Receive(e, []byte("interrupt body")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(j.BodyPath(e.ID))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("body: %v %v", fi, err)
	}
	if err := j.Settle(e, Held, "abort", "timeout", func(w io.Writer) error {
		_, err := io.WriteString(w, "abort body")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	es, err := j.Entries()
	if err != nil || len(es) != 1 || es[0].State != Held || es[0].Status != "abort" || es[0].Session != "s1" {
		t.Fatalf("entries %+v %v", es, err)
	}
	if b, _ := os.ReadFile(j.BodyPath(e.ID)); string(b) != "abort body" {
		t.Fatalf("body %q", b)
	}
	// A failed body write keeps the old body and state.
	if err := j.Settle(e, Sendable, "success", "", func(w io.Writer) error { return errors.New("disk full") }); err == nil {
		t.Fatal("Settle with a failing writer succeeded")
	}
	if b, _ := os.ReadFile(j.BodyPath(e.ID)); string(b) != "abort body" {
		t.Fatalf("body after failed settle %q", b)
	}
	if ents, _ := os.ReadDir(j.Path()); len(ents) != 3 { // .lock, .json, .req
		t.Fatalf("temp files left: %v", ents)
	}
	if err := j.Remove(e.ID); err != nil {
		t.Fatal(err)
	}
	if es, _ := j.Entries(); len(es) != 0 {
		t.Fatalf("entries after remove: %v", es)
	}
	j.Close()
	// Not held any more: recovery may open it.
	os.WriteFile(filepath.Join(Dir(state, 1), ".x.req.tmp123"), nil, 0o600)
	os.WriteFile(filepath.Join(Dir(state, 1), "orphan.req"), nil, 0o600)
	js, err := Orphans(state)
	if err != nil || len(js) != 1 {
		t.Fatalf("orphans %v %v", js, err)
	}
	defer js[0].Close()
	if ents, _ := os.ReadDir(js[0].Path()); len(ents) != 1 {
		t.Fatalf("sweep left %v", ents)
	}
}

// controller answers each POST with the next status in its list.
type controller struct {
	mu       sync.Mutex
	statuses []int
	bodies   []string
	methods  []string
	agents   []string // User-Agent headers
}

func (c *controller) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.bodies = append(c.bodies, string(b))
	c.methods = append(c.methods, r.Method)
	c.agents = append(c.agents, r.UserAgent())
	st := http.StatusOK
	if len(c.statuses) > 0 {
		st, c.statuses = c.statuses[0], c.statuses[1:]
	}
	if st/100 == 3 {
		http.Redirect(w, r, "/elsewhere", st)
		return
	}
	w.WriteHeader(st)
}

func sendOne(t *testing.T, statuses []int, status string, ttl time.Duration) (*controller, *Journal, *Entry, bool) {
	t.Helper()
	c := &controller{statuses: statuses}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	state := t.TempDir()
	j, err := Open(Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close() })
	e := &Entry{URL: srv.URL + "/?build-result", Status: status}
	if err := j.Receive(e, []byte("status: "+status+"\nconfigure-status: "+status+"\n")); err != nil {
		t.Fatal(err)
	}
	j.Settle(e, Sendable, status, "", nil)
	s := &Sender{Client: srv.Client(), TTL: ttl, Failed: filepath.Join(state, "failed"), Log: testLog(),
		UserAgent: testUserAgent, Min: time.Millisecond, Max: 5 * time.Millisecond,
		AbortForm: func(dst io.Writer, src io.Reader) error {
			b, _ := io.ReadAll(src)
			_, err := dst.Write(bytes.ReplaceAll(b, []byte("interrupt"), []byte("abort")))
			return err
		}}
	ok := s.Send(context.Background(), j, e)
	return c, j, e, ok
}

const testUserAgent = "bbot-agent/0.17.0 (0123456789ab)"

// Every POST, retries and the in-memory fallback too, says who sends it.
func TestSendUserAgent(t *testing.T) {
	c, _, _, ok := sendOne(t, []int{503, 200}, "success", time.Hour)
	if !ok {
		t.Fatal("not delivered")
	}
	srv := httptest.NewServer(c)
	defer srv.Close()
	s := &Sender{Client: srv.Client(), UserAgent: testUserAgent}
	if st, err := s.PostBytes(context.Background(), srv.URL, []byte("status: success\n")); err != nil || st != 200 {
		t.Fatalf("PostBytes: %d %v", st, err)
	}
	if len(c.agents) != 3 {
		t.Fatalf("%d posts", len(c.agents))
	}
	for _, ua := range c.agents {
		if ua != testUserAgent {
			t.Errorf("User-Agent %q", ua)
		}
	}
}

func TestSendDelivered(t *testing.T) {
	c, j, _, ok := sendOne(t, []int{503, 429, 200}, "success", time.Hour)
	if !ok || len(c.bodies) != 3 {
		t.Fatalf("ok %v, %d posts", ok, len(c.bodies))
	}
	if es, _ := j.Entries(); len(es) != 0 {
		t.Fatal("delivered entry kept")
	}
}

// A redirect is never followed as a GET and never counts as delivered.
func TestSendRedirectIsFailure(t *testing.T) {
	c, j, e, ok := sendOne(t, []int{302, 302, 302, 302, 302, 302}, "success", 20*time.Millisecond)
	for _, m := range c.methods {
		if m != http.MethodPost {
			t.Fatalf("redirect followed: %v", c.methods)
		}
	}
	if !ok {
		t.Fatal("expired entry not settled")
	}
	matches, _ := filepath.Glob(filepath.Join(filepath.Dir(filepath.Dir(j.Path())), "failed", e.ID+".*"))
	if len(matches) != 3 {
		t.Fatalf("failed/ holds %v", matches)
	}
}

func TestSendInterruptFallsBackToAbort(t *testing.T) {
	c, _, _, ok := sendOne(t, []int{400, 200}, "interrupt", time.Hour)
	if !ok || len(c.bodies) != 2 {
		t.Fatalf("ok %v, posts %q", ok, c.bodies)
	}
	if strings.Contains(c.bodies[1], "interrupt") || !strings.Contains(c.bodies[1], "configure-status: abort") {
		t.Fatalf("abort form %q", c.bodies[1])
	}
}

func TestSendRefused(t *testing.T) {
	c, j, e, ok := sendOne(t, []int{413}, "success", time.Hour)
	if !ok || len(c.bodies) != 1 {
		t.Fatalf("ok %v, %d posts", ok, len(c.bodies))
	}
	why, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(j.Path())), "failed", e.ID+".why"))
	if err != nil || !strings.Contains(string(why), "413") {
		t.Fatalf("why %q %v", why, err)
	}
}

func TestImportLegacy(t *testing.T) {
	state := t.TempDir()
	os.MkdirAll(filepath.Join(state, "results"), 0o755)
	os.WriteFile(filepath.Join(state, "results", "20260101T000000.000000000-abcd.json"),
		[]byte(`{"url":"http://x/","created":"2026-01-01T00:00:00Z","request":"session: s\n","interrupt":true}`), 0o644)
	j, err := Open(Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	n, err := j.ImportLegacy(state)
	if err != nil || n != 1 {
		t.Fatalf("imported %d, %v", n, err)
	}
	es, _ := j.Entries()
	if len(es) != 1 || es[0].State != Sendable || es[0].Status != "interrupt" || es[0].URL != "http://x/" {
		t.Fatalf("entries %+v", es)
	}
	if b, _ := os.ReadFile(j.BodyPath(es[0].ID)); string(b) != "session: s\n" {
		t.Fatalf("body %q", b)
	}
	if ents, _ := os.ReadDir(filepath.Join(state, "results")); len(ents) != 0 {
		t.Fatal("old entry kept after import")
	}
}

// TestAdopt: another instance's entries move whole into this journal; an
// interrupted move (body linked, entry not yet renamed) loses nothing.
func TestAdopt(t *testing.T) {
	state := t.TempDir()
	own, _ := Open(Dir(state, 1))
	defer own.Close()
	other, err := Open(Dir(state, 2))
	if err != nil {
		t.Fatal(err)
	}
	a := &Entry{URL: "http://x/", Session: "a", Status: "interrupt"}
	b := &Entry{URL: "http://x/", Session: "b", Status: "interrupt"}
	other.Receive(a, []byte("body a"))
	other.Receive(b, []byte("body b"))
	// A crash mid-move of b: its body is already linked here.
	os.Link(other.BodyPath(b.ID), own.BodyPath(b.ID))
	ids, err := own.Adopt(other)
	if err != nil || len(ids) != 2 || ids[0] != a.ID || ids[1] != b.ID {
		t.Fatalf("Adopt: %v, %v (want %s, %s)", ids, err, a.ID, b.ID)
	}
	left, _ := os.ReadDir(other.Path())
	for _, de := range left {
		if de.Name() != ".lock" {
			t.Errorf("left in the other journal: %s", de.Name())
		}
	}
	es, err := own.Entries()
	if err != nil || len(es) != 2 {
		t.Fatalf("entries: %v, %v", es, err)
	}
	for _, e := range es {
		body, err := os.ReadFile(own.BodyPath(e.ID))
		if err != nil || string(body) != "body "+e.Session {
			t.Errorf("%s: body %q, %v", e.Session, body, err)
		}
	}
	other.Close()
}
