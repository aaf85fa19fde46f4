package agent

import (
	"context"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/agent/result"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// New builds the agent from the options. It does no I/O beyond reading
// the --auth-key (warning if its mode lets others read it) and looking up
// --qemu-user and the --bridge's address: directories, the journal and the TFTP port are taken by
// Run (and the one-shot modes) when a session needs them. Its errors are
// *ConfigError: the options parsed, the host does not fit them.
func New(o *Options, log *slog.Logger) (*Agent, error) {
	a := &Agent{Opts: o, Log: log, Version: agentVersion(), hearts: &supervisor{}}
	a.Name, _ = os.Hostname()
	if o.AuthKey != "" {
		key, err := controller.LoadKey(o.AuthKey)
		if err != nil {
			return nil, &ConfigError{&OptionError{Option: "auth-key", Value: o.AuthKey, Reason: err.Error()}}
		}
		a.Key = key
		if fi, err := os.Stat(o.AuthKey); err == nil && controller.KeyFileExposed(fi.Mode()) {
			log.Warn("the --auth-key file is accessible to its group or others; make it readable by its owner only (chmod 600)",
				"path", o.AuthKey, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
		}
		if a.Fingerprint, err = controller.Fingerprint(&key.PublicKey); err != nil {
			return nil, &ConfigError{&OptionError{Option: "auth-key", Value: o.AuthKey, Reason: err.Error()}}
		}
	}
	if u := o.QEMURunAs(); u != "" {
		if _, err := user.Lookup(u); err != nil {
			return nil, &ConfigError{&OptionError{Option: "qemu-user", Value: u, Reason: err.Error()}}
		}
	} else if os.Geteuid() == 0 {
		log.Warn("--qemu-user is empty: QEMU runs as root (still under -sandbox)")
	}

	if o.Network == "bridge" && !o.FakeBootstrap && !o.FakeBuild && o.FakeMachine == "" {
		if err := machine.HaveNFT(); err != nil {
			return nil, &ConfigError{err}
		}
	}
	accel := &machine.Accel{Requested: o.Accel, StateFile: filepath.Join(o.StateDir, "accel"), Log: log}
	hooks := &vmHooks{}
	// Zero values (a Go caller's Options) mean the defaults.
	o.Instance, o.Slots = max(o.Instance, 1), max(o.Slots, 1)
	slots := o.Slots
	for i := o.Instance; i < o.Instance+slots; i++ {
		plan := PlanSlot(o, i)
		vms := &VMs{Opts: o, Log: log.With("slot", i), Accel: accel, instance: i, runDir: plan.RunDir, tap: plan.Tap,
			offset: plan.Offset, bootstrapPut: plan.TFTPBootstrapPut, vmHooks: hooks, evict: make(chan struct{}, 1)}
		var err error
		if vms.bind, vms.TFTPEndpoint, vms.GuestIP, vms.GatewayIP, err = tftpBind(o, plan); err != nil {
			// Every tftpBind error is the bridge's: missing, no IPv4, or
			// its network does not hold the guest addresses.
			return nil, &ConfigError{err}
		}
		sl := &slot{plan: plan, vms: vms, dirs: newTaskDirs(o.TFTP, plan), log: vms.Log}
		vms.onHeld = func() { a.markHeld(sl) }
		a.slots = append(a.slots, sl)
	}
	if err := checkAuxiliaryHost(o, a.plans()); err != nil {
		return nil, &ConfigError{err}
	}
	if len(a.slots) == 1 {
		// One slot: logs need no slot attribute.
		a.slots[0].log, a.slots[0].vms.Log = log, log
	}
	a.VMs = a.slots[0].vms
	a.changed = make(chan struct{}, 1)

	var boot inventory.Bootstrapper = a.VMs
	if o.FakeBootstrap {
		boot = inventory.FakeBootstrapper{Version: a.Version}
	}
	a.Enumerator = &inventory.Enumerator{Root: o.Machines, ToolchainName: o.ToolchainName, ToolchainID: o.ToolchainID,
		AgentVersion: o.ToolchainVer, Bootstrapper: boot, Log: log,
		OnHostFault: func(why string) { a.applyBackoff(decideOutcome(bootstrapPhase, evHostFault), "", why) }}

	httpClient := &http.Client{
		Timeout: o.RequestTimeout,
		Transport: &http.Transport{
			Proxy:       http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{Timeout: o.ConnectTimeout}).DialContext,
		},
	}
	a.Client = &controller.Client{Controllers: o.Controllers, HTTP: httpClient, Retries: o.RequestRetries, Log: log,
		Min: time.Second, Max: 60 * time.Second, Rand: newRand(), UserAgent: UserAgent()}
	a.Sender = &journal.Sender{Client: httpClient, TTL: o.ResultTTL, Failed: journal.FailedDir(o.StateDir), Log: log, UserAgent: UserAgent(),
		Min: time.Second, Max: 5 * time.Minute, AbortForm: result.AbortForm, Finalize: finalizeBody,
		Delivered: func(*journal.Entry) { crash.Point("after-post") }, Watchdog: senderWatchdog{a.hearts},
		UploadDelivered: func(*journal.Entry) { crash.Point("after-upload-post") }}
	return a, nil
}

func agentVersion() manifest.StandardVersion {
	v, err := manifest.ParseStandardVersion(Version)
	if err != nil {
		panic(err)
	}
	return v
}

func newRand() *mathrand.Rand {
	return mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
}

// LevelNotice is the level of the events shown at the default verbosity
// (start-up, tasks received and delivered, bootstraps).
const LevelNotice = logx.LevelNotice

// LogStartup says, at the default verbosity, what this agent is: its
// controllers, key fingerprint, paths, slots and accelerator.
func (a *Agent) LogStartup() {
	o := a.Opts
	var urls []string
	for _, c := range o.Controllers {
		if c.Priority != 0 {
			urls = append(urls, strconv.Itoa(int(c.Priority))+"="+c.URL)
		} else {
			urls = append(urls, c.URL)
		}
	}
	fp := a.Fingerprint
	if fp == "" {
		fp = "none (no --auth-key)"
	}
	a.Log.Log(context.Background(), LevelNotice, "bbot-agent started",
		"version", Version, "toolchain", o.ToolchainName, "toolchain-num", o.ToolchainNum,
		"controllers", strings.Join(urls, " "), "fingerprint", fp,
		"machines", o.Machines, "tftp", o.TFTP, "state-dir", o.StateDir, "run-dir", o.RunDir,
		"instances", fmt.Sprintf("%d..%d", o.Instance, o.Instance+o.Slots-1), "tftp-endpoint", a.VMs.TFTPEndpoint)
	acc := a.VMs.Accel
	if acc.Requested == "auto" && acc.StateFile != "" {
		if data, err := os.ReadFile(acc.StateFile); err == nil {
			a.Log.Log(context.Background(), LevelNotice, "accelerator: learned earlier that kvm mis-boots here, using "+strings.TrimSpace(string(data)),
				"state", acc.StateFile, "reset", "rm "+acc.StateFile+" (or pass --accel kvm)")
			return
		}
	}
	a.Log.Log(context.Background(), LevelNotice, "accelerator", "requested", acc.Requested, "next", acc.Current())
}
