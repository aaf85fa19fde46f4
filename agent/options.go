// Package agent is the bbot agent proper: the daemon that offers the
// machines agent/inventory finds to the controllers agent/controller asks,
// prepares tasks, runs the machine sessions and handles their results. It is
// wired together only by cmd/bbot-agent.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// Version is the bbot release whose protocol this agent implements; it is
// also the bbot-version a bootstrapped machine must report (at least).
const Version = "0.17.0"

// Options are the agent's settings, named after bbot-agent's options.
type Options struct {
	Machines      string // machine volumes root
	TFTP          string // TFTP root
	TFTPPort      int    // base port; instance i listens on TFTPPort+Offset(ToolchainNum, i)
	TFTPAddress   string // bind address override
	ToolchainName string
	ToolchainNum  int
	ToolchainVer  manifest.StandardVersion
	ToolchainID   string

	BootstrapStartup time.Duration
	BootstrapTimeout time.Duration
	BootstrapRetries int
	BuildStartup     time.Duration
	BuildTimeout     time.Duration
	BuildRetries     int

	// This process runs up to Slots tasks at once, as bbot's instances
	// Instance..Instance+Slots-1; InstanceMax (0: none) caps the tasks
	// running at once across all processes of the toolchain on the host.
	Slots       int
	Instance    int
	InstanceMax int

	CPU int
	RAM uint64 // KiB (--build-ram)

	AuxiliaryCPU       int
	AuxiliaryRAM       uint64 // KiB, in all, for one task's auxiliary machines; 0: none
	BootstrapAuxiliary time.Duration
	// AuxiliaryRange (ADDR/LEN, "" for DefaultAuxiliaryRange) holds every
	// slot's private network for its auxiliary machines.
	AuxiliaryRange string

	Interactive        string // "false", "true" or "both": sent as interactive-mode (README "Interactive builds")
	InteractiveTimeout time.Duration

	// Accepted for bbot compatibility and ignored: the agent signs and
	// fingerprints in Go.
	OpenSSL        string
	OpenSSLOptions []string

	// Admission of tasks: the running tasks' CPUs may not exceed the host's
	// hardware threads times CPUOvercommit, nor their RAM the host's
	// memory minus RAMReserve.
	CPUOvercommit float64
	RAMReserve    uint64 // KiB

	// GuestRange (ADDR/LEN, "" for the upper half of the bridge's network)
	// is where --network bridge guest addresses come from (see GuestBlock).
	GuestRange string

	ConnectTimeout time.Duration
	RequestTimeout time.Duration
	RequestRetries int

	Trust   []string // replaces the task's trust values when non-empty
	AuthKey string   // PEM file

	SystemdDaemon bool
	Verbose       int
	LogFormat     string // "text" (the default) or "json"

	FakeBootstrap bool
	FakeBuild     bool
	FakeMachine   string
	FakeRequest   string
	DumpMachines  bool
	DumpTask      bool
	DumpResult    bool

	// Admin commands on the machine a running agent holds suspended.
	ShowSuspended bool
	Release       bool
	Resume        bool
	ShowStatus    bool   // --status: what the running agent does
	ShowResults   bool   // --results: the journal and failed/, read-only
	Resend        string // --resend ID: queue a failed result for sending again
	// --toolchains lists every toolchain's bootstrapped snapshots; --retire
	// TC removes TC's; --retire-unused removes those of toolchains no
	// agent ran for RetireAfter.
	ShowToolchains bool
	Retire         string
	RetireUnused   bool
	RetireAfter    time.Duration

	QEMU           string // QEMU binary (default qemu-system-x86_64 on PATH)
	QEMUUser       string // -runas user when the agent is root; "" keeps QEMU root
	Network        string // "bridge" or "user"
	Bridge         string
	Accel          string // "auto", "kvm" or "tcg"
	StateDir       string
	RunDir         string
	PollInterval   time.Duration
	SuspendTimeout time.Duration // 0 = hold a suspended machine forever
	SuspendMax     int           // held machines kept at most, the oldest released first (0: no cap)
	ResultTTL      time.Duration
	// FailedTTL: results in failed/ older than this are purged (0: kept
	// forever).
	FailedTTL time.Duration
	// MinFree (KiB) is the free-space floor of the machines, TFTP and
	// state filesystems: below it no bootstrap or task starts (0: none).
	MinFree uint64
	Metrics string // HOST:PORT serving Prometheus /metrics (daemon only); "" = off

	Controllers []controller.Controller
}

// DefaultRetireAfter is --retire-after's default: a toolchain no agent ran
// for 30 days is unused.
const DefaultRetireAfter = 30 * 24 * time.Hour

// maxSeconds bounds every duration option but --failed-ttl (a retention,
// not a wait): a week. Longer time limits,
// intervals or holds are mistakes (a unit confusion), and time arithmetic on
// them stays far from overflowing.
const maxSeconds = 7 * 24 * 3600

// Range is an option's accepted values, inclusive. Bounds are float64 so
// that one table holds the integer options and --cpu-overcommit; every
// integer bound is exact in a float64.
type Range struct{ Min, Max float64 }

func (r Range) String() string { return formatBound(r.Min) + ".." + formatBound(r.Max) }

// Contains is false for NaN.
func (r Range) Contains(v float64) bool { return v >= r.Min && v <= r.Max }

func formatBound(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

// Ranges are the accepted values of the numeric options, by option name;
// durations are in seconds. --tftp-port is also limited by the instances
// (see PlanSlot: the port is offset per instance). cmd/bbot-agent shows them
// in --help.
var Ranges = map[string]Range{
	"tftp-port":     {1, 65534},
	"toolchain-num": {1, 99}, // bbot's limit: it offsets ports and interface names
	// bbot's limits too (Offset); instances Instance..Instance+Slots-1
	// must all be within them.
	"slots":        {1, 99},
	"instance":     {1, 99},
	"instance-max": {0, 99}, // 0: no cap beyond the claimed instances
	"suspend-max":  {0, 99}, // 0: no cap (at most one hold per slot anyway)
	// Each bootstrap or build retry is a whole VM start (up to its startup
	// timeout); each request retry waits up to a backoff maximum: 100 keeps
	// the worst case to hours, not forever, and above bbot's usual values.
	"bootstrap-retries":   {0, 100},
	"build-retries":       {0, 100},
	"request-retries":     {0, 100},
	"cpu":                 {1, 1024},        // QEMU's -smp limit on x86 is of this order
	"build-ram":           {65536, 1 << 30}, // KiB: 64 MiB (machine.Config's minimum) .. 1 TiB
	"auxiliary-cpu":       {1, 1024},
	"auxiliary-ram":       {0, 1 << 30}, // KiB; 0: no auxiliary machines
	"cpu-overcommit":      {0.1, 16},
	"ram-reserve":         {0, 1 << 30}, // KiB
	"min-free":            {0, 1 << 40}, // KiB: up to 1 PiB
	"verbose":             {0, 6},
	"bootstrap-startup":   {1, maxSeconds},
	"bootstrap-timeout":   {1, maxSeconds},
	"build-startup":       {1, maxSeconds},
	"build-timeout":       {1, maxSeconds},
	"connect-timeout":     {1, maxSeconds},
	"request-timeout":     {1, maxSeconds},
	"poll-interval":       {1, maxSeconds},
	"result-ttl":          {1, maxSeconds},
	"failed-ttl":          {0, 366 * 86400}, // 0: keep forever; a year at most, past a week like no other
	"retire-after":        {86400, 366 * 86400},
	"suspend-timeout":     {0, maxSeconds}, // 0: hold forever
	"bootstrap-auxiliary": {1, maxSeconds},
	"interactive-timeout": {1, maxSeconds},
}

// OptionError is a bad option value; it names the option.
type OptionError struct {
	Option string
	Value  string
	Reason string
}

func (e *OptionError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("--%s: %s", e.Option, e.Reason)
	}
	return fmt.Sprintf("invalid --%s value '%s': %s", e.Option, e.Value, e.Reason)
}

// Validate checks option values and fills the defaults that depend on other
// options (the state and run directories).
func (o *Options) Validate() error {
	if err := validateToolchainName(o.ToolchainName); err != nil {
		return err
	}
	type numeric struct {
		name  string
		v     float64
		shown string // as given: a large uint64 is not exact as a float64
		unit  string
	}
	whole := func(name string, v int) numeric { return numeric{name, float64(v), strconv.Itoa(v), ""} }
	size := func(name string, v uint64) numeric {
		return numeric{name, float64(v), strconv.FormatUint(v, 10), " KiB"}
	}
	for _, n := range []numeric{
		whole("toolchain-num", o.ToolchainNum), whole("slots", o.Slots), whole("instance", o.Instance),
		whole("instance-max", o.InstanceMax), whole("suspend-max", o.SuspendMax), whole("verbose", o.Verbose), whole("cpu", o.CPU),
		whole("auxiliary-cpu", o.AuxiliaryCPU), whole("bootstrap-retries", o.BootstrapRetries),
		whole("build-retries", o.BuildRetries), whole("request-retries", o.RequestRetries),
		size("build-ram", o.RAM), size("ram-reserve", o.RAMReserve), size("min-free", o.MinFree), size("auxiliary-ram", o.AuxiliaryRAM),
		{"cpu-overcommit", o.CPUOvercommit, formatBound(o.CPUOvercommit), ""},
	} {
		if r := Ranges[n.name]; !r.Contains(n.v) {
			return &OptionError{n.name, n.shown, "must be between " + formatBound(r.Min) + " and " + formatBound(r.Max) + n.unit}
		}
	}
	if last := o.Instance + o.Slots - 1; last > int(Ranges["instance"].Max) {
		return &OptionError{"slots", strconv.Itoa(o.Slots), fmt.Sprintf("instances %d..%d: the last one must be at most %d, bbot's limit (it offsets ports and interface names)", o.Instance, last, int(Ranges["instance"].Max))}
	}
	// Every instance's TFTP server listens on --tftp-port plus its offset;
	// the last instance has the largest.
	if top := Offset(o.ToolchainNum, o.Instance+o.Slots-1); o.TFTPPort < 1 || o.TFTPPort > 65535-top {
		return &OptionError{"tftp-port", strconv.Itoa(o.TFTPPort), fmt.Sprintf("must be between 1 and %d: instance %d of toolchain %d listens on it plus %d", 65535-top, o.Instance+o.Slots-1, o.ToolchainNum, top)}
	}
	if err := o.validateAuxiliary(); err != nil {
		return err
	}
	switch o.Interactive {
	case "false", "true", "both":
	default:
		return &OptionError{"interactive", o.Interactive, "must be 'false', 'true' or 'both'"}
	}
	if o.GuestRange != "" {
		if _, err := parseGuestRange(o.GuestRange); err != nil {
			return err
		}
	}
	if o.TFTPAddress != "" {
		if a, err := netip.ParseAddr(o.TFTPAddress); err != nil || a.Zone() != "" {
			return &OptionError{"tftp-address", o.TFTPAddress, "expected an IP address"}
		}
	}
	if o.Metrics != "" {
		if err := validateMetrics(o.Metrics); err != nil {
			return err
		}
	}
	switch o.Network {
	case "bridge", "user":
	default:
		return &OptionError{"network", o.Network, "must be 'bridge' or 'user'"}
	}
	switch o.LogFormat {
	case "", "text", "json":
	default:
		return &OptionError{"log-format", o.LogFormat, "must be 'text' or 'json'"}
	}
	switch o.Accel {
	case "auto", "kvm", "tcg":
	default:
		return &OptionError{"accel", o.Accel, "must be 'auto', 'kvm' or 'tcg'"}
	}
	if o.RetireAfter == 0 {
		o.RetireAfter = DefaultRetireAfter // a Go caller's zero value
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"bootstrap-startup", o.BootstrapStartup}, {"bootstrap-timeout", o.BootstrapTimeout},
		{"build-startup", o.BuildStartup}, {"build-timeout", o.BuildTimeout},
		{"connect-timeout", o.ConnectTimeout}, {"request-timeout", o.RequestTimeout},
		{"poll-interval", o.PollInterval}, {"result-ttl", o.ResultTTL},
		{"suspend-timeout", o.SuspendTimeout}, {"bootstrap-auxiliary", o.BootstrapAuxiliary},
		{"interactive-timeout", o.InteractiveTimeout}, {"failed-ttl", o.FailedTTL}, {"retire-after", o.RetireAfter}} {
		r := Ranges[d.name]
		// A Min of 1 means positive, allowing the sub-second values Go
		// callers may set.
		if d.v < 0 || (r.Min > 0 && d.v == 0) || (r.Min > 1 && d.v < time.Duration(r.Min)*time.Second) || d.v > time.Duration(r.Max)*time.Second {
			return &OptionError{d.name, strconv.FormatInt(int64(d.v/time.Second), 10), "must be between " + formatBound(r.Min) + " and " + formatBound(r.Max) + " seconds"}
		}
	}
	if o.QEMUUser != "" && !machine.ValidUserName(o.QEMUUser) {
		return &OptionError{"qemu-user", o.QEMUUser, "expected a user name: letters, digits and '_', '.', '-', starting with a letter or '_', at most 32"}
	}
	for _, fp := range o.Trust {
		if !validTrust(fp) {
			return &OptionError{"trust", fp, "expected a SHA256 fingerprint (XX:XX:... in hex) or 'yes'"}
		}
	}
	if o.StateDir == "" {
		o.StateDir = filepath.Join("/var/lib/bbot-agent", o.ToolchainName)
	}
	if o.RunDir == "" {
		o.RunDir = DefaultRunDir(o.ToolchainName)
	}
	// Each slot's QMP sockets live in <run-dir>/<instance>/: they must fit
	// in a UNIX socket path, checked now rather than at every task.
	if abs, err := filepath.Abs(o.RunDir); err == nil && len(abs)+3 > machine.MaxRunDir {
		return &OptionError{"run-dir", o.RunDir, fmt.Sprintf("too long: its sockets <run-dir>/<instance>/%s must fit in %d bytes", machine.ConsoleSocketName, machine.MaxRunDir+1+len(machine.ConsoleSocketName))}
	}
	// --fake-machine without --fake-request is bbot's worker-development
	// mode against the controllers (or --dump-machines prints it).
	if o.FakeMachine == "-" && o.FakeRequest == "-" {
		return &OptionError{"fake-machine", "-", "--fake-request reads stdin already"}
	}
	if (o.DumpTask || o.DumpResult) && o.FakeRequest == "" && len(o.Controllers) == 0 {
		return errors.New("--dump-task and --dump-result need --fake-request or a controller URL")
	}
	if len(o.Controllers) == 0 && o.FakeRequest == "" && !o.DumpMachines && !o.AdminCommand() {
		return errors.New("no controller URL specified")
	}
	return nil
}

// validateMetrics checks a --metrics address: HOST:PORT, HOST optional
// (all addresses) and bracketed for IPv6.
func validateMetrics(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return &OptionError{"metrics", addr, "expected HOST:PORT (e.g. 127.0.0.1:9464)"}
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return &OptionError{"metrics", addr, "expected a port number between 0 and 65535"}
	}
	return nil
}

// maxToolchainName is the longest --toolchain-name accepted: it becomes part
// of file names (<machine>-<toolchain>~<random>), which are limited to 255
// bytes.
const maxToolchainName = inventory.MaxToolchainName

// toolchainName is the --toolchain-name character set: ASCII letters, digits
// and '_', '.', '+', '-', starting with a letter or digit.
var toolchainName = inventory.ToolchainNameChars

// protocolLike matches names that would collide with the admin's machine
// names: <machine>-<P> is the link to the image and <machine>-<P>.<R> the
// image itself (inventory.BootstrapProtocol is P), so all-digit names and names
// starting with digits and a dot are refused.
var protocolLike = inventory.ProtocolLike

// validateToolchainName checks a --toolchain-name value: it names the
// bootstrapped snapshot <machine>-<toolchain> beside the admin's images and
// the TFTP directories the agent creates and deletes, so it must stay one
// harmless path component.
func validateToolchainName(name string) error {
	bad := func(reason string) error { return &OptionError{"toolchain-name", name, reason} }
	switch {
	case name == "":
		return &OptionError{"toolchain-name", "", "must not be empty"}
	case len(name) > maxToolchainName:
		return bad(fmt.Sprintf("longer than %d characters", maxToolchainName))
	case !toolchainName.MatchString(name):
		return bad("only letters, digits and '_', '.', '+', '-' allowed, starting with a letter or digit")
	case protocolLike.MatchString(name):
		return bad("must not be a number or start with digits and '.' (names <machine>-" + inventory.BootstrapProtocol + " and <machine>-" + inventory.BootstrapProtocol + ".<R> are the machine's own)")
	}
	return nil
}

// QEMURunAs is the user QEMU switches to (-runas): --qemu-user when the
// agent runs as root, none otherwise (an unprivileged QEMU cannot setuid,
// and already runs as the agent's user).
func (o *Options) QEMURunAs() string {
	if os.Geteuid() != 0 {
		return ""
	}
	return o.QEMUUser
}

// AdminCommand reports whether an admin command was asked for.
func (o *Options) AdminCommand() bool {
	return o.ShowSuspended || o.Release || o.Resume || o.ShowStatus || o.ShowResults || o.Resend != "" ||
		o.ShowToolchains || o.Retire != "" || o.RetireUnused
}

func validTrust(fp string) bool {
	if fp == "yes" {
		return true
	}
	parts := strings.Split(fp, ":")
	if len(parts) != 32 {
		return false
	}
	for _, p := range parts {
		if len(p) != 2 {
			return false
		}
		if _, err := strconv.ParseUint(p, 16, 8); err != nil {
			return false
		}
	}
	return true
}
