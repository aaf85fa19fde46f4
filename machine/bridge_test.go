package machine_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
	"github.com/build2/bbot-agent-go/tftp"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestBridge boots the test machine on a tap attached to a bridge inside a
// network namespace the test creates. The test re-executes itself inside
// the namespace (pin/tftp opens a socket per transfer on whatever thread
// runs it, so the whole process must live there). The guest is configured
// from the bbot.ip and bbot.gw OEM strings and fetches its task from the
// bridge's address; private addresses exist only inside the namespace.
func TestBridge(t *testing.T) {
	if os.Getenv("BBOT_IN_NETNS") == "1" {
		bridgeInNamespace(t)
		return
	}
	machinetest.Require(t, os.Geteuid() == 0, "bridge networking needs root")
	_, err := exec.LookPath("ip")
	machinetest.Require(t, err == nil, "ip (iproute2) not installed")
	machinetest.LockVM(t)
	image := machinetest.Image(t)

	ns := fmt.Sprintf("bbtest%d", os.Getpid())
	ip(t, "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	cmd := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run", "^TestBridge$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "BBOT_IN_NETNS=1", "BBOT_TEST_IMAGE="+image)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestBridge") {
		t.Fatalf("bridge test in the namespace failed: %v", err)
	}
}

func bridgeInNamespace(t *testing.T) {
	const bridge, tap = "bbbr0", "bb9"
	ip(t, "link", "set", "lo", "up")
	ip(t, "link", "add", bridge, "type", "bridge")
	ip(t, "addr", "add", "192.168.213.1/24", "dev", bridge)
	ip(t, "link", "set", bridge, "up")
	if err := machine.CreateTap(tap, bridge); err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, signal: make(chan struct{}, 100)}
	h.serve(t, "hello", "192.168.213.1:0")
	cfg := h.config(t, "build")
	cfg.Network, cfg.Tap, cfg.MAC = "bridge", tap, "52:54:00:bb:00:09"
	cfg.OEMStrings = []string{
		fmt.Sprintf("bbot.tftp=192.168.213.1:%d", h.addr.Port), "bbot.mode=build",
		"bbot.ip=192.168.213.109/24", "bbot.gw=192.168.213.1",
	}
	m := start(t, cfg)
	if _, ok := h.wait(tftp.UploadCompleted, 90*time.Second); !ok {
		t.Fatal("no result over the bridge")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(mustRead(t, cfg.ConsolePath())), "network: eth0 192.168.213.109/24 via 192.168.213.1") {
		t.Error("the guest did not use the bridge address")
	}
	if err := machine.DeleteTap(tap); err != nil {
		t.Error(err)
	}
	if _, err := net.InterfaceByName(tap); err == nil {
		t.Error("tap left behind")
	}
}
