package agent

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

// Bridge-mode tests run in a network namespace the test creates, holding a
// bridge with netnsBridgeAddr: taps, private addresses and nftables rules
// exist only there. The whole test binary is re-executed inside (pin/tftp
// opens a socket per transfer on whatever thread runs it, so the process
// must live in the namespace).
const (
	netnsBridge     = "bbbr0"
	netnsBridgeAddr = "192.168.213.1/24"
)

var netnsSeq atomic.Int32

// inNetns reports whether the calling (top-level) test runs inside its
// namespace; there it goes on. Outside, it creates the namespace and the
// bridge, runs the test there, fails t unless it passed, and returns false:
// the caller returns.
func inNetns(t *testing.T) bool {
	t.Helper()
	if os.Getenv("BBOT_IN_NETNS") == t.Name() {
		return true
	}
	machinetest.Require(t, os.Geteuid() == 0, "network namespaces and bridges need root")
	_, err := exec.LookPath("ip")
	machinetest.Require(t, err == nil, "ip (iproute2) not installed")
	image := machinetest.Image(t) // built here, reused inside

	ns := fmt.Sprintf("bbt%d-%d", os.Getpid(), netnsSeq.Add(1))
	netnsIP(t, "", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	netnsIP(t, ns, "link", "set", "lo", "up")
	netnsIP(t, ns, "link", "add", netnsBridge, "type", "bridge")
	netnsIP(t, ns, "addr", "add", netnsBridgeAddr, "dev", netnsBridge)
	netnsIP(t, ns, "link", "set", netnsBridge, "up")

	args := []string{"netns", "exec", ns, os.Args[0], "-test.run", "^" + regexp.QuoteMeta(t.Name()) + "$", "-test.v", "-test.count=1"}
	if d, ok := t.Deadline(); ok {
		args = append(args, "-test.timeout", time.Until(d).Round(time.Second).String())
	}
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), "BBOT_IN_NETNS="+t.Name(), "BBOT_TEST_IMAGE="+image)
	out, err := cmd.CombinedOutput()
	t.Logf("in namespace %s:\n%s", ns, out)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("%s in network namespace %s failed: %v", t.Name(), ns, err)
	}
	return false
}

// netnsIP runs ip(8), in namespace ns unless it is "".
func netnsIP(t *testing.T, ns string, args ...string) {
	t.Helper()
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// bridgeE2E is newE2E in bridge mode on the namespace's bridge.
func bridgeE2E(t *testing.T, controllers ...controller.Controller) *e2e {
	e := newE2E(t, controllers...)
	e.opts.Network, e.opts.Bridge = "bridge", netnsBridge
	return e
}

// TestBridgeTask bootstraps the machine and runs a task in bridge mode: a
// tap on the bridge, the guest at the first address of its slot's block,
// TFTP on the bridge's address.
func TestBridgeTask(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("hello", testMachine)
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.start()
	results := srv.WaitResults(1, 180*time.Second)
	e.shutdown()
	if got := statuses(results); got["hello"] != "success" {
		t.Fatalf("results %v, want hello: success", got)
	}
	console, _ := os.ReadFile(e.slotRun(1) + "/console.log")
	if !strings.Contains(string(console), "network: eth0 192.168.213.128/24 via 192.168.213.1") {
		t.Errorf("the guest did not take its slot's bridge address; console:\n%s", console)
	}
}
