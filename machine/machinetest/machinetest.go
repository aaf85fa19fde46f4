// Package machinetest builds the bootable test machine for tests that boot
// real QEMU guests, and keeps those tests from running two VMs at once.
package machinetest

import (
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
)

// Require stops the test when a prerequisite is missing: it fails under
// CI=true and skips otherwise.
func Require(tb testing.TB, ok bool, why string) {
	tb.Helper()
	btrfstest.Require(tb, ok, why)
}

// RequireQEMU checks that qemu-system-x86_64 runs.
func RequireQEMU(tb testing.TB) {
	tb.Helper()
	err := exec.Command("qemu-system-x86_64", "--version").Run()
	Require(tb, err == nil, "qemu-system-x86_64 does not run (apt-get install qemu-system-x86)")
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
	buildOut  []byte
)

// Image returns a directory holding the test machine (manifest, vmlinuz,
// initrd.img), built once per test binary with testdata/machine/build.sh.
func Image(tb testing.TB) string {
	tb.Helper()
	RequireQEMU(tb)
	Require(tb, os.Geteuid() == 0, "building the test machine installs packages: needs root")
	buildOnce.Do(func() {
		// A test re-executed in another namespace reuses its parent's image.
		if dir := os.Getenv("BBOT_TEST_IMAGE"); dir != "" {
			buildDir = dir
			return
		}
		_, file, _, _ := runtime.Caller(0)
		script := filepath.Join(filepath.Dir(file), "..", "..", "testdata", "machine", "build.sh")
		buildDir, buildErr = os.MkdirTemp("", "bbot-test-machine-")
		if buildErr != nil {
			return
		}
		buildOut, buildErr = exec.Command("bash", script, buildDir).CombinedOutput()
	})
	if buildErr != nil {
		tb.Fatalf("building the test machine: %v\n%s", buildErr, buildOut)
	}
	return buildDir
}

// CopyImage copies the test machine into dir (which must exist), e.g. into
// a btrfs subvolume.
func CopyImage(tb testing.TB, dir string) {
	tb.Helper()
	src := Image(tb)
	for _, n := range []string{"manifest", "vmlinuz", "initrd.img"} {
		data, err := os.ReadFile(filepath.Join(src, n))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), data, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
}

// LockVM serializes VM tests across test binaries (go test runs packages in
// parallel): at most one guest runs at a time on these small machines.
func LockVM(tb testing.TB) {
	tb.Helper()
	f, err := os.OpenFile(filepath.Join(os.TempDir(), "bbot-agent-vm-test.lock"), os.O_RDWR|os.O_CREATE, 0o666)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
}

// CheckVNC dials the VNC unix socket at path and fails tb unless QEMU
// greets with an RFB banner.
func CheckVNC(tb testing.TB, path string) {
	tb.Helper()
	vnc, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		tb.Fatalf("VNC: %v", err)
	}
	defer vnc.Close()
	vnc.SetReadDeadline(time.Now().Add(5 * time.Second))
	banner := make([]byte, 12)
	if _, err := io.ReadFull(vnc, banner); err != nil || !strings.HasPrefix(string(banner), "RFB 003.") {
		tb.Errorf("VNC banner %q, %v", banner, err)
	}
}
