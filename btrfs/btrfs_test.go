package btrfs_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
)

func mustSubvol(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := btrfs.IsSubvolume(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("IsSubvolume(%s) = %v, want %v", path, got, want)
	}
}

func TestSubvolumeLifecycle(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)

	src := filepath.Join(mnt, "src")
	if err := btrfs.Create(src); err != nil {
		t.Fatal(err)
	}
	mustSubvol(t, src, true)
	mustSubvol(t, mnt, true) // the top-level subvolume
	if err := os.WriteFile(filepath.Join(src, "file"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(src, "plain")
	os.Mkdir(plain, 0o755)
	mustSubvol(t, plain, false)
	mustSubvol(t, filepath.Join(src, "file"), false)
	mustSubvol(t, t.TempDir(), false) // not btrfs
	if _, err := btrfs.IsSubvolume(filepath.Join(mnt, "missing")); err == nil {
		t.Fatal("missing path accepted")
	}

	// Read-write snapshot: a copy-on-write copy that can be changed alone.
	rw := filepath.Join(mnt, "rw")
	if err := btrfs.Snapshot(src, rw, false); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(rw, "file")); err != nil || string(data) != "data" {
		t.Fatalf("snapshot content %q, %v", data, err)
	}
	os.WriteFile(filepath.Join(rw, "file"), []byte("changed"), 0o644)
	if data, _ := os.ReadFile(filepath.Join(src, "file")); string(data) != "data" {
		t.Fatalf("source changed through snapshot: %q", data)
	}
	if ro, err := btrfs.IsReadOnly(rw); err != nil || ro {
		t.Fatalf("rw snapshot read-only=%v, %v", ro, err)
	}

	// Read-only snapshot refuses writes until made writable.
	ro := filepath.Join(mnt, "ro")
	if err := btrfs.Snapshot(src, ro, true); err != nil {
		t.Fatal(err)
	}
	if isRO, err := btrfs.IsReadOnly(ro); err != nil || !isRO {
		t.Fatalf("ro snapshot read-only=%v, %v", isRO, err)
	}
	if err := os.WriteFile(filepath.Join(ro, "new"), nil, 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write into read-only snapshot: %v", err)
	}
	if err := btrfs.SetReadOnly(ro, false); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ro, "new"), nil, 0o644); err != nil {
		t.Fatalf("write after clearing read-only: %v", err)
	}
	if err := btrfs.SetReadOnly(ro, true); err != nil {
		t.Fatal(err)
	}

	// Delete: read-write, read-only.
	for _, p := range []string{rw, ro} {
		if err := btrfs.Delete(p); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Fatalf("%s still exists: %v", p, err)
		}
	}
}

func TestDeleteNested(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)
	top := filepath.Join(mnt, "top")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(btrfs.Create(top))
	must(os.MkdirAll(filepath.Join(top, "a", "b"), 0o755))
	must(btrfs.Create(filepath.Join(top, "a", "b", "inner")))
	must(btrfs.Create(filepath.Join(top, "a", "b", "inner", "innermost")))
	must(btrfs.Create(filepath.Join(top, "sibling")))
	must(btrfs.SetReadOnly(filepath.Join(top, "a", "b", "inner", "innermost"), true))
	must(btrfs.SetReadOnly(filepath.Join(top, "a", "b", "inner"), true))
	must(btrfs.SetReadOnly(top, true))

	must(btrfs.Delete(top))
	entries, _ := os.ReadDir(mnt)
	if len(entries) != 0 {
		t.Fatalf("left behind: %v", entries)
	}
}

func TestErrors(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)
	plain := filepath.Join(mnt, "plain")
	os.Mkdir(plain, 0o755)

	err := btrfs.Snapshot(plain, filepath.Join(mnt, "x"), false)
	if !errors.Is(err, btrfs.ErrNotSubvolume) || !strings.Contains(err.Error(), plain) || !strings.Contains(err.Error(), "snapshot") {
		t.Errorf("snapshot of a plain dir: %v", err)
	}
	err = btrfs.Delete(plain)
	if !errors.Is(err, btrfs.ErrNotSubvolume) || !strings.Contains(err.Error(), "delete "+plain) {
		t.Errorf("delete of a plain dir: %v", err)
	}
	sv := filepath.Join(mnt, "sv")
	if err := btrfs.Create(sv); err != nil {
		t.Fatal(err)
	}
	err = btrfs.Create(sv)
	if !errors.Is(err, syscall.EEXIST) || !strings.Contains(err.Error(), "create "+sv) {
		t.Errorf("create over existing: %v", err)
	}
	err = btrfs.Snapshot(sv, filepath.Join(mnt, "nodir", "x"), false)
	if !errors.Is(err, syscall.ENOENT) {
		t.Errorf("snapshot into missing dir: %v", err)
	}
	if _, err := btrfs.IsReadOnly(t.TempDir()); !errors.Is(err, btrfs.ErrNotSubvolume) {
		t.Errorf("IsReadOnly on non-btrfs: %v", err)
	}
	long := filepath.Join(mnt, strings.Repeat("n", 4100))
	if err := btrfs.Create(long); !errors.Is(err, syscall.ENAMETOOLONG) {
		t.Errorf("long name: %v", err)
	}
}

// TestSymlinkIsNoSubvolume: a symlink to a subvolume is not one, and
// Delete through it fails without touching the target.
func TestSymlinkIsNoSubvolume(t *testing.T) {
	mnt := btrfstest.Mount(t, 256<<20)
	img := filepath.Join(mnt, "img")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.SetReadOnly(img, true); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(mnt, "link")
	os.Symlink("img", link)
	mustSubvol(t, link, false)
	if err := btrfs.Delete(link); !errors.Is(err, btrfs.ErrNotSubvolume) {
		t.Errorf("Delete through a symlink: %v", err)
	}
	if ro, err := btrfs.IsReadOnly(img); err != nil || !ro {
		t.Errorf("target changed: read-only %v, %v", ro, err)
	}
	mustSubvol(t, img, true)
}
