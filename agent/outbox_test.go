package agent

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/manifest"
)

// issue gets a task (and its session) from the controller.
func issue(t *testing.T, srv *controllertest.Server) *manifest.TaskResponse {
	srv.QueueTask("hello", "x86_64-linux_test")
	resp, _, err := testClient(t, Controller{URL: srv.TaskURL()}).RequestTask(context.Background(), testRequest(t))
	if err != nil || resp == nil {
		t.Fatalf("no task: %v", err)
	}
	return resp
}

func testOutbox(t *testing.T) *Outbox {
	return &Outbox{Dir: t.TempDir(), TTL: time.Hour, Client: &http.Client{Timeout: 5 * time.Second},
		Log: testLog(t), Min: time.Millisecond, Max: 10 * time.Millisecond}
}

func persist(t *testing.T, o *Outbox, resp *manifest.TaskResponse, status string) string {
	rr, err := ResultRequestFor(resp, nil, "checksum", manifest.Result{Name: resp.Task.Name(), Version: resp.Task.Version(), Status: status})
	if err != nil {
		t.Fatal(err)
	}
	id, err := o.Persist(resp.ResultURL(), rr)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestOutboxDelivers(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	resp := issue(t, srv)
	var calls atomic.Int32
	srv.Fault = func(r *http.Request, n int) int {
		if r.URL.RawQuery == "build-result" && calls.Add(1) <= 2 {
			return []int{500, -1}[calls.Load()-1] // a 500, then a dropped connection
		}
		return 0
	}
	o := testOutbox(t)
	id := persist(t, o, resp, "success")
	if _, err := os.Stat(filepath.Join(o.Dir, "results", id+".json")); err != nil {
		t.Fatalf("not persisted before sending: %v", err)
	}
	if !o.Send(context.Background(), id) {
		t.Fatal("not sent")
	}
	if r := srv.Results(); len(r) != 1 || r[0].Request.Result.Status != "success" || r[0].Request.Session != resp.Session() {
		t.Fatalf("controller got %+v", r)
	}
	if ids, _ := o.Pending(); len(ids) != 0 {
		t.Errorf("still pending: %v", ids)
	}
}

func TestOutboxRefusedAndExpired(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	resp := issue(t, srv)
	o := testOutbox(t)
	// A result for another package: brep answers 400 -> failed/ at once.
	bad := *resp.Task
	bad.Fields = append(manifest.Fields(nil), resp.Task.Fields...)
	bad.Fields.Set("name", "other", manifest.TaskOrder)
	resp2 := *resp
	resp2.Task = &bad
	id := persist(t, o, &resp2, "success")
	if !o.Send(context.Background(), id) {
		t.Fatal("not finished")
	}
	why, _ := os.ReadFile(filepath.Join(o.Dir, "failed", id+".why"))
	if !strings.Contains(string(why), "400") {
		t.Errorf("failed/ reason %q", why)
	}
	// Always 503: retried until the TTL passes, then failed/.
	srv.Fault = func(r *http.Request, n int) int { return 503 }
	o.TTL = 50 * time.Millisecond
	id = persist(t, o, resp, "success")
	o.Send(context.Background(), id)
	if _, err := os.Stat(filepath.Join(o.Dir, "failed", id+".json")); err != nil {
		t.Errorf("expired result not in failed/: %v", err)
	}
}

func TestOutboxInterruptAsAbort(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.RefuseInterrupt = true
	resp := issue(t, srv)
	o := testOutbox(t)
	id := persist(t, o, resp, "interrupt")
	o.Send(context.Background(), id)
	if r := srv.Results(); len(r) != 1 || r[0].Request.Result.Status != "abort" {
		t.Fatalf("controller got %+v", r)
	}
}

func TestOutboxSurvivesRestart(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	resp := issue(t, srv)
	srv.Fault = func(*http.Request, int) int { return 500 }
	o := testOutbox(t)
	id := persist(t, o, resp, "error")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	if o.Send(ctx, id) {
		t.Fatal("sent despite 500s")
	}
	cancel()
	// A new agent finds it and delivers it.
	srv.Fault = nil
	o2 := &Outbox{Dir: o.Dir, TTL: time.Hour, Client: o.Client, Log: o.Log, Min: time.Millisecond, Max: time.Millisecond}
	ids, _ := o2.Pending()
	if len(ids) != 1 || ids[0] != id {
		t.Fatalf("pending %v", ids)
	}
	o2.Send(context.Background(), id)
	if r := srv.Results(); len(r) != 1 || r[0].Request.Result.Status != "error" {
		t.Fatalf("controller got %+v", r)
	}
}

func TestTruncateLogs(t *testing.T) {
	big := strings.Repeat("line of build output with ünïcode\n", 600000) // ~22 MB
	rr := manifest.ResultRequest{Session: "s", Result: manifest.Result{Name: "a", Version: "1", Status: "error",
		Operations: []manifest.OperationResult{{Operation: "update", Status: "error", Log: big}, {Operation: "test", Status: "success", Log: "short\n"}}}}
	limit := MaxResultRequest - 64<<10
	got := truncateLogs(rr, limit)
	var b bytes.Buffer
	if err := got.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	if b.Len() > limit || b.Len() < limit-200<<10 {
		t.Errorf("serialized %d bytes, limit %d", b.Len(), limit)
	}
	l := got.Result.Operations[0].Log
	if !strings.HasPrefix(l, "line of") || !strings.HasSuffix(l, "ünïcode\n") || !strings.Contains(l, "bytes of this log truncated") {
		t.Errorf("truncated log does not keep head, tail and marker")
	}
	if got.Result.Operations[1].Log != "short\n" {
		t.Errorf("short log changed")
	}
	if rr.Result.Operations[0].Log != big {
		t.Errorf("input modified")
	}
}
