package agent

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

// plainWorker makes the test machine play an unmodified bbot worker image
// (the guest's plain mode: DHCP, TFTP to 196.254.111.222:69, no SMBIOS);
// extra goes onto its kernel command line.
func (e *e2e) plainWorker(extra string) {
	img := filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-1.0")
	btrfs.SetReadOnly(img, false)
	defer btrfs.SetReadOnly(img, true)
	p := filepath.Join(img, "manifest")
	data, err := os.ReadFile(p)
	if err != nil {
		e.t.Fatal(err)
	}
	s := strings.Replace(string(data), "rdinit=/init", strings.TrimSpace("rdinit=/init bbot.worker=plain "+extra), 1)
	if s == string(data) {
		e.t.Fatal("the test machine's manifest has no rdinit=/init to extend")
	}
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// startDHCP runs the admin's DHCP server on the namespace's bridge
// (busybox udhcpd), naming the bridge's address as the router, as a
// bbot build host's bridge does.
func startDHCP(t *testing.T) {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "udhcpd.conf")
	os.WriteFile(filepath.Join(dir, "leases"), nil, 0o644)
	os.WriteFile(conf, []byte(fmt.Sprintf("start 192.168.213.20\nend 192.168.213.40\ninterface %s\nlease_file %s\npidfile %s\noption subnet 255.255.255.0\noption router 192.168.213.1\n",
		netnsBridge, filepath.Join(dir, "leases"), filepath.Join(dir, "pid"))), 0o644)
	cmd := exec.Command("busybox", "udhcpd", "-f", conf)
	cmd.Stdout, cmd.Stderr = tWriter{t}, tWriter{t}
	if err := cmd.Start(); err != nil {
		t.Fatalf("udhcpd: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
}

func requireNFT(t *testing.T) {
	t.Helper()
	machinetest.Require(t, machine.HaveNFT() == nil, "nft not installed (apt-get install nftables)")
	_, err := exec.LookPath("busybox")
	machinetest.Require(t, err == nil, "busybox not installed (apt-get install busybox-static)")
}

// plainWorkerE2E is a bridge-mode agent in the namespace whose machine
// plays an unmodified worker, the bridge's DHCP server, and the strict
// controller it polls; extra goes onto the guest's kernel command line.
func plainWorkerE2E(t *testing.T, extra string) (*controllertest.Server, *e2e) {
	requireNFT(t)
	startDHCP(t)
	srv := controllertest.New()
	t.Cleanup(srv.Close)
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.plainWorker(extra)
	return srv, e
}

// redirectTables lists the bbot_ nftables tables.
func redirectTables(t *testing.T) []string {
	t.Helper()
	out, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	var tables []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], "bbot_") {
			tables = append(tables, f[1]+" "+f[2])
		}
	}
	return tables
}

// TestWorkerImage: a guest that does what an unmodified bbot worker does
// (no SMBIOS strings, a DHCP lease from the bridge's server, TFTP to
// 196.254.111.222:69 with bare names) is bootstrapped and gets its task
// through its slot's redirect, and its result is delivered. A crashed
// agent's redirect and tap of a slot nobody runs are swept at start-up;
// none is left after.
func TestWorkerImage(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv, e := plainWorkerE2E(t, "")
	srv.QueueTask("hello", testMachine)

	// What an agent killed while instance 2 ran leaves: its run dir, tap
	// and redirect.
	left := PlanSlot(&e.opts, 2)
	os.MkdirAll(left.RunDir, 0o700)
	if err := machine.CreateTap(left.Tap, netnsBridge); err != nil {
		t.Fatal(err)
	}
	if err := machine.InstallRedirect(machine.Redirect{Table: redirectTable(left.Offset), Tap: left.Tap, MAC: SlotMAC(testMachine, left.Offset),
		Mark: redirectMark(left.Offset), To: netip.MustParseAddrPort("192.168.213.1:40000")}); err != nil {
		t.Fatal(err)
	}

	e.start()
	results := srv.WaitResults(1, 180*time.Second)
	e.shutdown()
	if got := statuses(results); got["hello"] != "success" {
		t.Fatalf("results %v, want hello: success", got)
	}
	console, _ := os.ReadFile(filepath.Join(e.slotRun(1), "console.log"))
	for _, want := range []string{"dhcp: eth0 192.168.213.", "plain: TFTP 196.254.111.222:69", "build: task hello/"} {
		if !strings.Contains(string(console), want) {
			t.Errorf("console lacks %q:\n%s", want, console)
		}
	}
	if tables := redirectTables(t); len(tables) != 0 {
		t.Errorf("redirect tables left: %v", tables)
	}
	if _, err := net.InterfaceByName(left.Tap); err == nil {
		t.Errorf("the crashed instance's tap %s was not swept", left.Tap)
	}
}

// TestWorkerImageOtherMAC: a guest that takes another slot's MAC gets
// nothing through its tap (its frames are dropped: no DHCP lease, no
// TFTP), so its bootstrap fails for want of a first request; the
// redirect goes with the session.
func TestWorkerImageOtherMAC(t *testing.T) {
	if !inNetns(t) {
		return
	}
	requireNFT(t)
	startDHCP(t)
	e := bridgeE2E(t)
	other := PlanSlot(&e.opts, 2)
	e.plainWorker("bbot.mac=" + SlotMAC(testMachine, other.Offset))
	e.opts.BootstrapStartup, e.opts.BootstrapRetries, e.opts.SuspendTimeout = 15*time.Second, 0, time.Second
	held := make(chan struct{}, 1)
	e.onSuspend = func(*machine.Machine) {
		if tables := redirectTables(t); len(tables) != 2 {
			t.Errorf("while the machine runs: redirect tables %v, want the slot's two", tables)
		}
		select {
		case held <- struct{}{}:
		default:
		}
	}
	e.start()
	select {
	case <-held:
	case <-time.After(120 * time.Second):
		t.Fatal("the bootstrap did not fail")
	}
	// The hold ends after --suspend-timeout; then the session is gone.
	deadline := time.Now().Add(30 * time.Second)
	for len(redirectTables(t)) != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	e.shutdown()
	console, _ := os.ReadFile(filepath.Join(e.slotRun(1), "console.log"))
	if !strings.Contains(string(console), "no DHCP lease") || strings.Contains(string(console), "dhcp: eth0") {
		t.Errorf("the guest on another slot's MAC got an address; console:\n%s", console)
	}
	if tables := redirectTables(t); len(tables) != 0 {
		t.Errorf("redirect tables left: %v", tables)
	}
	if _, err := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e")); err == nil {
		t.Error("the machine was bootstrapped")
	}
}

// TestWorkerImageCrash: an agent SIGKILLed while its plain-worker guest
// runs leaves the slot's redirect installed; the next agent sweeps it at
// start-up, reports the task as interrupt once, and leaves no table.
func TestWorkerImageCrash(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv, e := plainWorkerE2E(t, "")
	srv.QueueTask("hello", testMachine)
	runCrashChild(t, e, "after-qemu-start", 0)
	if tables := redirectTables(t); len(tables) != 2 {
		t.Fatalf("after the crash: redirect tables %v, want the slot's two", tables)
	}
	var status statusLog
	e.onStatus = status.record
	e.start()
	results := srv.WaitResults(1, 120*time.Second)
	// Recovered: one full round (enumeration sweeps the snapshot) reached
	// idle.
	status.waitSaid("idle", 60*time.Second)
	e.shutdown()
	if got := statuses(results); len(results) != 1 || got["hello"] != "interrupt" {
		t.Errorf("results %v, want exactly hello: interrupt", got)
	}
	if tables := redirectTables(t); len(tables) != 0 {
		t.Errorf("redirect tables left: %v", tables)
	}
}

// TestWorkerImageStatic: a plain worker with a static address (the
// admin's, outside the agent's guest blocks; no lease) gets its task
// through the redirect too.
func TestWorkerImageStatic(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv, e := plainWorkerE2E(t, "bbot.static=192.168.213.50/24,192.168.213.1")
	srv.QueueTask("hello", testMachine)
	e.start()
	results := srv.WaitResults(1, 180*time.Second)
	e.shutdown()
	if got := statuses(results); got["hello"] != "success" {
		t.Fatalf("results %v, want hello: success", got)
	}
	console, _ := os.ReadFile(filepath.Join(e.slotRun(1), "console.log"))
	if !strings.Contains(string(console), "plain: static: eth0 192.168.213.50/24 via 192.168.213.1") || strings.Contains(string(console), "dhcp:") {
		t.Errorf("the guest did not use its static address; console:\n%s", console)
	}
}
