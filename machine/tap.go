package machine

import (
	"fmt"
	"os/exec"
	"strings"
)

// CreateTap creates the tap interface name, attaches it to bridge and brings
// it up (bridge networking). An existing tap of that name, left by a crashed
// agent, is replaced.
func CreateTap(name, bridge string) error {
	DeleteTap(name)
	for _, args := range [][]string{
		{"tuntap", "add", "dev", name, "mode", "tap"},
		{"link", "set", "dev", name, "master", bridge},
		{"link", "set", "dev", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			DeleteTap(name)
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}

// DeleteTap removes the tap (or bridge) interface; a missing one is not an
// error.
func DeleteTap(name string) error {
	out, err := exec.Command("ip", "link", "del", "dev", name).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "Cannot find device") {
		return fmt.Errorf("ip link del %s: %v: %s", name, err, strings.TrimSpace(string(out)))
	}
	return nil
}
