package fsx

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRemoveOwned: the cleanup guard removes what is inside its root and
// refuses, removing nothing, the root itself, ".." escapes and paths whose
// parent is a symlink out of the root.
func TestRemoveOwned(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "tftp")
	outside := filepath.Join(base, "outside")
	for _, d := range []string{filepath.Join(root, "build", "tc", "get"), filepath.Join(outside, "victim")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	exists := func(p string) bool { _, err := os.Lstat(p); return err == nil }

	refused := []struct{ name, path string }{
		{"root itself", root},
		{"root with slash", root + "/"},
		{"root via dot", filepath.Join(root, "build") + "/.."},
		{"dot-dot", root + "/../outside"},
		{"dot-dot deep", root + "/build/../../outside/victim"},
		{"parent of root", base},
		{"symlinked parent", filepath.Join(root, "link", "victim")},
		{"sibling prefix", root + "-x"},
	}
	for _, tc := range refused {
		if err := RemoveOwned(root, tc.path); err == nil {
			t.Errorf("%s: %s removed", tc.name, tc.path)
		}
	}
	for _, p := range []string{root, filepath.Join(outside, "victim"), filepath.Join(root, "build", "tc", "get")} {
		if !exists(p) {
			t.Fatalf("%s was removed by a refused call", p)
		}
	}

	// Inside the root: removed; a symlink is removed, not its target.
	if err := RemoveOwned(root, filepath.Join(root, "build", "tc")); err != nil || exists(filepath.Join(root, "build", "tc")) {
		t.Errorf("inside root: %v", err)
	}
	if err := RemoveOwned(root, filepath.Join(root, "link")); err != nil || exists(filepath.Join(root, "link")) || !exists(filepath.Join(outside, "victim")) {
		t.Errorf("symlink inside root: %v", err)
	}
	// Already gone is not an error, as with os.RemoveAll.
	if err := RemoveOwned(root, filepath.Join(root, "none", "x")); err != nil {
		t.Errorf("missing path: %v", err)
	}
	// A relative root works like an absolute one.
	t.Chdir(base)
	os.MkdirAll(filepath.Join(root, "rel"), 0o755)
	if err := RemoveOwned("tftp", "tftp/rel"); err != nil || exists(filepath.Join(root, "rel")) {
		t.Errorf("relative: %v", err)
	}
	if err := RemoveOwned("tftp", "tftp/../outside"); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("relative dot-dot: %v", err)
	}
}
