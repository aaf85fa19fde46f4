package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestRemoveOwnedTaskDirs: a toolchain name that escapes the TFTP root makes
// taskDirs.Remove fail rather than delete outside it.
func TestRemoveOwnedTaskDirs(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "tftp")
	victim := filepath.Join(base, "get")
	os.MkdirAll(root, 0o755)
	os.MkdirAll(victim, 0o755)
	plan := PlanSlot(&Options{TFTP: root, ToolchainName: "../..", ToolchainNum: 1}, 1)
	plan.TFTPBuildGet = filepath.Join(root, "..", "get") // as if the name escaped
	if err := newTaskDirs(root, plan).Remove(); err == nil {
		t.Error("escaping task dirs removed without error")
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("outside the TFTP root: %v", err)
	}
}
