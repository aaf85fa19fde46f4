package controllertest_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/manifest"
)

// task asks srv for a task as an agent with key does, and returns the
// response.
func task(t *testing.T, srv *controllertest.Server, fingerprint string) *manifest.TaskResponse {
	t.Helper()
	srv.QueueTask("libhello", "m")
	req := manifest.TaskRequest{Agent: "a", ToolchainName: "default", ToolchainVersion: mustVersion(t, "0.17.0"), Fingerprint: fingerprint,
		Machines: []manifest.MachineHeader{{ID: "1", Name: "m", Summary: "s"}}}
	var b bytes.Buffer
	if err := req.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.TaskURL(), "text/manifest", &b)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	tr, err := manifest.ParseTaskResponse(resp.Body, "response")
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func mustVersion(t *testing.T, s string) manifest.StandardVersion {
	v, err := manifest.ParseStandardVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestUploadHandler: the agent's uploads (journal.Sender) as the strict
// controller takes them: the task response names each type's URL; the
// archive arrives byte for byte with its checksum and the signed
// challenge; an archive over upload-max-size is refused (413) and becomes
// a note; an upload after the result is dropped as brep drops it.
func TestUploadHandler(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	key, err := controller.LoadKey(filepath.Join("..", "..", "testdata", "conformance", "protocol", "test-agent-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv.RequireKey(&key.PublicKey)
	srv.UploadTypes = []string{"bindist"}
	srv.UploadMaxSize = 6000
	fp, _ := controller.Fingerprint(&key.PublicKey)
	resp := task(t, srv, fp)
	if u := resp.UploadURLs(); len(u) != 1 || u[0] != [2]string{"bindist", srv.URL + "/?upload=bindist"} {
		t.Fatalf("upload URLs %v", u)
	}
	sig, err := controller.SignChallenge(key, resp.Challenge())
	if err != nil {
		t.Fatal(err)
	}
	j, err := journal.Open(journal.Dir(t.TempDir(), 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	e := &journal.Entry{URL: resp.ResultURL(), Session: resp.Session(), Challenge: sig, Package: "libhello", PackageVersion: "1.0.0", Status: "interrupt"}
	if err := j.Receive(e, nil); err != nil {
		t.Fatal(err)
	}
	archives := map[string][]byte{"debian": bytes.Repeat([]byte("deb"), 1000), "big": bytes.Repeat([]byte("x"), 9000)}
	for k, inst := range []string{"debian", "big"} {
		os.WriteFile(j.UploadPath(e.ID, k), archives[inst], 0o600)
		sum := sha256.Sum256(archives[inst])
		e.Uploads = append(e.Uploads, journal.Upload{Type: "bindist", Instance: inst, URL: resp.UploadURLs()[0][1], File: filepath.Base(j.UploadPath(e.ID, k)),
			Name: inst + ".tar", Size: int64(len(archives[inst])), SHA256: hex.EncodeToString(sum[:]), State: journal.UploadPending})
	}
	os.WriteFile(j.SourcePath(e.ID), []byte("kept"), 0o600)
	body := "result request"
	var notes string
	j.Settle(e, journal.Sendable, "success", "", func(w io.Writer) error { _, err := io.WriteString(w, body); return err })
	s := &journal.Sender{Client: http.DefaultClient, TTL: time.Hour, Failed: t.TempDir(), Log: slog.New(slog.DiscardHandler), Min: time.Millisecond, Max: time.Millisecond,
		Finalize: func(w io.Writer, _ io.ReadSeeker, _ *journal.Entry, n string) error {
			notes = n
			// A real result request, so that the controller takes it.
			rr := manifest.ResultRequest{Session: e.Session, Challenge: sig, Result: manifest.Result{Name: "libhello", Version: "1.0.0", Status: "success"}}
			return rr.Serialize(w)
		}}
	if !s.SendUploads(context.Background(), j, e) {
		t.Fatal("uploads not settled")
	}
	ups := srv.Uploads()
	if len(ups) != 1 || ups[0].Instance != "debian" || !bytes.Equal(ups[0].Archive, archives["debian"]) || ups[0].ArchiveName != "debian.tar" ||
		ups[0].Session != e.Session || ups[0].Challenge != sig || ups[0].Status != 200 {
		t.Fatalf("uploads %+v; errors %v; drops %v; notes %q", ups, srv.Errors(), srv.Drops(), notes)
	}
	if !strings.Contains(notes, "bindist upload of instance big (9000 bytes) refused by the controller: 413 bindist upload size exceeds limit") {
		t.Errorf("notes %q", notes)
	}
	if d := srv.Drops(); len(d) != 0 {
		t.Errorf("drops %v", d)
	}
	// The result, then an upload for the same session: dropped, as brep
	// drops it (the build is no longer being built).
	if !s.Send(context.Background(), j, e) || len(srv.Results()) != 1 {
		t.Fatalf("result not taken: %v", srv.Errors())
	}
	late := upload(t, srv.URL+"/?upload=bindist", map[string]string{"session": e.Session, "instance": "late", "sha256sum": strings.Repeat("0", 64), "challenge": sig}, []byte("late"))
	if late != 200 || len(srv.Uploads()) != 1 || len(srv.Drops()) != 1 || !strings.Contains(srv.Drops()[0], "after its result") {
		t.Errorf("late upload: %d, uploads %d, drops %v", late, len(srv.Uploads()), srv.Drops())
	}
}

// TestUploadHandlerRefusals: brep's checks, in its order.
func TestUploadHandlerRefusals(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.UploadTypes = []string{"bindist"}
	resp := task(t, srv, "")
	sess := resp.Session()
	good := []byte("archive")
	sum := sha256.Sum256(good)
	hexSum := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name   string
		url    string
		fields map[string]string
		file   []byte
		status int
	}{
		{"unknown type", "/?upload=other", map[string]string{"session": sess, "instance": "i", "sha256sum": hexSum}, good, 404},
		{"no session", "/?upload=bindist", map[string]string{"instance": "i", "sha256sum": hexSum}, good, 400},
		{"no instance", "/?upload=bindist", map[string]string{"session": sess, "sha256sum": hexSum}, good, 400},
		{"no archive", "/?upload=bindist", map[string]string{"session": sess, "instance": "i", "sha256sum": hexSum}, nil, 400},
		{"short checksum", "/?upload=bindist", map[string]string{"session": sess, "instance": "i", "sha256sum": "abc"}, good, 400},
		{"checksum mismatch", "/?upload=bindist", map[string]string{"session": sess, "instance": "i", "sha256sum": strings.Repeat("0", 64)}, good, 422},
		{"control character", "/?upload=bindist", map[string]string{"session": sess, "instance": "i\x01", "sha256sum": hexSum}, good, 400},
		{"taken", "/?upload=bindist", map[string]string{"session": sess, "instance": "i", "sha256sum": hexSum}, good, 200},
	} {
		if got := upload(t, srv.URL+tc.url, tc.fields, tc.file); got != tc.status {
			t.Errorf("%s: %d, want %d", tc.name, got, tc.status)
		}
	}
	if n := len(srv.Uploads()); n != 1 {
		t.Errorf("%d uploads taken", n)
	}
}

// upload POSTs a form (file nil: no archive part) and returns the status.
func upload(t *testing.T, url string, fields map[string]string, file []byte) int {
	t.Helper()
	var b bytes.Buffer
	mw := multipart.NewWriter(&b)
	for n, v := range fields {
		mw.WriteField(n, v)
	}
	if file != nil {
		fw, _ := mw.CreateFormFile("archive", "dir/a.tar")
		fw.Write(file)
	}
	mw.Close()
	resp, err := http.Post(url, mw.FormDataContentType(), &b)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	m, err := manifest.NewParser(resp.Body, "answer").Next()
	if err != nil || m.Name != "" {
		t.Errorf("answer is not a manifest: %v", err)
	}
	return resp.StatusCode
}
