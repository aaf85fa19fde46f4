package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"

	pintftp "github.com/pin/tftp/v3"
)

// A machine whose kernel command line says bbot.worker=plain plays an
// unmodified bbot worker image: it reads no SMBIOS string, takes its
// address by DHCP from the bridge and talks TFTP to 196.254.111.222:69
// with bare names (task.manifest present: a build; absent: a bootstrap).
// bbot.mac=MAC first changes its interface's MAC (a guest posing as
// another slot's); bbot.static=ADDR/LEN,GW takes that address instead of
// a lease.

// kernelOptions returns the bbot.* options of the kernel command line.
func kernelOptions() map[string]string {
	data, _ := os.ReadFile("/proc/cmdline")
	opts := map[string]string{}
	for _, f := range strings.Fields(string(data)) {
		if k, v, ok := strings.Cut(f, "="); ok && strings.HasPrefix(k, "bbot.") {
			opts[k] = v
		}
	}
	return opts
}

func plainWorker(opts map[string]string) error {
	dev, err := firstInterface()
	if err != nil {
		return err
	}
	cmds := [][]string{{"link", "set", "lo", "up"}}
	if mac := opts["bbot.mac"]; mac != "" {
		cmds = append(cmds, []string{"link", "set", "dev", dev, "address", mac})
	}
	cmds = append(cmds, []string{"link", "set", dev, "up"})
	// bbot.static=ADDR/LEN,GW: an address the admin gave the image.
	addr, gw, static := strings.Cut(opts["bbot.static"], ",")
	if static {
		cmds = append(cmds, []string{"addr", "add", addr, "dev", dev}, []string{"route", "add", "default", "via", gw})
	}
	for _, args := range cmds {
		if out, err := exec.Command("/bin/busybox", append([]string{"ip"}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	if static {
		logf("plain: static: %s %s via %s", dev, addr, gw)
	} else {
		// udhcpc runs /bin/dhcp-script (testdata/machine/build.sh),
		// which configures the lease and prints it.
		out, err := exec.Command("/bin/busybox", "udhcpc", "-i", dev, "-n", "-q", "-t", "10", "-T", "1", "-s", "/bin/dhcp-script").CombinedOutput()
		logf("plain: udhcpc: %s", strings.TrimSpace(string(out)))
		if err != nil {
			return fmt.Errorf("no DHCP lease: %v", err)
		}
	}
	c, err := pintftp.NewClient("196.254.111.222:69")
	if err != nil {
		return err
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(3)
	g := &guest{tftp: c, task: "task.manifest"}
	logf("plain: TFTP 196.254.111.222:69")
	if _, err := g.get("task.manifest"); err == nil {
		return g.build()
	} else {
		logf("plain: no task.manifest (%v): bootstrap", err)
	}
	return g.bootstrap()
}

func firstInterface() (string, error) {
	ifaces, err := net.Interfaces()
	if err != nil {
		return "", err
	}
	var names []string
	for _, i := range ifaces {
		if i.Flags&net.FlagLoopback == 0 {
			names = append(names, i.Name)
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no network interface")
	}
	sort.Strings(names)
	return names[0], nil
}
