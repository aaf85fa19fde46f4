package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// VMs runs machines for bootstraps and tasks: one TFTP server, whose
// mapping is switched per machine, and the QEMU settings.
type VMs struct {
	Opts  *Options
	Log   *slog.Logger
	TFTP  *tftp.Server
	Accel *machine.Accel

	// TFTPEndpoint is what the guest is told (bbot.tftp): 10.0.2.2:<port>
	// with user networking, the bind address with bridge networking.
	TFTPEndpoint string
	// GuestIP (ADDR/PREFIX) and GatewayIP are the guest's bbot.ip and
	// bbot.gw in bridge mode.
	GuestIP, GatewayIP string

	// onSuspend, if set, is told about each machine held after a soft
	// failure (tests inspect it).
	onSuspend func(*machine.Machine)
}

// machineConfig is the QEMU configuration for one boot.
func (v *VMs) machineConfig(mc manifest.Machine, dir, mode string) machine.Config {
	o := v.Opts
	oem := []string{"bbot.tftp=" + v.TFTPEndpoint, "bbot.mode=" + mode}
	cfg := machine.Config{
		Name:          mc.Name,
		Dir:           dir,
		RunDir:        o.RunDir,
		Accel:         v.Accel.Current(),
		CPUs:          o.CPU,
		RAM:           o.RAM,
		Network:       o.Network,
		MAC:           mc.MAC,
		Options:       mc.Options,
		ConsoleLogMax: machine.DefaultConsoleLogMax,
	}
	if o.Network == "bridge" {
		cfg.Tap = "bb" + strconv.Itoa(o.ToolchainNum)
		oem = append(oem, "bbot.ip="+v.GuestIP, "bbot.gw="+v.GatewayIP)
		if cfg.MAC == "" {
			cfg.MAC = derivedMAC(mc.Name, o.ToolchainNum)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "disk.img")); err == nil {
		cfg.Disk = "disk.img"
	}
	cfg.OEMStrings = oem
	return cfg
}

// derivedMAC is a stable locally administered MAC for a machine and slot.
func derivedMAC(name string, num int) string {
	sum := AgentChecksum(name, strconv.Itoa(num), "")
	return fmt.Sprintf("02:%s:%s:%s:%s:%02x", sum[0:2], sum[2:4], sum[4:6], sum[6:8], num)
}

// BridgeAddresses derives the TFTP bind address, the guest's address and
// the gateway from the bridge's IPv4 network: guest = network + 100 +
// toolchain number (SPEC §6).
func BridgeAddresses(bridge string, num int) (bind, guest, gw string, err error) {
	ifi, err := net.InterfaceByName(bridge)
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
		netIP := ipn.IP.To4().Mask(ipn.Mask)
		g := make(net.IP, 4)
		copy(g, netIP)
		g[3] += byte(100 + num)
		return ipn.IP.String(), fmt.Sprintf("%s/%d", g, ones), ipn.IP.String(), nil
	}
	return "", "", "", fmt.Errorf("bridge %s has no IPv4 address", bridge)
}

// boot starts a machine and waits for its first TFTP request, retrying a
// mis-boot up to retries times. The mapping must already be installed.
func (v *VMs) boot(ctx context.Context, mc manifest.Machine, dir, mode string, q *EventQueue, startup time.Duration, retries int) (*machine.Machine, error) {
	for attempt := 0; ; attempt++ {
		cfg := v.machineConfig(mc, dir, mode)
		if v.Opts.Network == "bridge" {
			if err := machine.CreateTap(cfg.Tap, v.Opts.Bridge); err != nil {
				return nil, err
			}
		}
		m, err := machine.Start(ctx, cfg, v.Log)
		if err != nil {
			v.dropTap()
			return nil, err
		}
		err = WaitAlive(ctx, q, startup)
		if err == nil {
			v.Accel.Booted(cfg.Accel)
			return m, nil
		}
		if !errors.Is(err, ErrStartupTimeout) {
			m.ForceDown()
			v.dropTap()
			return nil, err
		}
		v.Accel.MisBooted(cfg.Accel)
		v.Log.Warn("machine mis-booted", "machine", mc.Name, "accel", cfg.Accel, "attempt", attempt+1, "console", cfg.ConsolePath())
		if attempt >= retries {
			// Still running: the caller suspends it for inspection.
			return m, fmt.Errorf("%w (%d attempts)", ErrStartupTimeout, attempt+1)
		}
		m.ForceDown()
		v.dropTap()
	}
}

func (v *VMs) dropTap() {
	if v.Opts.Network == "bridge" {
		machine.DeleteTap("bb" + strconv.Itoa(v.Opts.ToolchainNum))
	}
}

// holdSuspended is the soft failure: pause the machine, tell the admin how
// to reach it, and hold the slot until QEMU exits or the suspend timeout
// passes (0 = forever) or ctx ends; then force it down.
func (v *VMs) holdSuspended(ctx context.Context, m *machine.Machine, snapshot, why string) {
	info := m.Info()
	if err := m.Suspend(ctx); err != nil && !errors.Is(err, machine.ErrExited) {
		v.Log.Error("suspending machine failed", "error", err)
	}
	select {
	case <-m.Exited():
		return
	default:
	}
	v.Log.Warn("machine suspended for inspection: "+why,
		"snapshot", snapshot, "console", info.ConsoleLog, "qmp", info.AdminSocket, "pid", info.PID,
		"release", fmt.Sprintf("bbot-agent --run-dir %s --release (or kill %d)", v.Opts.RunDir, info.PID))
	rec := Suspended{PID: info.PID, Snapshot: snapshot, ConsoleLog: info.ConsoleLog, AdminSocket: info.AdminSocket, Since: time.Now().UTC(), Reason: why}
	if err := writeSuspended(v.Opts.RunDir, rec); err != nil {
		v.Log.Error("recording the suspended machine", "error", err)
	}
	defer os.Remove(filepath.Join(v.Opts.RunDir, SuspendedFile))
	if v.onSuspend != nil {
		v.onSuspend(m)
	}
	var timeout <-chan time.Time
	if v.Opts.SuspendTimeout > 0 {
		t := time.NewTimer(v.Opts.SuspendTimeout)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-m.Exited():
		v.Log.Info("suspended machine released", "snapshot", snapshot)
	case <-timeout:
		v.Log.Warn("suspend timeout passed, releasing machine", "snapshot", snapshot)
	case <-ctx.Done():
	}
	m.ForceDown()
}

// Bootstrap boots the work snapshot in bootstrap mode: GET from
// toolchains/<tc>/, PUT into bootstrap/<tc>/ (SPEC §4).
func (v *VMs) Bootstrap(ctx context.Context, req BootstrapRequest) (manifest.Bootstrap, error) {
	o := v.Opts
	get := filepath.Join(o.TFTP, "toolchains", o.ToolchainName)
	put := filepath.Join(o.TFTP, "bootstrap", o.ToolchainName)
	if err := removeOwned(o.TFTP, put); err != nil {
		return manifest.Bootstrap{}, err
	}
	if err := os.MkdirAll(put, 0o755); err != nil {
		return manifest.Bootstrap{}, err
	}
	defer removeOwned(o.TFTP, put)
	if err := os.MkdirAll(get, 0o755); err != nil {
		return manifest.Bootstrap{}, err
	}
	mp, err := tftp.NewMapping(get, put)
	if err != nil {
		return manifest.Bootstrap{}, err
	}
	defer mp.Close()
	q := NewEventQueue()
	mp.Notify, mp.Log = q.Notify, v.Log
	v.TFTP.SetHandler(mp)
	defer v.TFTP.SetHandler(nil)

	m, err := v.boot(ctx, req.Machine, req.Snapshot, "bootstrap", q, o.BootstrapStartup, o.BootstrapRetries)
	if err != nil {
		if m != nil { // retries exhausted: soft fail
			v.holdSuspended(ctx, m, req.Snapshot, "bootstrap: "+err.Error())
			m.ForceDown()
			v.dropTap()
		}
		return manifest.Bootstrap{}, err
	}
	defer v.dropTap()
	defer m.ForceDown()
	name, err := WaitUploadOrExit(ctx, q, []string{"manifest"}, o.BootstrapTimeout, m.Exited())
	if err != nil {
		if errors.Is(err, ErrBuildTimeout) {
			v.holdSuspended(ctx, m, req.Snapshot, "bootstrap timed out")
		}
		return manifest.Bootstrap{}, fmt.Errorf("bootstrap: %w", err)
	}
	// The worker powers off by itself; give it time, then press the
	// button, then force.
	wctx, cancel := context.WithTimeout(ctx, 300*time.Second)
	if m.Wait(wctx) != nil && ctx.Err() == nil {
		m.Shutdown(ctx, 60*time.Second)
	}
	cancel()
	f, err := os.Open(filepath.Join(put, name))
	if err != nil {
		return manifest.Bootstrap{}, err
	}
	defer f.Close()
	return manifest.ParseBootstrap(f, "bootstrap manifest")
}

// MaxTaskUpload caps one file a build machine uploads.
const MaxTaskUpload = 64 << 20

// ErrMachineExited means the machine powered off without a result.
var ErrMachineExited = errors.New("machine exited without uploading a result")

// WaitUploadOrExit waits for one of names to be uploaded, the machine to
// exit (ErrMachineExited) or the timeout (ErrBuildTimeout).
func WaitUploadOrExit(ctx context.Context, q *EventQueue, names []string, timeout time.Duration, exited <-chan struct{}) (string, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-exited:
			cancel()
		case <-wctx.Done():
		}
	}()
	name, err := WaitUpload(wctx, q, names, 0, timeout)
	if err != nil && ctx.Err() == nil && isClosed(exited) {
		// The upload may have completed just before the power-off.
		if n, ok := q.completed(names); ok {
			return n, nil
		}
		return "", ErrMachineExited
	}
	return name, err
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// WaitAlive waits for the first TFTP request (the machine booted).
func WaitAlive(ctx context.Context, q *EventQueue, startup time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, startup)
	defer cancel()
	if _, err := q.peek(wctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return ErrStartupTimeout
	}
	return nil
}

// completed returns a queued upload-completed event for one of names.
func (q *EventQueue) completed(names []string) (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, e := range q.events {
		if e.Kind == tftp.UploadCompleted {
			if n, err := tftp.CleanName(e.Name); err == nil {
				for _, want := range names {
					if n == want {
						return n, true
					}
				}
			}
		}
	}
	return "", false
}

// Outcome is what performing a task produced.
type Outcome struct {
	Result manifest.Result
	// QEMUStarted and Uploaded time the task (zero when not reached).
	QEMUStarted, Uploaded time.Time
	// Diagnostics are the agent's own notes (timeouts, parse errors), added
	// to the result as a log when the worker gave none.
	Diagnostics string
}

// Perform runs the task in a fresh snapshot of the bootstrapped machine
// (SPEC §5) and returns the result. The machine is torn down by the
// returned function, which the caller runs in parallel with reporting.
func (v *VMs) Perform(ctx context.Context, mach *Machine, task, workerTask *manifest.Task) (Outcome, func()) {
	o := v.Opts
	out := Outcome{Result: manifest.Result{Name: task.Name(), Version: task.Version(), Status: "abort"}}
	noop := func() {}

	lock, err := LockMachine(mach.Dir)
	if err != nil || lock == nil {
		out.Diagnostics = fmt.Sprintf("machine %s is busy or cannot be locked: %v", mach.Dir, err)
		return out, noop
	}
	snapshot := TempName(mach.Bootstrapped)
	if err := btrfs.Snapshot(mach.Bootstrapped, snapshot, false); err != nil {
		lock.Close()
		out.Diagnostics = "snapshot failed: " + err.Error()
		return out, noop
	}
	dirs := NewTaskDirs(o.TFTP, o.ToolchainName)
	var m *machine.Machine
	teardown := func() {
		if m != nil {
			m.ForceDown()
		}
		v.dropTap()
		v.TFTP.SetHandler(nil)
		if err := dirs.Remove(); err != nil {
			v.Log.Error("removing task directories", "error", err)
		}
		if err := btrfs.Delete(snapshot); err != nil {
			v.Log.Error("deleting task snapshot", "path", snapshot, "error", err)
		}
		lock.Close()
	}
	if err := dirs.Create(workerTask); err != nil {
		out.Diagnostics = "creating TFTP directories: " + err.Error()
		return out, teardown
	}
	mp, err := tftp.NewMapping(dirs.Get, dirs.Put)
	if err != nil {
		out.Diagnostics = err.Error()
		return out, teardown
	}
	// A result request must stay below brep's 15 MiB; much larger uploads
	// are a misbehaving worker, cut short.
	mp.MaxFileSize, mp.MaxTotal = MaxTaskUpload, 4*MaxTaskUpload
	q := NewEventQueue()
	mp.Notify, mp.Log = q.Notify, v.Log
	v.TFTP.SetHandler(mp)
	closeMapping := func() { v.TFTP.SetHandler(nil); mp.Close() }

	mc := mach.Manifest.Machine
	m, err = v.boot(ctx, mc, snapshot, "build", q, o.BuildStartup, o.BuildRetries)
	if err != nil {
		closeMapping()
		out.Diagnostics = "machine did not start: " + err.Error()
		if ctx.Err() != nil {
			out.Result.Status = "interrupt"
		} else if errors.Is(err, ErrStartupTimeout) && m != nil {
			v.holdSuspended(ctx, m, snapshot, out.Diagnostics)
		}
		return out, teardown
	}
	out.QEMUStarted = m.Info().Started
	name, err := WaitUploadOrExit(ctx, q, ResultNames, o.BuildTimeout, m.Exited())
	switch {
	case err == nil:
		out.Uploaded = q.uploadTime()
		res, perr := ReadResult(filepath.Join(dirs.Put, name), task)
		out.Result = res
		if perr != nil {
			out.Diagnostics = "result: " + perr.Error()
		}
	case errors.Is(err, ErrBuildTimeout):
		out.Result.Status = "abort"
		out.Diagnostics = fmt.Sprintf("build timeout (%s) passed without a result", o.BuildTimeout)
	case errors.Is(err, ErrMachineExited):
		out.Result.Status = "abnormal"
		out.Diagnostics = err.Error()
	default: // interrupted
		out.Result.Status = "interrupt"
		out.Diagnostics = err.Error()
	}
	closeMapping()
	if (out.Result.Status == "abort" || out.Result.Status == "abnormal") && ctx.Err() == nil {
		v.holdSuspended(ctx, m, snapshot, out.Diagnostics)
		if ctx.Err() != nil {
			out.Result.Status = "interrupt"
		}
	}
	if ctx.Err() != nil {
		out.Result.Status = "interrupt" // SIGTERM/SIGINT: the build was cut short
	}
	if out.Diagnostics != "" {
		out.Diagnostics += "\nconsole log (" + m.Info().ConsoleLog + "), last lines:\n" + consoleTail(m.Info().ConsoleLog, 20)
	}
	return out, teardown
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
