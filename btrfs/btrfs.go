// Package btrfs manages btrfs subvolumes through the kernel's ioctls (no
// btrfs-progs at run time): create, snapshot, delete and the read-only flag.
package btrfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ioctl numbers and argument layouts are from linux/btrfs.h.
const (
	ioctlMagic = 0x94

	volNameMax   = 4087 // BTRFS_PATH_NAME_MAX
	subvolNameV2 = 4039 // BTRFS_SUBVOL_NAME_MAX

	subvolReadOnly = 1 << 1 // BTRFS_SUBVOL_RDONLY

	// firstFreeObjectID is the inode number of every subvolume's root.
	firstFreeObjectID = 256
)

// struct btrfs_ioctl_vol_args
type volArgs struct {
	fd   int64
	name [volNameMax + 1]byte
}

// struct btrfs_ioctl_vol_args_v2
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [subvolNameV2 + 1]byte
}

func iow(nr, size uintptr) uintptr { return 1<<30 | size<<16 | ioctlMagic<<8 | nr }
func ior(nr, size uintptr) uintptr { return 2<<30 | size<<16 | ioctlMagic<<8 | nr }

var (
	iocSnapDestroy   = iow(15, unsafe.Sizeof(volArgs{}))
	iocSubvolCreate  = iow(14, unsafe.Sizeof(volArgs{}))
	iocSnapCreateV2  = iow(23, unsafe.Sizeof(volArgsV2{}))
	iocSubvolGetflag = ior(25, 8)
	iocSubvolSetflag = iow(26, 8)
)

// Error records the operation and path that failed.
type Error struct {
	Op   string
	Path string
	Err  error
}

func (e *Error) Error() string { return "btrfs " + e.Op + " " + e.Path + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrNotSubvolume is returned for a path that is not a btrfs subvolume.
var ErrNotSubvolume = errors.New("not a btrfs subvolume")

func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

func openDir(path string) (int, error) {
	return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// IsSubvolume reports whether path is the root of a btrfs subvolume. A
// missing path is an error; anything else that is not a subvolume is false.
func IsSubvolume(path string) (bool, error) {
	// Lstat: a symlink is never a subvolume, whatever it points at (a
	// delete must never reach through one).
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return false, &Error{"stat", path, err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != firstFreeObjectID {
		return false, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return false, &Error{"statfs", path, err}
	}
	return fs.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// parentAndName opens path's parent directory and returns its fd and the
// last path element, checked to fit the ioctl's name field.
func parentAndName(op, path string, max int) (int, string, error) {
	path = filepath.Clean(path)
	name := filepath.Base(path)
	if name == "/" || name == "." || name == ".." {
		return -1, "", &Error{op, path, unix.EINVAL}
	}
	if len(name) > max {
		return -1, "", &Error{op, path, unix.ENAMETOOLONG}
	}
	fd, err := openDir(filepath.Dir(path))
	if err != nil {
		return -1, "", &Error{op, path, err}
	}
	return fd, name, nil
}

// Create creates an empty subvolume at path.
func Create(path string) error {
	dir, name, err := parentAndName("create", path, volNameMax)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	var args volArgs
	copy(args.name[:], name)
	if err := ioctl(dir, iocSubvolCreate, unsafe.Pointer(&args)); err != nil {
		return &Error{"create", path, err}
	}
	return nil
}

// Snapshot creates dst as a snapshot of the subvolume src, read-only if
// readOnly. Nested subvolumes of src are not included (btrfs semantics).
func Snapshot(src, dst string, readOnly bool) error {
	op := "snapshot " + src + " ->"
	if ok, err := IsSubvolume(src); err != nil {
		return err
	} else if !ok {
		return &Error{op, dst, ErrNotSubvolume}
	}
	srcFD, err := openDir(src)
	if err != nil {
		return &Error{op, dst, err}
	}
	defer unix.Close(srcFD)
	dir, name, err := parentAndName(op, dst, subvolNameV2)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	args := volArgsV2{fd: int64(srcFD)}
	if readOnly {
		args.flags = subvolReadOnly
	}
	copy(args.name[:], name)
	if err := ioctl(dir, iocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return &Error{op, dst, err}
	}
	return nil
}

// IsReadOnly reports whether the subvolume at path is read-only. For a
// plain directory on btrfs it reports the containing subvolume's flag.
func IsReadOnly(path string) (bool, error) {
	fd, err := openDir(path)
	if err != nil {
		return false, &Error{"get flags", path, err}
	}
	defer unix.Close(fd)
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflag, unsafe.Pointer(&flags)); err != nil {
		if err == unix.ENOTTY || err == unix.EINVAL {
			err = ErrNotSubvolume
		}
		return false, &Error{"get flags", path, err}
	}
	return flags&subvolReadOnly != 0, nil
}

// SetReadOnly sets or clears the subvolume's read-only flag.
func SetReadOnly(path string, readOnly bool) error {
	op := "set read-only"
	if !readOnly {
		op = "set read-write"
	}
	fd, err := openDir(path)
	if err != nil {
		return &Error{op, path, err}
	}
	defer unix.Close(fd)
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflag, unsafe.Pointer(&flags)); err != nil {
		if err == unix.ENOTTY || err == unix.EINVAL {
			err = ErrNotSubvolume
		}
		return &Error{op, path, err}
	}
	if readOnly {
		flags |= subvolReadOnly
	} else {
		flags &^= subvolReadOnly
	}
	if err := ioctl(fd, iocSubvolSetflag, unsafe.Pointer(&flags)); err != nil {
		return &Error{op, path, err}
	}
	return nil
}

// Delete deletes the subvolume at path together with any subvolumes nested
// in it, read-only ones included (they are made writable first, since a
// read-only parent cannot lose its entries).
func Delete(path string) error {
	ok, err := IsSubvolume(path)
	if err != nil {
		return err
	}
	if !ok {
		return &Error{"delete", path, ErrNotSubvolume}
	}
	if ro, err := IsReadOnly(path); err != nil {
		return err
	} else if ro {
		if err := SetReadOnly(path, false); err != nil {
			return err
		}
	}
	nested, err := nestedSubvolumes(path)
	if err != nil {
		return &Error{"delete", path, err}
	}
	for _, n := range nested {
		if err := Delete(n); err != nil {
			return err
		}
	}
	dir, name, err := parentAndName("delete", path, volNameMax)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	var args volArgs
	copy(args.name[:], name)
	if err := ioctl(dir, iocSnapDestroy, unsafe.Pointer(&args)); err != nil {
		return &Error{"delete", path, err}
	}
	return nil
}

// nestedSubvolumes finds the subvolumes directly nested in root (not inside
// each other): directories with the subvolume root inode on a different
// device number than their parent's subvolume.
func nestedSubvolumes(root string) ([]string, error) {
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		return nil, err
	}
	rootDev := st.Dev
	var found []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root || !d.IsDir() {
			return nil
		}
		var s unix.Stat_t
		if err := unix.Lstat(p, &s); err != nil {
			return err
		}
		// Each subvolume has its own anonymous device number.
		if s.Ino == firstFreeObjectID && s.Dev != rootDev {
			found = append(found, p)
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finding nested subvolumes: %w", err)
	}
	return found, nil
}
