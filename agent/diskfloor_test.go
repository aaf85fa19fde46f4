package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
)

// TestFreeSpaceFloor: with the machines' btrfs (a small loop device) below
// --min-free, the agent bootstraps nothing and asks for no task; status and
// metrics say why. Once space is freed it goes on and performs the task.
// No VM: --fake-bootstrap and --fake-build.
func TestFreeSpaceFloor(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hello", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.FakeBootstrap, e.opts.FakeBuild = true, true
	var st unix.Statfs_t
	if err := unix.Statfs(e.opts.Machines, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	const floor = 256 << 20
	if free < 2*floor {
		t.Fatalf("the test btrfs has only %d bytes free", free)
	}
	e.opts.MinFree = floor >> 10
	// Fill it to half the floor: fallocate reserves the blocks.
	filler := filepath.Join(e.root, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), 0, 0, free-floor/2); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	f.Close()
	unix.Sync()

	e.start()
	var why string
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if why = e.agent.State().BackoffWhy; why != "" {
			break
		}
	}
	if !strings.Contains(why, "below --min-free 256.0 MiB") || !strings.Contains(why, "--machines "+e.opts.Machines) {
		t.Fatalf("backoff why %q", why)
	}
	time.Sleep(2 * time.Second) // ten poll intervals
	if n := len(srv.Requests()); n != 0 {
		t.Errorf("%d task requests below the floor", n)
	}
	if _, err := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e")); err == nil {
		t.Error("bootstrapped below the floor")
	}
	if snap := e.agent.metricsSnapshot(); !snap.LowSpace || len(snap.FreeSpace) == 0 {
		t.Errorf("metrics: low space %v, free space %+v", snap.LowSpace, snap.FreeSpace)
	}

	os.Remove(filler)
	unix.Sync()
	results := srv.WaitResults(1, 60*time.Second)
	if got := statuses(results); got["hello"] != "abort" { // --fake-build's
		t.Fatalf("after freeing space: results %v", got)
	}
	if snap := e.agent.metricsSnapshot(); snap.LowSpace {
		t.Error("metrics still say low space")
	}
}
