// Package btrfstest makes real, loop-mounted btrfs file systems for tests.
package btrfstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Require stops the test when a prerequisite is missing: it fails under
// CI=true, where a skipped test would prove nothing, and skips otherwise.
func Require(tb testing.TB, ok bool, why string) {
	tb.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		tb.Fatalf("prerequisite missing under CI: %s", why)
	}
	tb.Skipf("skipping: %s", why)
}

// Mount creates a sparse image of the given size (bytes) in a temporary
// directory, formats it with mkfs.btrfs, loop-mounts it and returns the mount
// point. The file system is unmounted (and its loop device released) when
// the test ends.
func Mount(tb testing.TB, size int64) string {
	tb.Helper()
	return MountOptions(tb, size, "loop")
}

// MountOptions is Mount with mount options (e.g. "loop,user_subvol_rm_allowed").
func MountOptions(tb testing.TB, size int64, options string) string {
	tb.Helper()
	Require(tb, os.Geteuid() == 0, "needs root to mount a loop device")
	_, err := exec.LookPath("mkfs.btrfs")
	Require(tb, err == nil, "mkfs.btrfs not found (apt-get install btrfs-progs)")
	_, err = os.Stat("/dev/loop-control")
	Require(tb, err == nil, "no /dev/loop-control")

	dir := tb.TempDir()
	img := filepath.Join(dir, "btrfs.img")
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		tb.Fatal(err)
	}
	f, err := os.Create(img)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		tb.Fatal(err)
	}
	f.Close()
	if out, err := exec.Command("mkfs.btrfs", "-q", "-f", img).CombinedOutput(); err != nil {
		tb.Fatalf("mkfs.btrfs: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", options, img, mnt).CombinedOutput(); err != nil {
		Require(tb, false, "cannot loop-mount btrfs: "+string(out))
	}
	// Registered after TempDir's cleanup, so it runs first.
	tb.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			tb.Errorf("umount %s: %v\n%s", mnt, err, out)
			exec.Command("umount", "-l", mnt).Run()
		}
	})
	return mnt
}
