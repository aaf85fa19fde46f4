// Package fsx holds the file helpers the agent packages share: cleanup
// confined to a directory the agent owns, and atomic, durable writes.
package fsx

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// RemoveOwned is os.RemoveAll restricted to paths strictly inside root, a
// directory the agent owns (the TFTP root, a machine directory). The path is
// cleaned and its parent's symlinks resolved before the check, so neither
// ".." nor a symlinked directory can make a cleanup delete something outside
// root; root itself is refused too. A refused path is left untouched and
// reported as an error.
func RemoveOwned(root, path string) error {
	refuse := func(why string) error {
		return fmt.Errorf("refusing to remove %s: %s %s", path, why, root)
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return err
	}
	if !strictlyInside(absRoot, abs) {
		return refuse("not inside")
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if errors.Is(err, fs.ErrNotExist) {
		return nil // no parent, nothing to remove
	}
	if err != nil {
		return err
	}
	realRoot, err := filepath.EvalSymlinks(absRoot)
	if err != nil {
		return err
	}
	if !strictlyInside(realRoot, filepath.Join(parent, filepath.Base(abs))) {
		return refuse("resolves outside")
	}
	return os.RemoveAll(abs)
}

// strictlyInside reports whether the clean absolute path p is below root.
func strictlyInside(root, p string) bool {
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != "." && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator)) && !filepath.IsAbs(rel)
}
