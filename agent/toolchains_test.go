package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestInstancesRunning: a held instance flock in a run directory means an
// agent runs; a lock file nobody holds does not.
func TestInstancesRunning(t *testing.T) {
	dir := t.TempDir()
	if InstancesRunning(dir) {
		t.Fatal("an empty run directory runs an agent")
	}
	path := filepath.Join(dir, "instance-3.lock")
	os.WriteFile(path, nil, 0o600)
	if InstancesRunning(dir) {
		t.Fatal("an unheld lock file counts as a running agent")
	}
	f, err := flockFile(path)
	if err != nil || f == nil {
		t.Fatalf("flock: %v", err)
	}
	defer f.Close()
	if !InstancesRunning(dir) {
		t.Error("a held instance lock does not count")
	}
}
