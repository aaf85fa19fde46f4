package tftp

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestUploadsInFlight: an upload in progress is listed by name and its
// channel closes when it ends; with none in progress the channel is closed
// already, and downloads do not count.
func TestUploadsInFlight(t *testing.T) {
	e := startServer(t, nil)
	randomFile(t, filepath.Join(e.get, "big"), 1<<20)
	if names, idle := e.mapping.UploadsInFlight(); len(names) != 0 || !isDone(idle) {
		t.Fatalf("before any transfer: %v, idle %v", names, isDone(idle))
	}
	// A trickling download is not an upload.
	started := make(chan struct{})
	trickle(newRawPeer(t), e.addr, opRRQ, "big", 300*time.Millisecond, started)
	<-started
	if names, idle := e.mapping.UploadsInFlight(); len(names) != 0 || !isDone(idle) {
		t.Errorf("during a download: %v, idle %v", names, isDone(idle))
	}

	started = make(chan struct{})
	trickle(newRawPeer(t), e.addr, opWRQ, "upload.tar", 300*time.Millisecond, started)
	<-started
	names, idle := e.mapping.UploadsInFlight()
	if len(names) != 1 || names[0] != "upload.tar" || isDone(idle) {
		t.Fatalf("during an upload: %v, idle %v", names, isDone(idle))
	}
	// Refused and completed uploads come and go meanwhile; the trickle
	// is still in progress.
	if err := put(t, e, "result.manifest", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if isDone(idle) {
		t.Fatal("idle while the trickle goes on")
	}
	t0 := time.Now()
	go e.mapping.Close() // aborts the trickle
	select {
	case <-idle:
		t.Logf("idle %v after Close", time.Since(t0))
	case <-time.After(5 * time.Second):
		t.Fatal("not idle after the upload was aborted")
	}
	if names, idle := e.mapping.UploadsInFlight(); len(names) != 0 || !isDone(idle) {
		t.Errorf("after: %v, idle %v", names, isDone(idle))
	}
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// TestMaxSizes: a name listed in MaxSizes has its own cap, above or below
// MaxFileSize; other names keep MaxFileSize.
func TestMaxSizes(t *testing.T) {
	e := startServer(t, func(s *Server, m *Mapping) {
		m.MaxFileSize = 4096
		m.MaxSizes = map[string]int64{"upload.tar": 16384, "small": 100}
	})
	big := bytes.Repeat([]byte("a"), 10000)
	if err := put(t, e, "upload.tar", big); err != nil {
		t.Errorf("upload.tar within its own cap refused: %v", err)
	}
	if err := put(t, e, "/upload.tar", bytes.Repeat([]byte("a"), 20000)); err == nil {
		t.Error("upload.tar over its cap accepted")
	}
	if err := put(t, e, "result.manifest", big); err == nil {
		t.Error("result.manifest over MaxFileSize accepted")
	}
	if err := put(t, e, "small", bytes.Repeat([]byte("a"), 200)); err == nil {
		t.Error("small over its cap accepted")
	}
	// The client may hear of a refusal before the event is reported.
	refused := 0
	for deadline := time.Now().Add(2 * time.Second); refused != 3 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		refused = 0
		for _, ev := range e.eventsOf(TransferFailed) {
			if ev.Fault == FaultRefused && errors.Is(ev.Err, ErrTooLarge) {
				refused++
			}
		}
	}
	if refused != 3 {
		t.Errorf("%d refusals, want 3", refused)
	}
	if data, err := os.ReadFile(filepath.Join(e.put, "upload.tar")); err != nil || len(data) != len(big) {
		t.Errorf("upload.tar: %d bytes, %v", len(data), err)
	}
}

// TestUploadCompletedBeforeIdle: an upload that completes is reported
// (UploadCompleted) before it stops counting as in progress, so whoever
// waits for the uploads to finish finds it among the events (the agent's
// grace for upload.tar after the result). The event's handler is made slow
// to widen the window.
func TestUploadCompletedBeforeIdle(t *testing.T) {
	var e *testEnv
	e = startServer(t, func(s *Server, m *Mapping) {
		record := m.Notify
		m.Notify = func(ev Event) {
			if ev.Kind == UploadCompleted {
				time.Sleep(100 * time.Millisecond)
			}
			record(ev)
		}
	})
	done := make(chan error, 1)
	go func() { done <- put(t, e, "upload.tar", bytes.Repeat([]byte("u"), 1<<20)) }()
	var idle <-chan struct{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
		var names []string
		if names, idle = e.mapping.UploadsInFlight(); len(names) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the upload never showed as in progress")
		}
	}
	<-idle
	e.mu.Lock()
	completed := false
	for _, ev := range e.events {
		completed = completed || (ev.Kind == UploadCompleted && ev.Name == "upload.tar")
	}
	e.mu.Unlock()
	if !completed {
		t.Fatal("no longer in progress, but its UploadCompleted event was not out yet")
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
