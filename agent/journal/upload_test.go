package journal

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// uploadServer is a controller's upload and result endpoints: it checks
// each multipart upload as brep does (fields, file part, checksum) and
// answers per instance with answer (status, message).
type uploadServer struct {
	*httptest.Server
	t      testing.TB
	mu     sync.Mutex
	log    []string // "upload <instance>" / "result", in arrival order
	got    map[string][]byte
	form   map[string]map[string]string
	result []byte
	answer func(instance string, n int) int
	tries  map[string]int
	block  chan struct{} // if set, uploads of "hold" wait for it
}

func newUploadServer(t testing.TB, answer func(instance string, n int) int) *uploadServer {
	u := &uploadServer{t: t, got: map[string][]byte{}, form: map[string]map[string]string{}, answer: answer, tries: map[string]int{}}
	u.Server = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.Close)
	return u
}

func (u *uploadServer) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if int64(len(body)) != r.ContentLength {
		u.t.Errorf("body of %d bytes, Content-Length %d", len(body), r.ContentLength)
	}
	if r.URL.RawQuery == "build-result" {
		u.mu.Lock()
		u.log = append(u.log, "result")
		u.result = body
		u.mu.Unlock()
		return
	}
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" || r.URL.Query().Get("upload") != "bindist" {
		u.t.Errorf("upload: %s %v %s", mt, err, r.URL)
		http.Error(w, "bad", 400)
		return
	}
	fields := map[string]string{}
	var archive []byte
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			u.t.Errorf("multipart: %v", err)
			return
		}
		data, _ := io.ReadAll(p)
		if p.FormName() == "archive" {
			archive = data
			fields["archive"] = p.FileName()
			fields["archive-type"] = p.Header.Get("Content-Type")
		} else {
			fields[p.FormName()] = string(data)
		}
	}
	inst := fields["instance"]
	sum := sha256.Sum256(archive)
	if fields["sha256sum"] != hex.EncodeToString(sum[:]) {
		u.t.Errorf("%s: sha256sum %s of %d bytes", inst, fields["sha256sum"], len(archive))
	}
	u.mu.Lock()
	u.log = append(u.log, "upload "+inst)
	u.got[inst], u.form[inst] = archive, fields
	u.tries[inst]++
	n := u.tries[inst]
	block := u.block
	u.mu.Unlock()
	if inst == "hold" && block != nil {
		select {
		case <-block:
		case <-r.Context().Done():
			return
		}
	}
	status := u.answer(inst, n)
	w.Header().Set("Content-Type", "text/manifest;charset=utf-8")
	w.WriteHeader(status)
	fmt.Fprintf(w, ": 1\nstatus: %d\nmessage: answer for %s\nreference: ref-%s\n", status, inst, inst)
}

func (u *uploadServer) events() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.log)
}

// uploadEntry journals a sendable entry with one archive per instance
// (its content "archive of <instance>") and a kept result.
func uploadEntry(t testing.TB, j *Journal, url string, instances ...string) *Entry {
	t.Helper()
	e := &Entry{URL: url + "/?build-result", Session: "s1", Challenge: "c2lnbmF0dXJl\nd3JhcHBlZA==", Package: "p", PackageVersion: "1", Status: "interrupt"}
	if err := j.Receive(e, []byte("interrupt body")); err != nil {
		t.Fatal(err)
	}
	for k, inst := range instances {
		data := []byte("archive of " + inst)
		if err := os.WriteFile(j.UploadPath(e.ID, k), data, 0o600); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		e.Uploads = append(e.Uploads, Upload{Type: "bindist", Instance: inst, URL: url + "/?upload=bindist",
			File: e.ID + fmt.Sprintf(".up%d.tar", k), Name: inst + ".tar", Size: int64(len(data)), SHA256: hex.EncodeToString(sum[:]), State: UploadPending})
	}
	os.WriteFile(j.SourcePath(e.ID), []byte("the worker's result"), 0o600)
	e.Notes = "the agent's note"
	if err := j.Settle(e, Sendable, "success", "", func(w io.Writer) error {
		_, err := io.WriteString(w, "result body")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return e
}

// finalizeInto records what Finalize was asked and writes a body that
// shows it.
func finalizeInto(calls *[]string) func(io.Writer, io.ReadSeeker, *Entry, string) error {
	return func(w io.Writer, src io.ReadSeeker, e *Entry, notes string) error {
		data, _ := io.ReadAll(src)
		*calls = append(*calls, notes)
		_, err := fmt.Fprintf(w, "rewritten from %q with:\n%s", data, notes)
		return err
	}
}

// TestSendUploads: every upload is POSTed as brep takes it, before the
// result; one refused (413) and one retried after a 503 and then taken;
// the refusal becomes a note in the rewritten result; nothing is left.
func TestSendUploads(t *testing.T) {
	srv := newUploadServer(t, func(inst string, n int) int {
		switch {
		case inst == "fedora":
			return 413
		case inst == "retried" && n == 1:
			return 503
		}
		return 200
	})
	j, err := Open(Dir(t.TempDir(), 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	e := uploadEntry(t, j, srv.URL, "debian", "fedora", "retried")
	var calls []string
	s := &Sender{Client: srv.Client(), TTL: time.Hour, Failed: t.TempDir(), Log: testLog(), Min: time.Millisecond, Max: 10 * time.Millisecond, Finalize: finalizeInto(&calls)}
	if !s.Send(context.Background(), j, e) {
		t.Fatal("not sent")
	}
	if got := strings.Join(srv.events(), ", "); got != "upload debian, upload fedora, upload retried, upload retried, result" {
		t.Errorf("order: %s", got)
	}
	for _, inst := range []string{"debian", "fedora", "retried"} {
		f := srv.form[inst]
		if string(srv.got[inst]) != "archive of "+inst || f["session"] != "s1" || f["challenge"] != e.Challenge || f["archive"] != inst+".tar" || f["archive-type"] != "application/x-tar" {
			t.Errorf("%s: %q %v", inst, srv.got[inst], f)
		}
	}
	wantNote := "bindist upload of instance fedora (17 bytes) refused by the controller: 413 answer for fedora (reference ref-fedora)"
	if len(calls) != 1 || calls[0] != "the agent's note\n"+wantNote {
		t.Errorf("finalized with %q", calls)
	}
	if !strings.Contains(string(srv.result), wantNote) || !strings.Contains(string(srv.result), `rewritten from "the worker's result"`) {
		t.Errorf("result body %q", srv.result)
	}
	if ents, _ := os.ReadDir(j.Path()); len(ents) != 1 { // .lock
		t.Errorf("left %v", ents)
	}
}

// TestUploadWindow: uploads the controller keeps failing (503) are tried
// for min(TTL, MaxUploadTime) only; then each is a note and the result
// goes at once.
func TestUploadWindow(t *testing.T) {
	srv := newUploadServer(t, func(string, int) int { return 503 })
	j, _ := Open(Dir(t.TempDir(), 1))
	defer j.Close()
	e := uploadEntry(t, j, srv.URL, "debian")
	var calls []string
	s := &Sender{Client: srv.Client(), TTL: 300 * time.Millisecond, Failed: t.TempDir(), Log: testLog(), Min: 20 * time.Millisecond, Max: 50 * time.Millisecond, Finalize: finalizeInto(&calls)}
	t0 := time.Now()
	if !s.Send(context.Background(), j, e) {
		t.Fatal("not sent")
	}
	d := time.Since(e.Settled)
	t.Logf("result sent %v after settling (%v after Send)", d, time.Since(t0))
	if d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("result sent %v after settling, want just after 300ms", d)
	}
	if n := strings.Count(strings.Join(srv.events(), ","), "upload debian"); n < 2 {
		t.Errorf("%d tries", n)
	}
	if len(calls) != 1 || !strings.Contains(calls[0], "bindist upload of instance debian (17 bytes) not delivered within 300ms; last error: 503 answer for debian") {
		t.Errorf("finalized with %q", calls)
	}
	if ev := srv.events(); ev[len(ev)-1] != "result" {
		t.Errorf("events %v", ev)
	}
}

// TestUploadsResume: a stop in the middle of the uploads leaves the entry
// with what was sent recorded; the next start sends only the rest, then
// the result.
func TestUploadsResume(t *testing.T) {
	srv := newUploadServer(t, func(string, int) int { return 200 })
	srv.block = make(chan struct{})
	dir := Dir(t.TempDir(), 1)
	j, _ := Open(dir)
	e := uploadEntry(t, j, srv.URL, "debian", "hold", "fedora")
	var calls []string
	s := &Sender{Client: srv.Client(), TTL: time.Hour, Failed: t.TempDir(), Log: testLog(), Min: time.Millisecond, Max: 10 * time.Millisecond, Finalize: finalizeInto(&calls)}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for !slices.Contains(srv.events(), "upload hold") {
			time.Sleep(5 * time.Millisecond)
		}
		cancel()
	}()
	if s.Send(ctx, j, e) {
		t.Fatal("sent despite the stop")
	}
	j.Close()
	close(srv.block)

	j, err := Open(dir) // the next start
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	es, err := j.Entries()
	if err != nil || len(es) != 1 || es[0].Uploads[0].State != UploadSent || es[0].Uploads[1].State != UploadPending {
		t.Fatalf("entries %+v, %v", es, err)
	}
	if !s.Send(context.Background(), j, es[0]) {
		t.Fatal("not sent")
	}
	if got := strings.Join(srv.events(), ", "); got != "upload debian, upload hold, upload hold, upload fedora, result" {
		t.Errorf("order: %s", got)
	}
	if len(calls) != 0 || string(srv.result) != "result body" {
		t.Errorf("all uploads went, yet finalized with %q: %q", calls, srv.result)
	}
}

// TestUploadFiles: an entry's kept result and archives go with it
// (Remove, Adopt), and are swept when their entry is gone.
func TestUploadFiles(t *testing.T) {
	state := t.TempDir()
	j, _ := Open(Dir(state, 1))
	e := uploadEntry(t, j, "http://x", "a", "b")
	orphan := uploadEntry(t, j, "http://x", "c")
	os.Remove(j.metaPath(orphan.ID)) // as if removed just before a crash
	j.Close()
	j, _ = Open(Dir(state, 1))
	names := func(j *Journal) []string {
		ents, _ := os.ReadDir(j.Path())
		var n []string
		for _, de := range ents {
			n = append(n, strings.TrimPrefix(de.Name(), e.ID))
		}
		return n
	}
	if got := strings.Join(names(j), " "); got != ".lock .json .req .src .up0.tar .up1.tar" {
		t.Errorf("after the sweep: %s", got)
	}
	other, _ := Open(Dir(state, 2))
	if ids, err := other.Adopt(j); len(ids) != 1 || err != nil {
		t.Fatalf("Adopt: %v, %v", ids, err)
	}
	if got := strings.Join(names(other), " "); got != ".lock .json .req .src .up0.tar .up1.tar" {
		t.Errorf("adopted: %s", got)
	}
	if got := strings.Join(names(j), " "); got != ".lock" {
		t.Errorf("left behind: %s", got)
	}
	if err := other.Remove(e.ID); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(other), " "); got != ".lock" {
		t.Errorf("after Remove: %s", got)
	}
}
