package agent

import (
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// TestResend: a result the controller could not take within --result-ttl
// lands in failed/ with why; --resend (journal.Resend) queues it and the
// running agent delivers it to the strict controller, once, within a poll
// round. No VM: --fake-bootstrap and --fake-build.
func TestResend(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	var down atomic.Bool
	down.Store(true)
	srv.Fault = func(r *http.Request, n int) int {
		if r.URL.RawQuery == "build-result" && down.Load() {
			return 503
		}
		return 0
	}
	srv.QueueTask("lost", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.FakeBootstrap, e.opts.FakeBuild, e.opts.ResultTTL = true, true, time.Second
	e.start()

	failedDir := journal.FailedDir(e.opts.StateDir)
	var failed []journal.Failed
	for deadline := time.Now().Add(60 * time.Second); len(failed) == 0 && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		failed, _ = journal.ListFailed(failedDir)
	}
	if len(failed) != 1 || failed[0].Entry == nil || failed[0].Entry.Package != "lost" || failed[0].Why == "" {
		t.Fatalf("failed/ holds %+v, want the one result with why", failed)
	}
	if n := len(srv.Results()); n != 0 {
		t.Fatalf("the controller took %d results while down", n)
	}
	id := failed[0].ID
	if _, err := journal.Resend(failedDir, journal.ResendDir(e.opts.StateDir), "../"+id); err == nil {
		t.Error("Resend took a path for an id")
	}

	down.Store(false)
	if _, err := journal.Resend(failedDir, journal.ResendDir(e.opts.StateDir), id); err != nil {
		t.Fatal(err)
	}
	results := srv.WaitResults(1, 30*time.Second)
	time.Sleep(time.Second) // a duplicate would come now
	e.shutdown()
	results = srv.Results()
	if len(results) != 1 || results[0].Request.Session != failed[0].Entry.Session || results[0].Request.Result.Status != "abort" {
		t.Fatalf("controller results %+v, want the resent abort once", results)
	}
	if left, _ := journal.ListFailed(failedDir); len(left) != 0 {
		t.Errorf("failed/ still holds %+v", left)
	}
	if _, err := journal.Resend(failedDir, journal.ResendDir(e.opts.StateDir), id); err == nil {
		t.Error("a delivered result was resent again")
	}
	if ents, _ := os.ReadDir(journal.ResendDir(e.opts.StateDir)); len(ents) > 1 { // .lock
		t.Errorf("the resend queue holds %v", ents)
	}
	// The daemon recorded that its toolchain is in use (--toolchains).
	if seen, _ := inventory.LastSeen(e.opts.Machines); seen["e2e"].IsZero() {
		t.Errorf("toolchain use not recorded: %v", seen)
	}
	entries, _ := journal.ReadEntries(filepath.Join(e.opts.StateDir, "journal", "1"))
	if len(entries) != 0 {
		t.Errorf("journal entries left: %+v", entries)
	}
}
