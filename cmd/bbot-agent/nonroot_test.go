package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

// TestNonRoot runs a real bootstrap and task as user nobody: user
// networking, state and run directories of its own, and a btrfs mounted
// with user_subvol_rm_allowed so that it may delete its snapshots.
func TestNonRoot(t *testing.T) {
	machinetest.LockVM(t)
	_, err := exec.LookPath("setpriv")
	machinetest.Require(t, err == nil, "setpriv (util-linux) not installed")
	machinetest.Require(t, os.Geteuid() == 0, "needs root to set up and drop privileges")
	image := machinetest.Image(t)

	top := t.TempDir()
	bin := filepath.Join(top, "bbot-agent")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	mnt := btrfstest.MountOptions(t, 1<<30, "loop,user_subvol_rm_allowed")
	m := filepath.Join(mnt, "machines", "vol", "busybox")
	os.MkdirAll(m, 0o755)
	img := filepath.Join(m, "busybox-1.0")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"manifest", "vmlinuz", "initrd.img"} {
		data, _ := os.ReadFile(filepath.Join(image, n))
		os.WriteFile(filepath.Join(img, n), data, 0o644)
	}
	os.Symlink("busybox-1.0", filepath.Join(m, "busybox-1"))
	tc := filepath.Join(mnt, "tftp", "toolchains", "nr")
	os.MkdirAll(tc, 0o755)
	os.WriteFile(filepath.Join(tc, "toolchain"), []byte(": 1\nbbot-version: "+agent.Version+"\n"), 0o644)
	work := filepath.Join(top, "work")
	os.Mkdir(work, 0o755)
	for _, p := range []string{mnt, work} {
		if out, err := exec.Command("chown", "-R", "nobody:nogroup", p).CombinedOutput(); err != nil {
			t.Fatalf("chown: %v\n%s", err, out)
		}
	}
	btrfs.SetReadOnly(img, true)
	// Let nobody reach the test's directories.
	for d := top; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	for d := mnt; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	task, _ := filepath.Abs(filepath.Join("..", "..", "testdata", "demo", "hello.manifest"))
	taskCopy := filepath.Join(work, "hello.manifest")
	data, _ := os.ReadFile(task)
	os.WriteFile(taskCopy, data, 0o644)

	cmd := exec.Command("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", bin,
		"--verbose", "2", "--machines", filepath.Join(mnt, "machines"), "--tftp", filepath.Join(mnt, "tftp"),
		"--tftp-port", "24800", "--toolchain-name", "nr", "--network", "user", "--accel", "tcg",
		"--cpu", "1", "--ram", "524288", "--state-dir", filepath.Join(work, "state"), "--run-dir", filepath.Join(work, "run"),
		"--fake-request", taskCopy, "--dump-result")
	cmd.Dir = work
	cmd.Env = []string{"HOME=" + work, "PATH=/usr/bin:/bin:/usr/sbin:/sbin"}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("agent as nobody: %v\n%s\n%s", err, out, stderr.String())
	}
	if !strings.Contains(string(out), "\nstatus: success\n") {
		t.Fatalf("result:\n%s\nlog:\n%s", out, stderr.String())
	}
	ents, _ := os.ReadDir(m)
	for _, e := range ents {
		if strings.Contains(e.Name(), "~") {
			t.Errorf("temporary snapshot left: %s", e.Name())
		}
	}
}
