package main

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/agent/controller"
)

// decimal is an integer flag parsed in base 10 only: urfave/cli's own integer
// flags use base 0, which would read "010" as 8.
type decimal struct{ p *int }

func (d decimal) Set(s string) error {
	v, err := strconv.Atoi(s)
	if err != nil {
		return errors.New("integer expected")
	}
	*d.p = v
	return nil
}

func (d decimal) String() string {
	if d.p == nil {
		return ""
	}
	return strconv.Itoa(*d.p)
}

// kib is an unsigned size in KiB, base 10.
type kib struct{ p *uint64 }

func (k kib) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return errors.New("unsigned integer expected")
	}
	*k.p = v
	return nil
}

func (k kib) String() string {
	if k.p == nil {
		return ""
	}
	return strconv.FormatUint(*k.p, 10)
}

// ratio is a finite decimal number.
type ratio struct{ p *float64 }

func (r ratio) Set(s string) error {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsInf(v, 0) || math.IsNaN(v) {
		return errors.New("number expected")
	}
	*r.p = v
	return nil
}

func (r ratio) String() string {
	if r.p == nil {
		return ""
	}
	return strconv.FormatFloat(*r.p, 'f', -1, 64)
}

// repeated collects every occurrence of a flag, unsplit: unlike
// cli.StringSliceFlag it keeps commas (OpenSSL options may have them).
type repeated struct{ p *[]string }

func (r repeated) Set(s string) error {
	*r.p = append(*r.p, s)
	return nil
}

func (r repeated) String() string {
	if r.p == nil {
		return ""
	}
	return strings.Join(*r.p, " ")
}

// seconds is a duration given in integer seconds, as bbot takes them.
type seconds struct{ p *time.Duration }

func (s seconds) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return errors.New("integer number of seconds expected")
	}
	*s.p = time.Duration(n) * time.Second
	return nil
}

func (s seconds) String() string {
	if s.p == nil {
		return ""
	}
	return strconv.FormatInt(int64(*s.p/time.Second), 10)
}

// defaultOptions are bbot-agent's defaults (SPEC §10).
func defaultOptions() agent.Options {
	return agent.Options{
		Machines:           "/build/machines/",
		TFTP:               "/build/tftp/",
		TFTPPort:           23400,
		ToolchainName:      "default",
		ToolchainNum:       1,
		Slots:              1,
		Instance:           1,
		BootstrapStartup:   300 * time.Second,
		BootstrapTimeout:   3600 * time.Second,
		BootstrapRetries:   2,
		BuildStartup:       60 * time.Second,
		BuildTimeout:       5400 * time.Second,
		BuildRetries:       2,
		CPU:                2,
		RAM:                2097152,
		AuxiliaryCPU:       1,
		BootstrapAuxiliary: 900 * time.Second,
		Interactive:        "false",
		InteractiveTimeout: 10800 * time.Second,
		OpenSSL:            "openssl",
		CPUOvercommit:      1,
		RAMReserve:         1048576,
		ConnectTimeout:     60 * time.Second,
		RequestTimeout:     controller.DefaultRequestTimeout,
		RequestRetries:     4,
		Verbose:            1,
		Network:            "bridge",
		Bridge:             "br1",
		Accel:              "auto",
		QEMUUser:           "nobody",
		PollInterval:       60 * time.Second,
		ResultTTL:          10800 * time.Second,
		FailedTTL:          30 * 86400 * time.Second,
		MinFree:            512 << 10,
		RetireAfter:        agent.DefaultRetireAfter,
	}
}

// The --help and man page sections. Every flag is in one (TestHelpCategories).
const (
	categoryGeneral     = "General"
	categoryMachines    = "Machines and toolchain"
	categoryTimeouts    = "Timeouts and retries"
	categoryResources   = "Resources and slots"
	categoryControllers = "Controllers and authentication"
	categoryNetwork     = "Networking and QEMU"
	categoryPaths       = "Paths and agent loop"
	categoryDryRuns     = "Dry runs"
	categoryAdmin       = "Admin commands"
	categoryLogging     = "Logging and monitoring"
)

// inCategory puts flags in category.
func inCategory(category string, flags ...cli.Flag) []cli.Flag {
	for _, f := range flags {
		switch f := f.(type) {
		case *cli.StringFlag:
			f.Category = category
		case *cli.BoolFlag:
			f.Category = category
		case *cli.GenericFlag:
			f.Category = category
		case *cli.StringSliceFlag:
			f.Category = category
		default:
			panic(fmt.Sprintf("inCategory: add %T", f))
		}
	}
	return flags
}

// flags binds every option to o. String values that need checking are
// validated by agent.Options.Validate, so errors name the option.
func flags(o *agent.Options, toolchainVer *string, trust *cli.StringSlice) []cli.Flag {
	str := func(name, usage string, p *string) cli.Flag {
		return &cli.StringFlag{Name: name, Usage: usage, Value: *p, Destination: p}
	}
	boolean := func(name, usage string, p *bool) cli.Flag {
		return &cli.BoolFlag{Name: name, Usage: usage, Destination: p}
	}
	// Numeric options show their agent.Ranges.
	num := func(name, usage string, p *int) cli.Flag {
		return &cli.GenericFlag{Name: name, Usage: usage + " (" + agent.Ranges[name].String() + ")", Value: decimal{p}}
	}
	secs := func(name, usage string, p *time.Duration) cli.Flag {
		return &cli.GenericFlag{Name: name, Usage: usage + " (in `SECONDS`, " + agent.Ranges[name].String() + ")", Value: seconds{p}}
	}
	size := func(name, usage string, p *uint64, aliases ...string) cli.Flag {
		return &cli.GenericFlag{Name: name, Aliases: aliases, Usage: usage + " (in `KiB`, " + agent.Ranges[name].String() + ")", Value: kib{p}}
	}
	return slices.Concat(
		inCategory(categoryGeneral,
			// Expanded before parsing (expandOptionsFiles): listed for
			// --help and the man page only.
			&cli.StringFlag{Name: "options-file", Usage: "read options (and URLs) from `FILE` as if given in its place: one per line, as --name value or --name=value; " +
				"lines starting with # are comments; \"...\" or '...' around a value keep its spaces (repeatable; a nested FILE is relative to its options file)"},
		),
		inCategory(categoryMachines,
			str("machines", "machine volumes `DIR`ectory", &o.Machines),
			str("toolchain-name", "toolchain `NAME`: letters, digits, _ . + -, starting with a letter or digit, at most 64, not a number or <digits>.*", &o.ToolchainName),
			num("toolchain-num", "toolchain `NUM`ber, offsets ports and interfaces", &o.ToolchainNum),
			&cli.StringFlag{Name: "toolchain-ver", Usage: "toolchain standard `VERSION`", Value: agent.Version, Destination: toolchainVer},
			str("toolchain-id", "toolchain `ID`; a change re-bootstraps every machine", &o.ToolchainID),
			num("cpu", "virtual `CPU`s per machine", &o.CPU),
			size("build-ram", "build machine RAM", &o.RAM, "ram"),
			num("auxiliary-cpu", "virtual `CPU`s per auxiliary machine", &o.AuxiliaryCPU),
			size("auxiliary-ram", "RAM all of a task's auxiliary machines share, offered as auxiliary-ram; 0 = no auxiliary machines (they need --network bridge)", &o.AuxiliaryRAM),
			str("interactive", "interactive builds `MODE`: false (none), true (only interactive) or both", &o.Interactive),
		),
		inCategory(categoryTimeouts,
			secs("bootstrap-startup", "wait this long for a bootstrapping machine's first TFTP request", &o.BootstrapStartup),
			secs("bootstrap-timeout", "bootstrap time limit", &o.BootstrapTimeout),
			num("bootstrap-retries", "up to `N` bootstrap mis-boot retries", &o.BootstrapRetries),
			secs("build-startup", "wait this long for a build machine's first TFTP request", &o.BuildStartup),
			secs("build-timeout", "build time limit", &o.BuildTimeout),
			num("build-retries", "up to `N` build mis-boot retries", &o.BuildRetries),
			secs("bootstrap-auxiliary", "wait this long for an auxiliary machine's environment upload", &o.BootstrapAuxiliary),
			secs("interactive-timeout", "interactive build time limit, from the worker's breakpoint", &o.InteractiveTimeout),
			secs("connect-timeout", "controller connection timeout", &o.ConnectTimeout),
			secs("request-timeout", "controller request timeout", &o.RequestTimeout),
			num("request-retries", "up to `N` controller request retries", &o.RequestRetries),
			secs("suspend-timeout", "release a suspended machine after this long; 0 = never", &o.SuspendTimeout),
			num("suspend-max", "keep at most `N` machines held for inspection, releasing the oldest first (each keeps its snapshot's disk space); 0 = no cap", &o.SuspendMax),
			secs("result-ttl", "keep retrying a result upload this long", &o.ResultTTL),
			secs("failed-ttl", "purge results kept in <state-dir>/failed/ this long after they failed; 0 = keep them", &o.FailedTTL),
		),
		inCategory(categoryResources,
			num("slots", "run up to `N` tasks at once, as instances --instance..--instance+N-1", &o.Slots),
			num("instance", "first instance `NUM`ber of this process (see --slots)", &o.Instance),
			num("instance-max", "at most `N` tasks at once across this toolchain's processes on the host; 0 = no cap beyond the instances claimed", &o.InstanceMax),
			&cli.GenericFlag{Name: "cpu-overcommit", Usage: "start a task only while the running tasks' CPUs stay within the host's hardware threads times `RATIO` (" + agent.Ranges["cpu-overcommit"].String() + ")", Value: ratio{&o.CPUOvercommit}},
			size("ram-reserve", "start a task only while the running tasks' RAM stays within the host's memory minus this much", &o.RAMReserve),
			size("min-free", "start no bootstrap or task while the machines, TFTP or state filesystem has less free space than this (0: no floor)", &o.MinFree),
		),
		inCategory(categoryControllers,
			&cli.StringSliceFlag{Name: "trust", Usage: "repository certificate `FINGERPRINT` to trust instead of the task's (repeatable)", Destination: trust},
			str("auth-key", "RSA private key `PEM` file for controller authentication", &o.AuthKey),
			str("openssl", "openssl `PROGRAM` (ignored: the agent signs and fingerprints in Go)", &o.OpenSSL),
			&cli.GenericFlag{Name: "openssl-option", Usage: "openssl `OPTION` (repeatable; ignored like --openssl)", Value: repeated{&o.OpenSSLOptions}},
		),
		inCategory(categoryNetwork,
			str("network", "machine networking: `bridge` or user", &o.Network),
			str("bridge", "host bridge `IF`ace for --network bridge", &o.Bridge),
			str("auxiliary-range", "private networks of the auxiliary machines: an IPv4 `ADDR/LEN` the host does not use, a /28 per instance (default "+agent.DefaultAuxiliaryRange+")", &o.AuxiliaryRange),
			str("guest-range", "guest addresses for --network bridge: an IPv4 `ADDR/LEN` inside the bridge's network, one per toolchain (default: the upper half of the bridge's network, shared)", &o.GuestRange),
			&cli.GenericFlag{Name: "tftp-port", Usage: "TFTP base `PORT` (" + agent.Ranges["tftp-port"].String() + "); instance I of toolchain T listens on this plus (T-1)*100+I, which must be at most 65535", Value: decimal{&o.TFTPPort}},
			str("tftp-address", "TFTP bind `ADDR`ess (default: bridge address, or 127.0.0.1)", &o.TFTPAddress),
			str("qemu", "QEMU `BINARY` (default qemu-system-x86_64 on PATH)", &o.QEMU),
			str("qemu-user", "`USER` QEMU switches to (-runas) when the agent runs as root; '' keeps it root", &o.QEMUUser),
			str("accel", "QEMU accelerator: `auto`, kvm or tcg", &o.Accel),
		),
		inCategory(categoryPaths,
			str("tftp", "TFTP root `DIR`ectory", &o.TFTP),
			str("state-dir", "state `DIR`: task journal, failed results, learned accelerator (default /var/lib/bbot-agent/<toolchain-name>/)", &o.StateDir),
			str("run-dir", "runtime `DIR` for QMP sockets and logs (default /run/bbot-agent/<toolchain-name>/)", &o.RunDir),
			secs("poll-interval", "controller poll interval when there is no work", &o.PollInterval),
		),
		inCategory(categoryDryRuns,
			boolean("fake-bootstrap", "record a bootstrap without booting the machine", &o.FakeBootstrap),
			boolean("fake-build", "produce an abort result without booting the machine", &o.FakeBuild),
			str("fake-machine", "machine header manifest `FILE` (- for stdin): the only machine offered; its tasks are served over TFTP with no VM, the result and upload.tar PUT by hand", &o.FakeMachine),
			str("fake-request", "task manifest `FILE` (- for stdin); no controller is asked", &o.FakeRequest),
			boolean("dump-machines", "print the usable machines' headers and exit", &o.DumpMachines),
			boolean("dump-task", "print the task the worker would get and exit", &o.DumpTask),
			boolean("dump-result", "print the result manifest and exit", &o.DumpResult),
		),
		// Run beside a running agent (same --run-dir).
		inCategory(categoryAdmin,
			boolean("status", "show what the agent running with this --run-dir does (per slot, since when), its backoff, the machines' bootstrap state, held machines and the journal; read-only, and exit", &o.ShowStatus),
			boolean("suspended", "show the machine the agent holds suspended, if any, and exit", &o.ShowSuspended),
			boolean("release", "release the suspended machine (QMP quit): the agent reports and cleans up", &o.Release),
			boolean("resume", "let the suspended machine run again (QMP cont)", &o.Resume),
			boolean("results", "list the results in the journal (not yet delivered) and in <state-dir>/failed/ with why, read-only, and exit", &o.ShowResults),
			boolean("toolchains", "list every toolchain's bootstrapped snapshots <machine>-<toolchain> below --machines, with when an agent of it last ran, and exit", &o.ShowToolchains),
			str("retire", "remove the bootstrapped snapshots of toolchain `NAME` (not while an agent of it runs with its default run directory) and exit", &o.Retire),
			boolean("retire-unused", "remove the bootstrapped snapshots of every toolchain no agent ran for --retire-after, and exit", &o.RetireUnused),
			secs("retire-after", "a toolchain no agent ran for this long is unused (--toolchains, --retire-unused)", &o.RetireAfter),
			str("resend", "queue the failed result `ID` (as --results lists it) for sending again: the running agent sends it within a poll interval, or the next one at start-up; and exit", &o.Resend),
		),
		inCategory(categoryLogging,
			boolean("systemd-daemon", "log for systemd (priority prefixes, no timestamps)", &o.SystemdDaemon),
			num("verbose", "diagnostics `LEVEL`: 0 errors, 1 warnings and notices (start-up, tasks received and delivered, bootstraps), 2 info, 3 and up debug", &o.Verbose),
			str("log-format", "log line `FORMAT`: text (logfmt) or json", &o.LogFormat),
			str("metrics", "serve Prometheus metrics at http://`HOST:PORT`/metrics (daemon only; e.g. 127.0.0.1:9464; default off)", &o.Metrics),
		),
	)
}
