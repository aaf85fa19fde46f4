package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// removeOwned removes path only if it lies strictly inside root once its
// parent's symlinks are resolved: the agent never removes what it does
// not own.
func removeOwned(root, path string) error {
	r, err := filepath.EvalSymlinks(root)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(filepath.Clean(path)))
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return err
	}
	p := filepath.Join(parent, filepath.Base(path))
	if rel, err := filepath.Rel(r, p); err != nil || rel == "." || rel == ".." || strings.HasPrefix(rel, "../") {
		return fmt.Errorf("refusing to remove %s: not inside %s", path, root)
	}
	return os.RemoveAll(p)
}
