// Package controllertest is a strict stand-in for brep's build-task,
// build-result and upload handlers, for the agent's tests: it parses
// requests with the strict typed manifests (uploads as brep's
// mod-upload.cxx reads its multipart form), enforces brep's size limits,
// issues sessions and challenges, verifies signatures, and drops what brep
// would drop silently.
package controllertest

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/manifest"
)

// Result is a result the controller accepted.
type Result struct {
	Request  manifest.ResultRequest
	Received time.Time
	Machine  string // the task's machine
}

// Server is the test controller. Its zero value is not ready: use New.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	queue    []*manifest.Task
	forced   []*manifest.Task  // handed out whatever machines were offered
	issued   map[string]issued // session -> what was handed out
	sessions []string          // every session handed out, in order
	results  []Result
	uploads  []Upload
	resulted map[string]bool // sessions whose result was accepted
	requests []manifest.TaskRequest
	drops    []string
	errors   []string
	keys     map[string]*rsa.PublicKey // fingerprint -> key; nil = no auth

	// Fault, if set, may answer a request instead of the handler: it
	// returns an HTTP status to answer with (body "injected"), -1 to close
	// the connection, -2 to answer 200 with garbage, or 0 to go on.
	Fault func(r *http.Request, n int) int
	// RefuseInterrupt answers 400 to "interrupt" results, as older
	// controllers do.
	RefuseInterrupt bool
	// UploadTypes are the upload types configured (brep's upload-data):
	// each task response carries a <type>-upload-url for each.
	UploadTypes []string
	// UploadMaxSize is brep's upload-max-size (0: its default, 10 MiB):
	// a form of that size or more is answered 413.
	UploadMaxSize int64
	// UploadAnswer, if set, answers an upload that brep would accept
	// (status, message) instead of 200 "<type> upload is queued": a
	// handler refusing it (4xx) or failing (5xx).
	UploadAnswer func(u Upload) (int, string)

	count    int
	received chan struct{}
}

type issued struct {
	task      *manifest.Task
	challenge string
}

// Upload is an upload the controller took (brep's request.manifest
// values, and the archive).
type Upload struct {
	Type, Session, Instance string
	ArchiveName             string // the file part's name
	Archive                 []byte
	SHA256                  string
	Challenge               string
	Fields                  map[string]string // any other form fields
	Received                time.Time
	Status                  int // the answer
	Machine                 string
}

// New starts a test controller.
func New() *Server {
	s := &Server{issued: map[string]issued{}, resulted: map[string]bool{}, received: make(chan struct{}, 100)}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// TaskURL is the URL agents poll.
func (s *Server) TaskURL() string { return s.URL + "/?build-task" }

// RequireKey makes the controller authenticate agents with this key.
func (s *Server) RequireKey(pub *rsa.PublicKey) {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	sum := sha256.Sum256(der)
	s.mu.Lock()
	if s.keys == nil {
		s.keys = map[string]*rsa.PublicKey{}
	}
	s.keys[hex.EncodeToString(sum[:])] = pub
	s.mu.Unlock()
}

// Queue adds a task, handed to the first request offering its machine.
func (s *Server) Queue(task *manifest.Task) {
	s.mu.Lock()
	s.queue = append(s.queue, task)
	s.mu.Unlock()
}

// QueueTask queues a minimal task for package pkg on machine.
func (s *Server) QueueTask(pkg, machine string) { s.Queue(minimalTask(pkg, machine)) }

// QueueTaskWith queues a minimal task with more fields (auxiliary-machine-<env>,
// say), inserted before target as brep orders them.
func (s *Server) QueueTaskWith(pkg, machine string, fields ...manifest.NameValue) {
	t := minimalTask(pkg, machine)
	at := slices.IndexFunc(t.Fields, func(nv manifest.NameValue) bool { return nv.Name == "target" })
	t.Fields = slices.Insert(t.Fields, at, fields...)
	s.Queue(t)
}

// ForceTask queues a task handed to the next request whatever machines it
// offers (a misbehaving controller).
func (s *Server) ForceTask(pkg, machine string) {
	s.mu.Lock()
	s.forced = append(s.forced, minimalTask(pkg, machine))
	s.mu.Unlock()
}

func minimalTask(pkg, machine string) *manifest.Task {
	t, err := manifest.ParseTask(strings.NewReader(fmt.Sprintf(
		": 1\nname: %s\nversion: 1.0.0\nrepository-url: https://pkg.example.org/1/stable\nrepository-type: pkg\nmachine: %s\ntarget: x86_64-linux-gnu\n",
		pkg, machine)), "task")
	if err != nil {
		panic(err)
	}
	return t
}

// Results returns the accepted results.
func (s *Server) Results() []Result {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Result(nil), s.results...)
}

// Uploads returns the uploads taken (answered 2xx, or 4xx/5xx through
// UploadAnswer), in order.
func (s *Server) Uploads() []Upload {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Upload(nil), s.uploads...)
}

// Sessions returns every session handed out, in order.
func (s *Server) Sessions() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.sessions...)
}

// Requests returns the task requests received.
func (s *Server) Requests() []manifest.TaskRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]manifest.TaskRequest(nil), s.requests...)
}

// Drops returns why results were silently dropped (HTTP 200).
func (s *Server) Drops() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.drops...)
}

// Errors returns the protocol errors answered with 4xx.
func (s *Server) Errors() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.errors...)
}

// WaitResults waits until n results were accepted or d passed.
func (s *Server) WaitResults(n int, d time.Duration) []Result {
	deadline := time.After(d)
	for {
		if r := s.Results(); len(r) >= n {
			return r
		}
		select {
		case <-s.received:
		case <-deadline:
			return s.Results()
		}
	}
}

func (s *Server) fail(w http.ResponseWriter, status int, msg string) {
	s.mu.Lock()
	s.errors = append(s.errors, fmt.Sprintf("%d %s", status, msg))
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain;charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, msg+"\n")
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.count++
	n := s.count
	fault := s.Fault
	s.mu.Unlock()
	if fault != nil {
		switch st := fault(r, n); {
		case st == -1:
			if hj, ok := w.(http.Hijacker); ok {
				if c, _, err := hj.Hijack(); err == nil {
					c.Close()
					return
				}
			}
		case st == -2:
			w.Header().Set("Content-Type", "text/manifest;charset=utf-8")
			io.WriteString(w, "<html>this is not a manifest</html>\n")
			return
		case st > 0:
			http.Error(w, "injected", st)
			return
		}
	}
	if r.Method != http.MethodPost {
		s.fail(w, http.StatusBadRequest, "POST expected")
		return
	}
	switch q := r.URL.RawQuery; {
	case q == "build-task":
		s.buildTask(w, r)
	case q == "build-result":
		s.buildResult(w, r)
	case strings.HasPrefix(q, "upload="):
		s.upload(w, r, strings.TrimPrefix(q, "upload="))
	default:
		s.fail(w, http.StatusBadRequest, "unknown request "+r.URL.RawQuery)
	}
}

// readBody reads at most limit-1 bytes: brep wants bodies strictly below.
func readBody(r *http.Request, limit int64) ([]byte, bool) {
	data, _ := io.ReadAll(io.LimitReader(r.Body, limit))
	return data, int64(len(data)) < limit
}

func (s *Server) buildTask(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(r, 102400)
	if !ok {
		s.fail(w, http.StatusRequestEntityTooLarge, "payload too large")
		return
	}
	tr, err := manifest.ParseTaskRequest(bytes.NewReader(body), "task_request_manifest")
	if err != nil {
		s.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	if msg := interactiveError(tr); msg != "" {
		s.fail(w, http.StatusBadRequest, msg)
		return
	}
	s.mu.Lock()
	s.requests = append(s.requests, tr)
	auth := s.keys != nil
	s.mu.Unlock()
	if auth && tr.Fingerprint == "" {
		s.fail(w, http.StatusUnauthorized, "unauthorized")
		return
	}
	offered := map[string]bool{}
	for _, m := range tr.Machines {
		offered[m.Name] = true
	}
	s.mu.Lock()
	var task *manifest.Task
	if len(s.forced) > 0 {
		task, s.forced = s.forced[0], s.forced[1:]
	}
	for i, t := range s.queue {
		if task != nil {
			break
		}
		if offered[t.Machine()] {
			task = t
			s.queue = append(s.queue[:i], s.queue[i+1:]...)
			break
		}
	}
	var challenge string
	session := ""
	if task != nil {
		session = fmt.Sprintf("/%s/%s/x86_64-linux-gnu/test/default/%s/%s/%d",
			task.Name(), task.Version(), tr.ToolchainName, tr.ToolchainVersion, time.Now().UnixNano())
		if auth {
			var nonce [64]byte
			rand.Read(nonce[:])
			sum := sha256.Sum256(nonce[:])
			challenge = hex.EncodeToString(sum[:])
		}
		s.issued[session] = issued{task: task, challenge: challenge}
		s.sessions = append(s.sessions, session)
	}
	s.mu.Unlock()

	resp := manifest.TaskResponse{Fields: manifest.Fields{{Name: "session", Value: session}}}
	if task != nil {
		if challenge != "" {
			resp.Fields = append(resp.Fields, manifest.NameValue{Name: "challenge", Value: challenge})
		}
		resp.Fields = append(resp.Fields, manifest.NameValue{Name: "result-url", Value: s.URL + "/?build-result"})
		s.mu.Lock()
		for _, t := range s.UploadTypes {
			resp.Fields = append(resp.Fields, manifest.NameValue{Name: t + "-upload-url", Value: s.URL + "/?upload=" + t})
		}
		s.mu.Unlock()
		resp.Task = task
	}
	w.Header().Set("Content-Type", "text/manifest;charset=utf-8")
	resp.Serialize(w)
}

func (s *Server) drop(w http.ResponseWriter, why string) {
	s.recordDrop(why)
	w.WriteHeader(http.StatusOK) // brep answers "as if fine"
}

func (s *Server) recordDrop(why string) {
	s.mu.Lock()
	s.drops = append(s.drops, why)
	s.mu.Unlock()
}

func (s *Server) buildResult(w http.ResponseWriter, r *http.Request) {
	body, ok := readBody(r, 15<<20)
	if !ok {
		s.fail(w, http.StatusRequestEntityTooLarge, "payload too large")
		return
	}
	rr, err := manifest.ParseResultRequest(bytes.NewReader(body), "result_request_manifest")
	if err != nil {
		s.fail(w, http.StatusBadRequest, err.Error())
		return
	}
	s.mu.Lock()
	is, known := s.issued[rr.Session]
	refuseInterrupt := s.RefuseInterrupt
	s.mu.Unlock()
	switch {
	case !known:
		s.drop(w, "no package build for session "+rr.Session)
		return
	case rr.Result.Name != is.task.Name():
		s.fail(w, http.StatusBadRequest, "invalid session: package name mismatch")
		return
	case rr.Result.Version != is.task.Version():
		s.fail(w, http.StatusBadRequest, "invalid session: package version mismatch")
		return
	case rr.Result.Status == "interrupt" && refuseInterrupt:
		s.fail(w, http.StatusBadRequest, "result_request_manifest:1:1: error: invalid status 'interrupt'")
		return
	}
	if is.challenge != "" || rr.Challenge != "" {
		if why := s.verify(is.challenge, rr.Challenge); why != "" {
			s.drop(w, why)
			return
		}
	}
	s.mu.Lock()
	delete(s.issued, rr.Session) // a repeated POST is a silent drop
	s.resulted[rr.Session] = true
	s.results = append(s.results, Result{Request: rr, Received: time.Now(), Machine: is.task.Machine()})
	s.mu.Unlock()
	select {
	case s.received <- struct{}{}:
	default:
	}
	w.WriteHeader(http.StatusOK)
}

// verify checks the signed challenge as brep does (pkeyutl -verifyrecover
// with each known key); it returns why it failed, or "".
func (s *Server) verify(challenge, signature string) string {
	switch {
	case challenge == "" && signature != "":
		return "unexpected challenge"
	case challenge != "" && signature == "":
		return "challenge is expected"
	}
	sig, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(signature, "\n", ""))
	if err != nil {
		return "unable to verify challenge: " + err.Error()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, k := range s.keys {
		if rsa.VerifyPKCS1v15(k, crypto.Hash(0), []byte(challenge), sig) == nil {
			return ""
		}
	}
	return "challenge mismatched"
}
