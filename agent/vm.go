package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// VMs runs machine sessions for bootstraps and tasks: the QEMU and TFTP
// settings they share.
type VMs struct {
	Opts  *Options
	Log   *slog.Logger
	Accel *machine.Accel

	// bind is where a session binds its TFTP server (only while it runs).
	bind string

	// TFTPEndpoint is what the guest is told (bbot.tftp): 10.0.2.2:<port>
	// with user networking, the bind address with bridge networking.
	TFTPEndpoint string
	// GuestIP (ADDR/PREFIX) and GatewayIP are the guest's bbot.ip and
	// bbot.gw in bridge mode.
	GuestIP, GatewayIP string

	// The slot's part of the address plan: run files, tap, MAC offset,
	// bootstrap upload directory.
	instance     int
	runDir       string
	tap          string
	offset       int
	bootstrapPut string
	// onHeld, if set, learns that the slot holds a machine for inspection.
	onHeld func()
	// onTransfer, if set, learns of each TFTP request once done (metrics).
	onTransfer func(op tftp.Op, bytes int64, err error)

	*vmHooks // shared by every slot's VMs
}

// vmHooks are test seams shared by all slots.
type vmHooks struct {
	// onSuspend, if set, is told about each machine held after a soft
	// failure (tests inspect it).
	onSuspend func(*machine.Machine)
	// maxUpload caps one file a build machine uploads (zero:
	// MaxTaskUpload; tests lower it to reach the cap quickly).
	maxUpload int64
	// maxUploadTar caps upload.tar (zero: maxUploadTar).
	maxUploadTar int64
	// onBoot, if set, is told each attempt's snapshot before QEMU starts
	// (tests check that a retry boots a fresh one).
	onBoot func(snapshot string, attempt int)

	// After its bootstrap upload a worker powers off by itself within
	// powerOffWait; then the power button is pressed and it has
	// powerButtonGrace (zero: the defaults below; tests shorten them).
	powerOffWait, powerButtonGrace time.Duration
}

// taskRAM is the RAM a machine gets: --build-ram, lowered to the machine's
// ram-maximum.
func taskRAM(o *Options, h manifest.MachineHeader) uint64 {
	if h.RAMMaximum > 0 && h.RAMMaximum < o.RAM {
		return h.RAMMaximum
	}
	return o.RAM
}

// machineConfig is the QEMU configuration for one boot.
func (v *VMs) machineConfig(mc manifest.Machine, dir, mode string, cpus int) machine.Config {
	o := v.Opts
	oem := []string{"bbot.tftp=" + v.TFTPEndpoint, "bbot.mode=" + mode}
	cfg := machine.Config{
		QEMU:          o.QEMU,
		Name:          mc.Name,
		Dir:           dir,
		RunDir:        v.runDir,
		Accel:         v.Accel.Current(),
		CPUs:          cpus,
		RAM:           taskRAM(o, mc.MachineHeader),
		Network:       o.Network,
		MAC:           mc.MAC,
		Options:       mc.Options,
		ConsoleLogMax: machine.DefaultConsoleLogMax,
		// VNC on <run-dir>/<instance>/vnc.sock, never TCP: guests on user
		// networking reach the host's loopback.
		VNC:     true,
		Sandbox: true,
		RunAs:   o.QEMURunAs(),
	}
	if o.Network == "bridge" {
		cfg.Tap = v.tap
		oem = append(oem, "bbot.ip="+v.GuestIP, "bbot.gw="+v.GatewayIP)
		if cfg.MAC == "" {
			cfg.MAC = SlotMAC(mc.Name, v.offset)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); err == nil {
		cfg.Disk = "disk.img"
	}
	cfg.OEMStrings = oem
	return cfg
}

// bridgeAddresses derives the TFTP bind address, the guest's address and
// the gateway from the bridge's IPv4 network: the guest gets the first
// address of its slot's block (GuestBlock: the address plan).
func bridgeAddresses(o *Options, plan SlotPlan) (bind, guest, gw string, err error) {
	ifi, err := net.InterfaceByName(o.Bridge)
	if err != nil {
		return "", "", "", err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return "", "", "", err
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.To4() == nil {
			continue
		}
		ones, _ := ipn.Mask.Size()
		addr, _ := netip.AddrFromSlice(ipn.IP.To4())
		first, err := GuestBlock(netip.PrefixFrom(addr, ones), o.GuestRange, o.ToolchainNum, plan.Instance)
		if err != nil {
			return "", "", "", err
		}
		return addr.String(), fmt.Sprintf("%s/%d", first, ones), addr.String(), nil
	}
	return "", "", "", fmt.Errorf("bridge %s has no IPv4 address", o.Bridge)
}

func (v *VMs) dropTap() {
	if v.Opts.Network == "bridge" {
		machine.DeleteTap(v.tap)
	}
}

// redirects says whether sessions redirect unmodified bbot workers' TFTP
// (196.254.111.222:69) to the slot: in bridge mode, always.
func (v *VMs) redirects() bool { return v.Opts.Network == "bridge" }

// redirectTable names the slot's nftables tables (bridge and ip family):
// bbot_<offset>, unique on the host like the tap.
func (v *VMs) redirectTable() string { return redirectTable(v.offset) }

func redirectTable(offset int) string { return "bbot_" + strconv.Itoa(offset) }

// redirectMark is the firewall mark of the slot's guest's frames:
// 0x62620000 ("bb") plus the offset.
func (v *VMs) redirectMark() uint32 { return redirectMark(v.offset) }

func redirectMark(offset int) uint32 { return 0x62620000 | uint32(offset) }

func (v *VMs) dropRedirect() {
	if err := machine.RemoveRedirect(v.redirectTable()); err != nil {
		v.Log.Error("removing the worker redirect", "table", v.redirectTable(), "error", err)
	}
}

// maxBootstrapUpload caps the bootstrap manifest a machine uploads.
const maxBootstrapUpload = 1 << 20

// Bootstrap runs the bootstrap session in the work snapshot (SPEC §4): GET
// from toolchains/<tc>/, PUT into bootstrap/<tc>/. The bootstrap counts
// only if the guest powered itself off after its upload (or on the power
// button) and the agent was not interrupted. A guest fault is returned as
// an *inventory.HeldError, which holds the machine until it is released.
func (v *VMs) Bootstrap(ctx context.Context, req inventory.BootstrapRequest) (manifest.Bootstrap, error) {
	o := v.Opts
	s := &session{v: v, mode: "bootstrap", mc: req.Machine, source: req.Image, snapshot: req.Snapshot, fixed: true,
		get: filepath.Join(o.TFTP, "toolchains", o.ToolchainName), put: v.bootstrapPut, cpus: o.CPU,
		names: []string{"manifest"}, startup: o.BootstrapStartup, timeout: o.BootstrapTimeout, retries: o.BootstrapRetries,
		maxFile: maxBootstrapUpload, maxTotal: 16 * maxBootstrapUpload}
	rep := s.run(ctx)
	if rep.ev == evResult {
		// The worker powers off by itself; give it time, then press the
		// button. Forced down, it may not have finished writing its disk.
		wait, grace := v.powerOffWait, v.powerButtonGrace
		if wait == 0 {
			wait, grace = 300*time.Second, 60*time.Second
		}
		// Both waits are bounded: the watchdog counts them as progress.
		defer heartOf(ctx).busy(wait + grace + time.Minute)()
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := s.m.Wait(wctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			rep = sessionReport{ev: evInterrupted, why: "interrupted while the bootstrapped machine powered off"}
		case errors.Is(err, context.DeadlineExceeded):
			if err := s.m.Shutdown(ctx, grace); err != nil {
				rep = sessionReport{ev: evForcedOff, why: "the machine did not power off after its bootstrap upload: " + err.Error()}
			} else if werr := s.m.Wait(context.Background()); werr != nil {
				rep = sessionReport{ev: evForcedOff, why: "QEMU ended abnormally after the power button: " + werr.Error()}
			}
		case err != nil:
			// QEMU died (crashed, killed): not a power-off by the guest.
			rep = sessionReport{ev: evForcedOff, why: "QEMU ended abnormally after the bootstrap upload: " + err.Error()}
		}
		if ctx.Err() != nil {
			rep = sessionReport{ev: evInterrupted, why: "interrupted while the bootstrapped machine powered off"}
		}
	}
	oc := decideOutcome(bootstrapPhase, rep.ev)
	if oc.Hold {
		why := "bootstrap: " + rep.why
		return manifest.Bootstrap{}, &inventory.HeldError{Why: why, Hold: func(hctx context.Context) {
			if v.onHeld != nil {
				v.onHeld()
			}
			s.hold(hctx, why)
			s.teardown()
		}}
	}
	defer s.teardown()
	if !oc.Publish {
		return manifest.Bootstrap{}, &inventory.BootstrapError{Event: rep.ev.String(), Why: rep.why, Host: oc.Backoff == hostBackoff}
	}
	f, err := os.Open(filepath.Join(s.put, rep.name))
	if err != nil {
		return manifest.Bootstrap{}, err
	}
	defer f.Close()
	return manifest.ParseBootstrap(f, "bootstrap manifest")
}

// maxTaskUpload caps one file a build machine uploads.
const maxTaskUpload = 64 << 20

// errMachineExited means the machine powered off without a result.
var errMachineExited = errors.New("machine exited without uploading a result")

// waitAlive waits for the first TFTP request (the machine booted).
func waitAlive(ctx context.Context, q *eventQueue, startup time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, startup)
	defer cancel()
	if _, err := q.peek(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errStartupTimeout
	}
	return nil
}

// completed returns a queued upload-completed event for one of names.
func (q *eventQueue) completed(names []string) (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range q.events {
		if e.Kind == tftp.UploadCompleted {
			if n, err := tftp.CleanName(e.Name); err == nil && containsString(names, n) {
				return n, true
			}
		}
	}
	return "", false
}

// consoleTail returns the last lines of a console log for diagnostics.
func consoleTail(path string, lines int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s := strings.TrimRight(string(data), "\n")
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n") + "\n"
}
