package machine

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
)

// WorkerTFTP is where an unmodified bbot worker sends its TFTP requests
// (its --tftp-host default; not a typo for 169.254.x.x: that is what the
// worker uses).
var WorkerTFTP = netip.AddrPortFrom(netip.MustParseAddr("196.254.111.222"), 69)

// Redirect is one slot's nftables redirect of unmodified bbot workers in
// bridge mode: frames from the slot's tap with the guest's MAC are marked
// in the bridge family (frames from that tap with any other MAC are
// dropped, so a guest can neither pose as another slot's guest nor poison
// the bridge's forwarding table with its MAC); marked TFTP requests to
// WorkerTFTP are DNATed to the slot's redirect listener, with the TFTP
// conntrack helper so that the transfer's replies (from a port of their
// own) come back as from WorkerTFTP; and the listener takes only marked
// packets. The rules live in two tables named Table (bridge and ip
// family), owned by the slot, replaced and removed whole.
type Redirect struct {
	Table string
	Tap   string
	MAC   string
	Mark  uint32
	To    netip.AddrPort // the slot's redirect TFTP listener (IPv4)
}

var tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

// script is the nft(8) transaction installing r, replacing tables of
// r.Table left by a crash.
func (r Redirect) script() (string, error) {
	mac, err := net.ParseMAC(r.MAC)
	switch {
	case !tableName.MatchString(r.Table):
		return "", fmt.Errorf("redirect: bad table name %q", r.Table)
	case err != nil || len(mac) != 6:
		return "", fmt.Errorf("redirect: bad MAC %q", r.MAC)
	case !r.To.IsValid() || !r.To.Addr().Is4():
		return "", fmt.Errorf("redirect: listener %s is not an IPv4 address and port", r.To)
	case strings.ContainsAny(r.Tap, "\" \n") || r.Tap == "":
		return "", fmt.Errorf("redirect: bad tap name %q", r.Tap)
	}
	var b strings.Builder
	b.WriteString(removeScript(r.Table))
	fmt.Fprintf(&b, `table bridge %[1]s {
	chain worker_guest {
		type filter hook prerouting priority -300; policy accept;
		iifname "%[2]s" ether saddr != %[3]s drop
		iifname "%[2]s" meta mark set %#08[4]x
	}
}
table ip %[1]s {
	ct helper tftp {
		type "tftp" protocol udp;
	}
	chain worker_helper {
		# after conntrack (-200), before the DNAT (-100): the request
		# still has its original destination
		type filter hook prerouting priority -150; policy accept;
		meta mark %#08[4]x ip daddr %[5]s udp dport %[6]d ct helper set "tftp"
	}
	chain worker_dnat {
		type nat hook prerouting priority dstnat; policy accept;
		meta mark %#08[4]x ip daddr %[5]s udp dport %[6]d dnat to %[7]s
	}
	chain worker_confine {
		type filter hook input priority filter; policy accept;
		ip daddr %[8]s udp dport %[9]d meta mark != %#08[4]x drop
	}
}
`, r.Table, r.Tap, mac, r.Mark, WorkerTFTP.Addr(), WorkerTFTP.Port(), r.To, r.To.Addr(), r.To.Port())
	return b.String(), nil
}

// removeScript deletes both tables of name; declaring them first makes the
// deletion succeed when they are missing.
func removeScript(name string) string {
	return fmt.Sprintf("table bridge %[1]s\ndelete table bridge %[1]s\ntable ip %[1]s\ndelete table ip %[1]s\n", name)
}

// InstallRedirect installs r in one nft transaction: all rules or none.
func InstallRedirect(r Redirect) error {
	s, err := r.script()
	if err != nil {
		return err
	}
	return nft(s)
}

// RemoveRedirect removes the redirect tables named table; missing ones are
// not an error.
func RemoveRedirect(table string) error {
	if !tableName.MatchString(table) {
		return fmt.Errorf("redirect: bad table name %q", table)
	}
	return nft(removeScript(table))
}

// HaveNFT reports whether nft(8) can be run.
func HaveNFT() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft (nftables) not found: bridge mode redirects unmodified bbot workers' TFTP with it: %w", err)
	}
	return nil
}

func nft(script string) error {
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("nft: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}
