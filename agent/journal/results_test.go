package journal

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// failOne journals an entry and moves it to failed/ with why.
func failOne(t *testing.T, state, why string) *Entry {
	t.Helper()
	j, err := Open(Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	e := &Entry{URL: "http://x/?build-result", Session: "s-" + why, Package: "p", PackageVersion: "1.0.0", Status: "abort",
		Uploads: []Upload{{Type: "bindist"}}}
	if err := j.Receive(e, []byte("body "+why)); err != nil {
		t.Fatal(err)
	}
	if err := j.Fail(e, FailedDir(state), why); err != nil {
		t.Fatal(err)
	}
	return e
}

// TestPurgeFailed: only results that failed longer than the TTL ago go,
// and only files named after entries; others in failed/ stay.
func TestPurgeFailed(t *testing.T) {
	state := t.TempDir()
	old, recent := failOne(t, state, "old"), failOne(t, state, "recent")
	failed := FailedDir(state)
	past := time.Now().Add(-48 * time.Hour)
	os.Chtimes(filepath.Join(failed, old.ID+".why"), past, past)
	os.WriteFile(filepath.Join(failed, "README"), []byte("the admin's\n"), 0o644)
	os.Chtimes(filepath.Join(failed, "README"), past, past)

	ids, err := PurgeFailed(failed, 24*time.Hour, time.Now())
	if err != nil || len(ids) != 1 || ids[0] != old.ID {
		t.Fatalf("purged %v, %v; want [%s]", ids, err, old.ID)
	}
	for _, suffix := range []string{".json", ".req", ".why"} {
		if _, err := os.Stat(filepath.Join(failed, old.ID+suffix)); err == nil {
			t.Errorf("%s%s left", old.ID, suffix)
		}
		if _, err := os.Stat(filepath.Join(failed, recent.ID+suffix)); err != nil {
			t.Errorf("the recent result lost %s: %v", suffix, err)
		}
	}
	if _, err := os.Stat(filepath.Join(failed, "README")); err != nil {
		t.Errorf("a file not named after an entry was removed: %v", err)
	}
	left, _ := ListFailed(failed)
	if len(left) != 1 || left[0].ID != recent.ID || left[0].Why != "recent" {
		t.Errorf("failed/ lists %+v", left)
	}
}

// TestResendQueue: Resend moves the result into the queue, sendable with
// a fresh TTL and no upload left to send; a second Resend is refused, as
// is an id failed/ does not hold.
func TestResendQueue(t *testing.T) {
	state := t.TempDir()
	e := failOne(t, state, "down")
	before := time.Now().UTC()
	got, err := Resend(FailedDir(state), ResendDir(state), e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != Sendable || got.Settled.Before(before) || len(got.Uploads) != 0 || got.Session != e.Session {
		t.Errorf("queued %+v", got)
	}
	q, err := ReadEntries(ResendDir(state))
	if err != nil || len(q) != 1 || q[0].ID != e.ID {
		t.Fatalf("queue %+v, %v", q, err)
	}
	if body, _ := os.ReadFile(filepath.Join(ResendDir(state), e.ID+".req")); string(body) != "body down" {
		t.Errorf("queued body %q", body)
	}
	if left, _ := ListFailed(FailedDir(state)); len(left) != 0 {
		t.Errorf("failed/ still lists %+v", left)
	}
	if _, err := Resend(FailedDir(state), ResendDir(state), e.ID); !errors.Is(err, ErrNotFailed) {
		t.Errorf("second Resend: %v", err)
	}
	// A crash after queueing, before failed/ was emptied: both hold it.
	e2 := failOne(t, state, "twice")
	os.Link(filepath.Join(FailedDir(state), e2.ID+".json"), filepath.Join(ResendDir(state), e2.ID+".json"))
	if _, err := Resend(FailedDir(state), ResendDir(state), e2.ID); !errors.Is(err, ErrQueued) {
		t.Errorf("Resend of a queued result: %v", err)
	}
}
