package agent

import (
	"errors"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

func TestPlanOffset(t *testing.T) {
	for _, c := range []struct{ tc, i, want int }{{1, 1, 1}, {1, 99, 99}, {2, 1, 101}, {99, 99, 9899}} {
		if got := Offset(c.tc, c.i); got != c.want {
			t.Errorf("Offset(%d, %d) = %d, want %d", c.tc, c.i, got, c.want)
		}
	}
	// Unique on the host.
	seen := map[int]bool{}
	for tc := 1; tc <= 99; tc++ {
		for i := 1; i <= 99; i++ {
			if off := Offset(tc, i); seen[off] {
				t.Fatalf("Offset(%d, %d) = %d twice", tc, i, off)
			} else {
				seen[off] = true
			}
		}
	}
}

func TestPlanSlot(t *testing.T) {
	o := validOptions()
	o.TFTP, o.RunDir, o.ToolchainName, o.ToolchainNum, o.TFTPPort = "/build/tftp/", "/run/bbot-agent/ci", "ci", 3, 23400
	got := PlanSlot(&o, 7)
	want := SlotPlan{
		Instance: 7, Offset: 207, TFTPPort: 23607, Tap: "bb207",
		TFTPBootstrapPut: "/build/tftp/bootstrap/ci-7",
		TFTPBuildGet:     "/build/tftp/build/ci-7/get",
		TFTPBuildPut:     "/build/tftp/build/ci-7/put",
		RunDir:           "/run/bbot-agent/ci/7", JournalInstance: 7,
		MACSuffix: [2]byte{0x00, 0xcf},
	}
	if got != want {
		t.Errorf("PlanSlot:\n got %+v\nwant %+v", got, want)
	}
	// The largest: its tap name is well within IFNAMSIZ (15 bytes), and its
	// port is the one Validate bounds (TestValidateRanges).
	o.ToolchainNum, o.TFTPPort = 99, 65535-9899
	p := PlanSlot(&o, 99)
	if p.Tap != "bb9899" || len(p.Tap) > 15 || p.TFTPPort != 65535 || p.MACSuffix != [2]byte{0x26, 0xab} {
		t.Errorf("PlanSlot(99) of toolchain 99: %+v", p)
	}
}

func TestPlanSlotMAC(t *testing.T) {
	mac := regexp.MustCompile(`^02(:[0-9a-f]{2}){5}$`)
	a1, a256, b1 := SlotMAC("alpha", 1), SlotMAC("alpha", 256), SlotMAC("beta", 1)
	for _, m := range []string{a1, a256, b1, SlotMAC("", 9899)} {
		if !mac.MatchString(m) {
			t.Errorf("%q: not a locally administered unicast MAC", m)
		}
	}
	if a1 != SlotMAC("alpha", 1) {
		t.Errorf("not stable")
	}
	// Past 255 the offset still differs (derivedMAC's last byte wrapped).
	if a1 == a256 || !strings.HasSuffix(a1, ":00:01") || !strings.HasSuffix(a256, ":01:00") ||
		!strings.HasSuffix(SlotMAC("alpha", 9899), ":26:ab") {
		t.Errorf("offset bytes: %s %s", a1, a256)
	}
	if a1[:11] != a256[:11] || a1[:11] == b1[:11] {
		t.Errorf("name bytes: %s %s %s", a1, a256, b1)
	}
	// PlanSlot's suffix is SlotMAC's.
	o := validOptions()
	o.ToolchainNum = 3
	p := PlanSlot(&o, 60)
	if m := SlotMAC("alpha", p.Offset); !strings.HasSuffix(m, ":01:04") || p.MACSuffix != [2]byte{0x01, 0x04} {
		t.Errorf("%s, suffix %x", m, p.MACSuffix)
	}
}

func TestPlanGuestBlock(t *testing.T) {
	type want struct {
		first string // "" for an error
		err   string // substrings of the error, '|'-separated
	}
	for _, c := range []struct {
		bridge, guestRange string
		tc, i              int
		want
	}{
		// Default range: the upper half, block Offset-1.
		{"10.0.0.1/24", "", 1, 1, want{"10.0.0.128", ""}},
		{"10.0.0.1/24", "", 1, 2, want{"10.0.0.132", ""}},
		{"10.0.0.1/24", "", 1, 31, want{"10.0.0.248", ""}},
		// The last block of the upper half holds the broadcast address.
		{"10.0.0.1/24", "", 1, 32, want{"", "--guest-range: |10.0.0.252..10.0.0.255|broadcast|a --guest-range of its own"}},
		{"10.0.0.1/24", "", 1, 33, want{"", "--guest-range: |instance 33 of toolchain 1|10.0.1.0..10.0.1.3|beyond the default range 10.0.0.128/25|give each toolchain a --guest-range of its own, or use a larger bridge network"}},
		{"10.0.0.1/24", "", 2, 1, want{"", "toolchain 2|beyond the default range|give each toolchain a --guest-range of its own"}},
		// A /16: toolchains share the upper half, carrying into the third
		// octet (10.0.128.0 + 4*100 = 10.0.129.144).
		{"10.0.0.1/16", "", 2, 1, want{"10.0.129.144", ""}},
		{"10.0.0.1/16", "", 1, 64, want{"10.0.128.252", ""}},
		{"10.0.0.1/16", "", 1, 65, want{"10.0.129.0", ""}},
		{"10.0.0.1/16", "", 82, 91, want{"10.0.255.248", ""}},
		{"10.0.0.1/16", "", 82, 92, want{"", "10.0.255.252..10.0.255.255|broadcast"}},
		{"10.0.0.1/16", "", 99, 99, want{"", "10.1.26.168..10.1.26.171|beyond the default range 10.0.128.0/17"}},
		// The bridge's address may be in the upper half.
		{"10.0.0.200/24", "", 1, 18, want{"10.0.0.196", ""}},
		{"10.0.0.200/24", "", 1, 19, want{"", "bridge's own address 10.0.0.200|without it"}},
		{"10.0.0.203/24", "", 1, 19, want{"", "bridge's own address 10.0.0.203"}},
		{"10.0.0.204/24", "", 1, 19, want{"10.0.0.200", ""}},
		// /29 is the smallest: its upper half is one block, which holds
		// the broadcast address.
		{"10.0.0.1/29", "", 1, 1, want{"", "broadcast"}},
		{"10.0.0.1/30", "", 1, 1, want{"", "--bridge: |/29 or shorter"}},
		{"fd00::1/64", "", 1, 1, want{"", "--bridge: |IPv4"}},
		{"::ffff:10.0.0.1/120", "", 1, 1, want{"", "--bridge: |IPv4"}},
		// A range of the admin's, block instance-1.
		{"10.0.0.1/24", "10.0.0.64/27", 5, 1, want{"10.0.0.64", ""}},
		{"10.0.0.1/24", "10.0.0.64/27", 5, 8, want{"10.0.0.92", ""}},
		{"10.0.0.1/24", "10.0.0.64/27", 5, 9, want{"", "invalid --guest-range value '10.0.0.64/27'|10.0.0.96..10.0.0.99|beyond range 10.0.0.64/27|give a larger --guest-range"}},
		{"10.0.0.1/24", "10.0.0.248/29", 1, 2, want{"", "10.0.0.252..10.0.0.255|broadcast"}},
		{"10.0.0.1/24", "10.0.0.0/28", 1, 1, want{"", "10.0.0.0..10.0.0.3|network or broadcast"}},
		{"10.0.0.1/24", "10.0.0.0/28", 1, 2, want{"10.0.0.4", ""}},
		{"10.0.0.5/24", "10.0.0.0/28", 1, 2, want{"", "bridge's own address 10.0.0.5"}},
		{"10.0.0.1/24", "10.0.0.0/24", 1, 2, want{"10.0.0.4", ""}},
		{"10.0.0.1/24", "10.0.1.0/26", 1, 1, want{"", "invalid --guest-range value '10.0.1.0/26'|not inside the bridge's network 10.0.0.0/24"}},
		{"10.0.0.1/24", "10.0.0.0/23", 1, 2, want{"", "not inside the bridge's network"}},
		{"10.0.0.1/24", "10.0.0.65/27", 1, 1, want{"", "host bits are set"}},
		{"10.0.0.1/24", "10.0.0.64", 1, 1, want{"", "expected an IPv4 ADDR/LEN"}},
		// The range's end, in 32 bits, does not wrap.
		{"255.255.255.1/24", "", 1, 31, want{"255.255.255.248", ""}},
		{"255.255.255.1/24", "", 1, 33, want{"", "beyond 255.255.255.255|beyond the default range 255.255.255.128/25"}},
		{"10.0.0.1/8", "10.255.255.0/24", 1, 64, want{"", "broadcast"}},
		{"10.0.0.1/8", "10.255.255.0/24", 1, 65, want{"", "11.0.0.0..11.0.0.3|beyond range 10.255.255.0/24"}},
		{"10.0.0.1/24", "", 1, 0, want{"", "--instance"}},
	} {
		bridge := netip.MustParsePrefix(c.bridge)
		first, err := GuestBlock(bridge, c.guestRange, c.tc, c.i)
		name := c.bridge + " " + c.guestRange + " toolchain " + strconv.Itoa(c.tc) + " instance " + strconv.Itoa(c.i)
		if c.first != "" {
			if err != nil || first.String() != c.first {
				t.Errorf("%s: %v %v, want %s", name, first, err, c.first)
			}
			continue
		}
		if err == nil {
			t.Errorf("%s: %v, want an error", name, first)
			continue
		}
		var oe *OptionError
		if !errors.As(err, &oe) {
			t.Errorf("%s: not an *OptionError: %v", name, err)
		}
		for _, s := range strings.Split(c.err, "|") {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: %q does not say %q", name, err, s)
			}
		}
	}
}

// TestPlanGuestBlockDisjoint: without --guest-range, the blocks of all
// instances of two toolchains on a /16 are disjoint, inside the upper half
// and clear of the bridge's address.
func TestPlanGuestBlockDisjoint(t *testing.T) {
	bridge := netip.MustParsePrefix("172.16.200.1/16")
	used := map[netip.Addr]string{}
	for tc := 1; tc <= 2; tc++ {
		for i := 1; i <= 99; i++ {
			first, err := GuestBlock(bridge, "", tc, i)
			if err != nil {
				t.Fatalf("toolchain %d instance %d: %v", tc, i, err)
			}
			for k := 0; k < GuestBlockSize; k++ {
				a := GuestAddr(first, k)
				if prev, ok := used[a]; ok || a == bridge.Addr() || a.As4()[2] < 128 {
					t.Fatalf("toolchain %d instance %d: %s (used by %q)", tc, i, a, prev)
				}
				used[a] = strconv.Itoa(tc) + "/" + strconv.Itoa(i)
			}
		}
	}
}

func TestPlanGuestAddr(t *testing.T) {
	for _, c := range []struct {
		first string
		k     int
		want  string
	}{{"10.0.0.128", 0, "10.0.0.128"}, {"10.0.0.128", 3, "10.0.0.131"}, {"10.0.0.254", 2, "10.0.1.0"}, {"10.0.255.255", 1, "10.1.0.0"}} {
		if got := GuestAddr(netip.MustParseAddr(c.first), c.k); got.String() != c.want {
			t.Errorf("GuestAddr(%s, %d) = %s, want %s", c.first, c.k, got, c.want)
		}
	}
}
