// Command bbot-agent is the build2 build bot agent: it keeps build machines
// as btrfs subvolumes, asks controllers for build tasks and performs them in
// fresh QEMU snapshots. This is the only package that wires the agent,
// machine, tftp, manifest and btrfs packages together.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/manifest"
)

func main() {
	os.Exit(run(os.Args, os.Stdout, os.Stderr))
}

// Exit statuses: sysexits(3)'s where one fits, so that a supervisor (and an
// admin) can tell a mistake in the options from a host to fix from a
// failure worth a restart. 2 is left to Go: a panic exits with it.
const (
	exitFailure = 1  // a runtime failure
	exitUsage   = 64 // EX_USAGE: a bad option or value
	exitDataErr = 65 // EX_DATAERR: a malformed --fake-request or --fake-machine manifest
	exitConfig  = 78 // EX_CONFIG: the host does not fit the options (agent.ConfigError)
)

// usageError is a mistake on the command line or in an options file.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

// dataError is a malformed input manifest.
type dataError struct{ err error }

func (e *dataError) Error() string { return e.err.Error() }
func (e *dataError) Unwrap() error { return e.err }

// exitStatus is the exit status for what run's app returned. A ConfigError
// wraps the OptionError naming its option, so it is tested first.
func exitStatus(err error) int {
	var (
		config *agent.ConfigError
		data   *dataError
		usage  *usageError
		option *agent.OptionError
	)
	switch {
	case err == nil:
		return 0
	case errors.As(err, &config):
		return exitConfig
	case errors.As(err, &data):
		return exitDataErr
	case errors.As(err, &usage), errors.As(err, &option):
		return exitUsage
	}
	return exitFailure
}

func run(args []string, stdout, stderr io.Writer) int {
	err := runApp(args, stdout, stderr)
	if err != nil {
		printError(stderr, err)
	}
	return exitStatus(err)
}

// printError prints err on one line. Errors located in a file already read
// "FILE:LINE[:COL]: error: ...".
func printError(w io.Writer, err error) {
	var pe *manifest.ParseError
	var fe *optionsFileError
	switch {
	case errors.As(err, &pe):
		fmt.Fprintln(w, pe)
	case errors.As(err, &fe):
		fmt.Fprintln(w, fe)
	default:
		fmt.Fprintf(w, "bbot-agent: error: %v\n", err)
	}
}

func runApp(args []string, stdout, stderr io.Writer) error {
	// Options files are expanded first: their options then parse, and
	// override each other, exactly as if given in their place.
	app := newApp(stdout, stderr)
	booleans := map[string]bool{}
	for _, f := range app.Flags {
		if _, ok := f.(*cli.BoolFlag); ok {
			for _, n := range f.Names() {
				booleans["--"+n], booleans["-"+n] = true, true
			}
		}
	}
	expanded, err := expandOptionsFiles(args[1:], func(option string) bool { return booleans[option] })
	if err != nil {
		return &usageError{err}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return app.RunContext(ctx, append([]string{args[0]}, expanded...))
}

// The flag package names options with one dash in its errors ("invalid
// value "x" for flag -cpu: ..."); bbot's are written with two.
var (
	oneDashFlag    = regexp.MustCompile(`(: | for | flag )-([A-Za-z0-9][^\s:=]+)`)
	twoFormsOfFlag = regexp.MustCompile(`^Cannot use two forms of the same flag: (\S+) (\S+)$`)
)

// flagError is urfave/cli's (and the flag package's) error for bad
// command-line syntax, naming the option as bbot does.
func flagError(err error) error {
	msg := err.Error()
	if m := twoFormsOfFlag.FindStringSubmatch(msg); m != nil {
		return &usageError{fmt.Errorf("--%s and --%s are the same option: give one", m[2], m[1])}
	}
	return &usageError{errors.New(oneDashFlag.ReplaceAllString(msg, "$1--$2"))}
}

// printVersion prints the agent's version, the commit it was built from
// and the Go version.
func printVersion(w io.Writer, b agent.Build) {
	fmt.Fprintf(w, "bbot-agent %s (Go %s)\n", agent.Version, b.Go)
	if b.Revision == "" {
		if b.Module != "" {
			fmt.Fprintln(w, "module version "+b.Module)
		} else {
			fmt.Fprintln(w, "unknown revision")
		}
		return
	}
	line := "revision " + b.Revision
	if b.Time != "" {
		line += " " + b.Time
	}
	if b.Modified {
		line += " (modified)"
	}
	fmt.Fprintln(w, line)
}

// newApp is the command line: its flags are bound to the options its
// Action validates and runs. It also sets urfave/cli's globals (help and
// version flags, printers), which the man page shares.
func newApp(stdout, stderr io.Writer) *cli.App {
	opts := defaultOptions()
	var toolchainVer string
	var trust cli.StringSlice

	cli.HelpFlag = &cli.BoolFlag{Name: "help", Aliases: []string{"h"}, Usage: "print this help and exit", DisableDefaultText: true, Category: categoryGeneral}
	cli.VersionFlag = &cli.BoolFlag{Name: "version", Usage: "print the agent's version, the revision it was built from and the Go version, and exit", DisableDefaultText: true, Category: categoryGeneral}
	cli.VersionPrinter = func(c *cli.Context) { printVersion(c.App.Writer, agent.ReadBuild()) }
	// Errors are printed once, on one line, by run.
	cli.ErrWriter = io.Discard
	cli.OsExiter = func(int) {}
	return &cli.App{
		Name:            "bbot-agent",
		Usage:           "build2 build bot agent",
		UsageText:       "bbot-agent [options] [<priority>=]<url>...",
		Version:         agent.Version,
		HideHelpCommand: true,
		Writer:          stdout,
		ErrWriter:       stderr,
		Flags:           flags(&opts, &toolchainVer, &trust),
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return flagError(err)
		},
		Action: func(c *cli.Context) error {
			v, err := manifest.ParseStandardVersion(toolchainVer)
			if err != nil {
				return &usageError{&agent.OptionError{Option: "toolchain-ver", Value: toolchainVer, Reason: err.Error()}}
			}
			opts.ToolchainVer = v
			opts.Trust = trust.Value()
			for _, a := range c.Args().Slice() {
				ctl, err := controller.ParseController(a)
				if err != nil {
					return &usageError{err}
				}
				opts.Controllers = append(opts.Controllers, ctl)
			}
			if err := opts.Validate(); err != nil {
				return &usageError{err}
			}
			log := logger(&opts, stderr)
			if c.IsSet("openssl") || c.IsSet("openssl-option") {
				// bbot's own options, so a bbot command line keeps
				// working; said once so the admin knows they do nothing.
				log.Warn("--openssl and --openssl-option are ignored: the agent signs and fingerprints in Go")
			}
			return execute(c.Context, &opts, stdout, stderr, log)
		},
	}
}

// logger returns the agent's logger for the --verbose level: 0 errors only,
// 1 warnings, 2 info, 3 and above debug.
func logger(o *agent.Options, w io.Writer) *slog.Logger {
	level := slog.LevelDebug
	switch o.Verbose {
	case 0:
		level = slog.LevelError
	case 1:
		level = agent.LevelNotice
	case 2:
		level = slog.LevelInfo
	}
	h := &slog.HandlerOptions{Level: level}
	h.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) != 0 {
			return a
		}
		switch {
		case a.Key == slog.LevelKey && a.Value.Any() == agent.LevelNotice:
			return slog.String(slog.LevelKey, "NOTICE") // not "INFO+2"
		case a.Key == slog.TimeKey && o.SystemdDaemon:
			return slog.Attr{} // journald stamps lines itself
		}
		return a
	}
	handler := func(w io.Writer) slog.Handler {
		if o.LogFormat == "json" {
			return slog.NewJSONHandler(w, h)
		}
		return slog.NewTextHandler(w, h)
	}
	if !o.SystemdDaemon {
		return slog.New(handler(w))
	}
	// journald reads the priority from a "<N>" prefix (sd-daemon(3)).
	pw := &prefixWriter{w: w}
	return slog.New(journalHandler{handler(pw), pw})
}

// prefixWriter prepends the current priority to each line.
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix); err != nil {
		return 0, err
	}
	return p.w.Write(b)
}

// journalHandler sets the syslog priority of each record's line.
type journalHandler struct {
	slog.Handler
	w *prefixWriter
}

func (j journalHandler) Handle(ctx context.Context, r slog.Record) error {
	prio := 6 // info
	switch {
	case r.Level >= slog.LevelError:
		prio = 3
	case r.Level >= slog.LevelWarn:
		prio = 4
	case r.Level >= agent.LevelNotice:
		prio = 5
	case r.Level < slog.LevelInfo:
		prio = 7
	}
	j.w.mu.Lock()
	defer j.w.mu.Unlock()
	j.w.prefix = "<" + strconv.Itoa(prio) + ">"
	return j.Handler.Handle(ctx, r)
}

func (j journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return journalHandler{j.Handler.WithAttrs(as), j.w}
}

func (j journalHandler) WithGroup(name string) slog.Handler {
	return journalHandler{j.Handler.WithGroup(name), j.w}
}

// execute runs the mode the options select.
func execute(ctx context.Context, o *agent.Options, stdout, stderr io.Writer, log *slog.Logger) error {
	switch {
	case o.AdminCommand():
		return admin(o, stdout)
	case o.FakeRequest != "" && o.DumpTask:
		return dumpTask(o, stdout, log)
	case o.DumpMachines:
		return dumpMachines(ctx, o, stdout, log)
	case o.FakeRequest != "":
		return realTask(ctx, o, stdout, log)
	default:
		return daemon(ctx, o, stdout, log)
	}
}

// readTask reads the --fake-request task manifest.
func readTask(o *agent.Options) (*manifest.Task, error) {
	return readManifest("fake-request", o.FakeRequest, manifest.ParseTask)
}

// readFakeMachine reads the --fake-machine header manifest.
func readFakeMachine(o *agent.Options) (manifest.MachineHeader, error) {
	return readManifest("fake-machine", o.FakeMachine, manifest.ParseMachineHeader)
}

// readManifest parses the manifest file an option names ("-": stdin, as
// bbot reads it): a file that cannot be read is the option's mistake, one
// that does not parse is bad data.
func readManifest[T any](option, path string, parse func(io.Reader, string) (T, error)) (T, error) {
	var zero T
	var r io.Reader = os.Stdin
	name := "<stdin>"
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return zero, &agent.OptionError{Option: option, Value: path, Reason: err.Error()}
		}
		defer f.Close()
		r, name = f, path
	}
	v, err := parse(r, name)
	switch {
	case err == nil:
		return v, nil
	case errors.Is(err, manifest.ErrReadFailed):
		return zero, &agent.OptionError{Option: option, Value: path, Reason: err.Error()}
	}
	return zero, &dataError{err}
}

// dumpTask prints the task exactly as the worker would receive it.
func dumpTask(o *agent.Options, stdout io.Writer, log *slog.Logger) error {
	task, err := readTask(o)
	if err != nil {
		return err
	}
	if o.FakeMachine != "" {
		h, err := readFakeMachine(o)
		if err != nil {
			return err
		}
		if task.Machine() != h.Name {
			log.Warn("task names a machine that was not offered", "task-machine", task.Machine(), "offered", h.Name)
		}
	}
	// No controller response: no agent checksum, so the worker gets no
	// worker/dependency checksums (a full build).
	w := agent.WorkerTask(task, o.Trust, "", "")
	return w.Serialize(stdout)
}

// newAgent builds the agent; with --fake-machine, the header it reads is
// the agent's only machine.
func newAgent(o *agent.Options, log *slog.Logger) (*agent.Agent, error) {
	var h manifest.MachineHeader
	if o.FakeMachine != "" {
		var err error
		if h, err = readFakeMachine(o); err != nil {
			return nil, err
		}
	}
	a, err := agent.New(o, log)
	if err != nil {
		return nil, err
	}
	if o.FakeMachine != "" {
		a.UseFakeMachine(h)
	}
	return a, nil
}

// dumpMachines enumerates (and bootstraps) the machines and prints the
// header of each usable one, as the task request would carry them (with
// --fake-machine, its header alone).
func dumpMachines(ctx context.Context, o *agent.Options, stdout io.Writer, log *slog.Logger) error {
	a, err := newAgent(o, log)
	if err != nil {
		return err
	}
	defer a.Close()
	ms, err := a.Enumerator.Enumerate(ctx)
	if err != nil {
		return err
	}
	var headers [][]manifest.NameValue
	for _, m := range ms {
		headers = append(headers, m.Header().Pairs())
	}
	return manifest.WriteStream(stdout, "", headers...)
}

// admin runs --suspended (every slot), --release or --resume (the slot of
// --instance) against the run directory.
func admin(o *agent.Options, stdout io.Writer) error {
	switch {
	case o.ShowStatus:
		return showStatus(o, stdout, time.Now())
	case o.ShowResults:
		return showResults(o, stdout)
	case o.Resend != "":
		return resend(o, stdout)
	case o.ShowToolchains:
		return showToolchains(o, stdout, time.Now())
	case o.Retire != "" || o.RetireUnused:
		return retire(o, stdout, time.Now())
	}
	if o.Release || o.Resume {
		dir := agent.PlanSlot(o, o.Instance).RunDir
		var s *agent.Suspended
		var err error
		if o.Release {
			s, err = agent.ReleaseSuspended(dir)
		} else {
			s, err = agent.ResumeSuspended(dir)
		}
		if err != nil {
			return err
		}
		if s == nil {
			// A script must not take "nothing there" for done.
			if held, _ := agent.ListSuspended(o.RunDir); len(held) > 0 {
				for _, h := range held {
					fmt.Fprintf(stdout, "instance %d holds one: add --instance %d\n", h.Instance, h.Instance)
				}
			}
			option := "--release"
			if o.Resume {
				option = "--resume"
			}
			return fmt.Errorf("%s: no suspended machine in %s", option, dir)
		}
		printSuspended(stdout, o.Instance, s)
		if o.Release {
			fmt.Fprintln(stdout, "released")
		} else {
			fmt.Fprintln(stdout, "resumed")
		}
		return nil
	}
	held, err := agent.ListSuspended(o.RunDir)
	if err != nil {
		return err
	}
	if len(held) == 0 {
		fmt.Fprintln(stdout, "no suspended machine in", o.RunDir)
		return nil
	}
	for i, h := range held {
		if i > 0 {
			fmt.Fprintln(stdout)
		}
		printSuspended(stdout, h.Instance, h.Suspended)
	}
	return nil
}

func printSuspended(w io.Writer, instance int, s *agent.Suspended) {
	fmt.Fprintf(w, "instance: %d\npid: %d\nsnapshot: %s\nconsole: %s\n", instance, s.PID, s.Snapshot, s.ConsoleLog)
	if s.ConsoleSocket != "" {
		fmt.Fprintf(w, "console-socket: %s\nattach: %s\n", s.ConsoleSocket, agent.ConsoleAttach(s.ConsoleSocket))
	}
	if s.VNC != "" {
		fmt.Fprintf(w, "vnc: %s\nvnc-attach: %s\n", s.VNC, agent.VNCAttach(s.VNC))
	}
	fmt.Fprintf(w, "qmp: %s\nsince: %s\nreason: %s\n", s.AdminSocket, s.Since.Format(time.RFC3339), s.Reason)
}
