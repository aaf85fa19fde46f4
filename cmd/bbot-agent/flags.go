package main

import (
	"errors"
	"strconv"
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
		Machines:         "/build/machines/",
		TFTP:             "/build/tftp/",
		TFTPPort:         23400,
		ToolchainName:    "default",
		ToolchainNum:     1,
		BootstrapStartup: 300 * time.Second,
		BootstrapTimeout: 3600 * time.Second,
		BootstrapRetries: 2,
		BuildStartup:     60 * time.Second,
		BuildTimeout:     5400 * time.Second,
		BuildRetries:     2,
		CPU:              2,
		RAM:              2097152,
		ConnectTimeout:   60 * time.Second,
		RequestTimeout:   controller.DefaultRequestTimeout,
		RequestRetries:   4,
		Verbose:          1,
		Network:          "bridge",
		Bridge:           "br1",
		Accel:            "auto",
		QEMUUser:         "nobody",
		PollInterval:     60 * time.Second,
		ResultTTL:        10800 * time.Second,
	}
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
	return []cli.Flag{
		// bbot's options.
		str("machines", "machine volumes `DIR`ectory", &o.Machines),
		str("tftp", "TFTP root `DIR`ectory", &o.TFTP),
		&cli.GenericFlag{Name: "tftp-port", Usage: "TFTP base `PORT` (1..65535 minus --toolchain-num); the server listens on this plus --toolchain-num", Value: decimal{&o.TFTPPort}},
		str("toolchain-name", "toolchain `NAME`: letters, digits, _ . + -, starting with a letter or digit, at most 64, not a number or <digits>.*", &o.ToolchainName),
		num("toolchain-num", "toolchain `NUM`ber, offsets ports and interfaces", &o.ToolchainNum),
		&cli.StringFlag{Name: "toolchain-ver", Usage: "toolchain standard `VERSION`", Value: agent.Version, Destination: toolchainVer},
		str("toolchain-id", "toolchain `ID`; a change re-bootstraps every machine", &o.ToolchainID),
		secs("bootstrap-startup", "wait this long for a bootstrapping machine's first TFTP request", &o.BootstrapStartup),
		secs("bootstrap-timeout", "bootstrap time limit", &o.BootstrapTimeout),
		num("bootstrap-retries", "up to `N` bootstrap mis-boot retries", &o.BootstrapRetries),
		secs("build-startup", "wait this long for a build machine's first TFTP request", &o.BuildStartup),
		secs("build-timeout", "build time limit", &o.BuildTimeout),
		num("build-retries", "up to `N` build mis-boot retries", &o.BuildRetries),
		num("cpu", "virtual `CPU`s per machine", &o.CPU),
		&cli.GenericFlag{Name: "ram", Usage: "machine RAM in `KiB` (" + agent.Ranges["ram"].String() + ")", Value: kib{&o.RAM}},
		secs("connect-timeout", "controller connection timeout", &o.ConnectTimeout),
		secs("request-timeout", "controller request timeout", &o.RequestTimeout),
		num("request-retries", "up to `N` controller request retries", &o.RequestRetries),
		&cli.StringSliceFlag{Name: "trust", Usage: "repository certificate `FINGERPRINT` to trust instead of the task's (repeatable)", Destination: trust},
		str("auth-key", "RSA private key `PEM` file for controller authentication", &o.AuthKey),
		boolean("systemd-daemon", "log for systemd (priority prefixes, no timestamps)", &o.SystemdDaemon),
		num("verbose", "diagnostics `LEVEL`", &o.Verbose),
		boolean("fake-bootstrap", "record a bootstrap without booting the machine", &o.FakeBootstrap),
		boolean("fake-build", "produce an abort result without booting the machine", &o.FakeBuild),
		str("fake-machine", "machine header manifest `FILE`; serve TFTP with no VM", &o.FakeMachine),
		str("fake-request", "task manifest `FILE`; no controller is asked", &o.FakeRequest),
		boolean("dump-machines", "print the usable machines' headers and exit", &o.DumpMachines),
		boolean("dump-task", "print the task the worker would get and exit", &o.DumpTask),
		boolean("dump-result", "print the result manifest and exit", &o.DumpResult),
		// Ours.
		str("qemu", "QEMU `BINARY` (default qemu-system-x86_64 on PATH)", &o.QEMU),
		str("qemu-user", "`USER` QEMU switches to (-runas) when the agent runs as root; '' keeps it root", &o.QEMUUser),
		str("network", "machine networking: `bridge` or user", &o.Network),
		str("bridge", "host bridge `IF`ace for --network bridge", &o.Bridge),
		str("accel", "QEMU accelerator: `auto`, kvm or tcg", &o.Accel),
		str("tftp-address", "TFTP bind `ADDR`ess (default: bridge address, or 127.0.0.1)", &o.TFTPAddress),
		str("state-dir", "result outbox and state `DIR` (default /var/lib/bbot-agent/<toolchain-name>/)", &o.StateDir),
		str("run-dir", "runtime `DIR` for QMP sockets and logs (default /run/bbot-agent/<toolchain-name>/)", &o.RunDir),
		secs("poll-interval", "controller poll interval when there is no work", &o.PollInterval),
		secs("suspend-timeout", "release a suspended machine after this long; 0 = never", &o.SuspendTimeout),
		secs("result-ttl", "keep retrying a result upload this long", &o.ResultTTL),
		// Admin commands, run beside a running agent (same --run-dir).
		boolean("suspended", "show the machine the agent holds suspended, if any, and exit", &o.ShowSuspended),
		boolean("release", "release the suspended machine (QMP quit): the agent reports and cleans up", &o.Release),
		boolean("resume", "let the suspended machine run again (QMP cont)", &o.Resume),
	}
}
