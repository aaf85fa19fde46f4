package agent

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"path/filepath"
	"strconv"
)

// The address plan: what each instance (a task slot) of a toolchain uses on
// the host, so that instances of one process, and of the processes of all
// toolchains on the host, never share a port, tap, directory, MAC or guest
// address. Everything follows from bbot's offset.

// Offset is bbot's per-instance offset: unique on the host for toolchains
// 1..99 and instances 1..99.
func Offset(toolchainNum, instance int) int { return (toolchainNum-1)*100 + instance }

// SlotPlan is one instance's share of the host.
type SlotPlan struct {
	Instance int
	Offset   int
	TFTPPort int    // --tftp-port plus Offset (UDP)
	Tap      string // bb<Offset>: at most 6 bytes, within IFNAMSIZ
	// TFTP directories (bbot's layout): where a bootstrapping machine PUTs
	// its manifest, and where a build machine GETs its task and PUTs its
	// result.
	TFTPBootstrapPut, TFTPBuildGet, TFTPBuildPut string
	RunDir                                       string // <--run-dir>/<instance>: QMP sockets, console logs
	JournalInstance                              int
	MACSuffix                                    [2]byte // Offset, big-endian: the last two bytes of SlotMAC
}

// PlanSlot is instance's plan under o (Validate keeps every instance's
// port within 65535).
func PlanSlot(o *Options, instance int) SlotPlan {
	off := Offset(o.ToolchainNum, instance)
	tc := o.ToolchainName + "-" + strconv.Itoa(instance)
	return SlotPlan{
		Instance:         instance,
		Offset:           off,
		TFTPPort:         o.TFTPPort + off,
		Tap:              "bb" + strconv.Itoa(off),
		TFTPBootstrapPut: filepath.Join(o.TFTP, "bootstrap", tc),
		TFTPBuildGet:     filepath.Join(o.TFTP, "build", tc, "get"),
		TFTPBuildPut:     filepath.Join(o.TFTP, "build", tc, "put"),
		RunDir:           filepath.Join(o.RunDir, strconv.Itoa(instance)),
		JournalInstance:  instance,
		MACSuffix:        [2]byte{byte(off >> 8), byte(off)},
	}
}

// SlotMAC is a stable locally administered unicast MAC for a machine booted
// by the instance with this offset: 02:aa:bb:cc:HH:LL, aa:bb:cc from a hash
// of the machine name and HH:LL the offset (big-endian), so that two
// instances booting the same machine on one bridge never clash. Offsets
// above 65535 (none exist) would wrap.
func SlotMAC(machineName string, offset int) string {
	sum := sha256.Sum256([]byte(machineName))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", sum[0], sum[1], sum[2], byte(offset>>8), byte(offset))
}

// GuestBlockSize is the number of consecutive guest addresses an instance
// gets in bridge mode: the first for the build machine, the others kept for
// its auxiliary machines.
const GuestBlockSize = 4

// maxGuestPrefix is the longest bridge prefix guests are placed in: a /29
// has an upper half of 4 addresses, one block.
const maxGuestPrefix = 29

// parseGuestRange parses a --guest-range value: an IPv4 prefix in canonical
// form, so that what the admin wrote is the range used.
func parseGuestRange(s string) (netip.Prefix, error) {
	return parseIPv4Prefix("guest-range", s, "10.0.0.128/25")
}

// parseIPv4Prefix parses an IPv4 ADDR/LEN option value in canonical form;
// errors name the option and show example.
func parseIPv4Prefix(option, s, example string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	switch {
	case err != nil || !p.Addr().Is4():
		return netip.Prefix{}, &OptionError{option, s, "expected an IPv4 ADDR/LEN such as " + example}
	case p.Masked() != p:
		return netip.Prefix{}, &OptionError{option, s, "host bits are set; did you mean " + p.Masked().String() + "?"}
	}
	return p, nil
}

// GuestBlock is the first of the GuestBlockSize guest addresses of an
// instance in bridge mode. bridge is the bridge's address and prefix. With
// no guestRange the range is the upper half of the bridge's network, shared
// by all toolchains, and the block is Offset-1 (unique on the host); with
// one, the admin gives each toolchain its own range inside the bridge's
// network, and the block is instance-1. The block must lie in the range and
// hold neither the network's network or broadcast address nor the bridge's
// own.
func GuestBlock(bridge netip.Prefix, guestRange string, toolchainNum, instance int) (netip.Addr, error) {
	if !bridge.IsValid() || !bridge.Addr().Is4() || bridge.Bits() > maxGuestPrefix {
		return netip.Addr{}, &OptionError{Option: "bridge", Reason: fmt.Sprintf("address %s: guest addresses need an IPv4 network of /%d or shorter", bridge, maxGuestPrefix)}
	}
	network := bridge.Masked()
	var r netip.Prefix
	var index int
	var what string // the range, for errors
	if guestRange == "" {
		// The lower half is left to the bridge and other hosts.
		r = netip.PrefixFrom(netip.AddrFrom4(u32Addr(addrU32(network.Addr())+1<<(31-network.Bits()))), network.Bits()+1)
		index = Offset(toolchainNum, instance) - 1
		what = fmt.Sprintf("the default range %s (the upper half of the bridge's network %s)", r, network)
	} else {
		var err error
		if r, err = parseGuestRange(guestRange); err != nil {
			return netip.Addr{}, err
		}
		if r.Bits() < network.Bits() || !network.Contains(r.Addr()) {
			return netip.Addr{}, &OptionError{"guest-range", guestRange, fmt.Sprintf("not inside the bridge's network %s", network)}
		}
		index = instance - 1
		what = "range " + r.String()
	}
	if index < 0 {
		return netip.Addr{}, &OptionError{Option: "instance", Value: strconv.Itoa(instance), Reason: "instances start at 1"}
	}
	// In 64 bits: no wrapping past 255.255.255.255.
	first := uint64(addrU32(r.Addr())) + uint64(index)*GuestBlockSize
	last := first + GuestBlockSize - 1
	rangeLast := uint64(addrU32(r.Addr())) + 1<<(32-r.Bits()) - 1
	netFirst := uint64(addrU32(network.Addr()))
	netLast := netFirst + 1<<(32-network.Bits()) - 1
	bridgeAddr := uint64(addrU32(bridge.Addr()))
	needs := fmt.Sprintf("instance %d of toolchain %d needs guest addresses ", instance, toolchainNum)
	if last <= 0xffffffff {
		needs += netip.AddrFrom4(u32Addr(uint32(first))).String() + ".." + netip.AddrFrom4(u32Addr(uint32(last))).String()
	} else {
		needs += "beyond 255.255.255.255"
	}
	larger := "give a larger --guest-range"
	if guestRange == "" {
		larger = "give each toolchain a --guest-range of its own, or use a larger bridge network"
	}
	switch {
	case last > rangeLast:
		return netip.Addr{}, &OptionError{"guest-range", guestRange, needs + ", beyond " + what + "; " + larger}
	case first == netFirst || last >= netLast:
		return netip.Addr{}, &OptionError{"guest-range", guestRange, needs + ", which include the network or broadcast address of " + network.String() + "; " + larger}
	case first <= bridgeAddr && bridgeAddr <= last:
		return netip.Addr{}, &OptionError{"guest-range", guestRange, needs + ", which include the bridge's own address " + bridge.Addr().String() + "; give a --guest-range without it"}
	}
	return netip.AddrFrom4(u32Addr(uint32(first))), nil
}

// GuestAddr is the k-th address of the block starting at first (0: the
// build machine).
func GuestAddr(first netip.Addr, k int) netip.Addr {
	return netip.AddrFrom4(u32Addr(addrU32(first) + uint32(k)))
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(v uint32) [4]byte { return [4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }
