package manifest

import (
	"os"
	"path/filepath"
	"testing"
)

// TestTaskInteractive: the typed task names its interactive breakpoint
// (brep's interactive CI sample), "" for a task without one.
func TestTaskInteractive(t *testing.T) {
	for name, want := range map[string]string{"task-response-ci-interactive.manifest": "error", "task-response.manifest": ""} {
		f, err := os.Open(filepath.Join(protocolDir, name))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := ParseTaskResponse(f, name)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.Task.Interactive(); got != want {
			t.Errorf("%s: interactive %q, want %q", name, got, want)
		}
	}
}
