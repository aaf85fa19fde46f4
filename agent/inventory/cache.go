package inventory

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/manifest"
)

// scanCache spares an idle scan the reads: a manifest is parsed again only
// when its file changed, and a machine directory is listed for stale
// temporaries only when its entries changed. A change always shows in the
// identity (device, inode, size, modification and change times): a new
// snapshot is a new device, a rewritten file a new change time.
type scanCache struct {
	mu       sync.Mutex
	machines map[string]cached[manifest.Machine]
	boots    map[string]cached[manifest.BootstrappedMachine]
	clean    map[string]fileID // machine dirs with no temporaries of ours, as they were then
}

type cached[T any] struct {
	id fileID
	v  T
}

// fileID tells a file (or directory) state apart from any other.
type fileID struct {
	dev, ino     uint64
	size         int64
	mtime, ctime unix.Timespec
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, &fs.PathError{Op: "stat", Path: path, Err: err}
	}
	return fileID{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}, nil
}

// load returns the cached value for path while the file is unchanged, else
// reads it again (a file changing meanwhile is read again next time: its
// identity is taken before the read).
func load[T any](c *scanCache, m *map[string]cached[T], path string, read func(string) (T, error)) (T, error) {
	id, err := statID(path)
	if err != nil {
		var zero T
		return zero, err
	}
	c.mu.Lock()
	hit, ok := (*m)[path]
	c.mu.Unlock()
	if ok && hit.id == id {
		return hit.v, nil
	}
	v, err := read(path)
	if err != nil {
		return v, err
	}
	c.mu.Lock()
	if *m == nil {
		*m = map[string]cached[T]{}
	}
	(*m)[path] = cached[T]{id, v}
	c.mu.Unlock()
	return v, nil
}

func (c *scanCache) machine(path string) (manifest.Machine, error) {
	return load(c, &c.machines, path, readMachine)
}

func (c *scanCache) bootstrapped(path string) (manifest.BootstrappedMachine, error) {
	return load(c, &c.boots, path, readBootstrapped)
}

// removeTemporariesOnce is removeTemporaries, skipped while the directory
// is as it was when it last had none. The caller holds the machine's lock.
func (e *Enumerator) removeTemporariesOnce(dir, name string) error {
	c := &e.cache
	before, err := statID(dir)
	if err != nil {
		return err
	}
	c.mu.Lock()
	id, ok := c.clean[dir]
	c.mu.Unlock()
	if ok && id == before {
		return nil
	}
	if err := removeTemporaries(dir, name, e.ToolchainName, e.Log); err != nil {
		return err
	}
	after, err := statID(dir) // deleting changed it
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.clean == nil {
		c.clean = map[string]fileID{}
	}
	c.clean[dir] = after
	c.mu.Unlock()
	return nil
}

// resolveLink is filepath.EvalSymlinks for the machine link, which is
// relative to its directory (<machine>-1 -> <machine>-1.<R>) and then needs
// one readlink and one stat, where EvalSymlinks looks at every component
// of the path.
func resolveLink(link string) (string, error) {
	target, err := os.Readlink(link)
	if err != nil {
		return "", err
	}
	if filepath.IsAbs(target) || strings.ContainsRune(target, '/') {
		return filepath.EvalSymlinks(link)
	}
	p := filepath.Join(filepath.Dir(link), target)
	fi, err := os.Lstat(p)
	switch {
	case err != nil:
		return "", err
	case fi.Mode()&fs.ModeSymlink != 0:
		return filepath.EvalSymlinks(link) // a link to a link
	case !fi.IsDir():
		return "", errors.New(p + ": not a directory")
	}
	return p, nil
}
