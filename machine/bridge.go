package machine

import (
	"fmt"
	"os/exec"
	"strings"
)

// CreateBridge creates the bridge name with the IPv4 address addr
// (ADDR/LEN) and brings it up: a private network of one slot's machines.
// A bridge of that name left by a crashed agent is replaced.
func CreateBridge(name, addr string) error {
	DeleteTap(name)
	for _, args := range [][]string{
		{"link", "add", "name", name, "type", "bridge"},
		{"addr", "add", addr, "dev", name},
		{"link", "set", "dev", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			DeleteTap(name)
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
	}
	return nil
}
