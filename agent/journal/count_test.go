package journal

import (
	"maps"
	"path/filepath"
	"testing"
)

// TestCounts: entries are counted by state while another holder has the
// journal open, and failed results once moved; missing directories have
// none.
func TestCounts(t *testing.T) {
	state := t.TempDir()
	if n, err := CountStates(Dir(state, 1)); err != nil || len(n) != 0 {
		t.Fatalf("missing journal: %v, %v", n, err)
	}
	failed := filepath.Join(state, "failed")
	if n, err := CountFailed(failed); err != nil || n != 0 {
		t.Fatalf("missing failed/: %d, %v", n, err)
	}
	j, err := Open(Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var es []*Entry
	for range 4 {
		e := &Entry{URL: "http://x/", Package: "p", Status: "interrupt"}
		if err := j.Receive(e, []byte("body")); err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	j.Settle(es[1], Held, "abort", "", nil)
	j.Settle(es[2], Sendable, "success", "", nil)
	if err := j.Fail(es[3], failed, "refused"); err != nil {
		t.Fatal(err)
	}
	n, err := CountStates(j.Path())
	if want := map[State]int{Received: 1, Held: 1, Sendable: 1}; err != nil || !maps.Equal(n, want) {
		t.Errorf("counts %v, %v; want %v", n, err, want)
	}
	if n, err := CountFailed(failed); err != nil || n != 1 {
		t.Errorf("failed: %d, %v; want 1", n, err)
	}
}
