package main

import (
	"bytes"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/build2/bbot-agent-go/agent"
)

// parseFlags parses args into the default options, without running
// anything.
func parseFlags(t *testing.T, args ...string) (agent.Options, error) {
	t.Helper()
	o := defaultOptions()
	var ver string
	var trust cli.StringSlice
	app := &cli.App{
		Name: "bbot-agent", Flags: flags(&o, &ver, &trust), Writer: io.Discard, ErrWriter: io.Discard,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return err },
		Action:       func(*cli.Context) error { return nil },
	}
	err := app.Run(append([]string{"bbot-agent"}, args...))
	return o, err
}

// TestFlags: the new options bind to their fields, --ram is --build-ram,
// the defaults are valid, and bad syntax is an error naming the option.
func TestFlags(t *testing.T) {
	d, err := parseFlags(t)
	if err != nil {
		t.Fatal(err)
	}
	if d.Slots != 1 || d.Instance != 1 || d.InstanceMax != 0 || d.RAM != 2097152 || d.AuxiliaryCPU != 1 ||
		d.AuxiliaryRAM != 0 || d.BootstrapAuxiliary != 900*time.Second || d.Interactive != "false" ||
		d.InteractiveTimeout != 10800*time.Second || d.OpenSSL != "openssl" || d.OpenSSLOptions != nil ||
		d.CPUOvercommit != 1 || d.RAMReserve != 1048576 || d.GuestRange != "" {
		t.Errorf("defaults: %+v", d)
	}
	d.FakeRequest = "x" // stands in for a controller
	if err := d.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}

	o, err := parseFlags(t, "--slots", "4", "--instance", "5", "--instance-max", "6", "--build-ram", "1048576",
		"--auxiliary-cpu", "3", "--auxiliary-ram", "0", "--bootstrap-auxiliary", "100", "--interactive", "both",
		"--interactive-timeout", "200", "--openssl", "/opt/openssl", "--openssl-option", "-engine", "--openssl-option", "a,b",
		"--cpu-overcommit", "1.5", "--ram-reserve", "2097152", "--guest-range", "10.0.0.64/26")
	if err != nil {
		t.Fatal(err)
	}
	if o.Slots != 4 || o.Instance != 5 || o.InstanceMax != 6 || o.RAM != 1048576 || o.AuxiliaryCPU != 3 ||
		o.BootstrapAuxiliary != 100*time.Second || o.Interactive != "both" || o.InteractiveTimeout != 200*time.Second ||
		o.OpenSSL != "/opt/openssl" || !slices.Equal(o.OpenSSLOptions, []string{"-engine", "a,b"}) ||
		o.CPUOvercommit != 1.5 || o.RAMReserve != 2097152 || o.GuestRange != "10.0.0.64/26" {
		t.Errorf("parsed: %+v", o)
	}
	if o, err := parseFlags(t, "--ram", "524288"); err != nil || o.RAM != 524288 {
		t.Errorf("--ram alias: %v, RAM %d", err, o.RAM)
	}

	for _, c := range []struct{ option, value string }{
		{"slots", "x"}, {"slots", "1.5"}, {"instance", "010x"}, {"instance-max", ""}, {"build-ram", "-1"},
		{"ram", "1G"}, {"auxiliary-cpu", "two"}, {"auxiliary-ram", "-5"}, {"bootstrap-auxiliary", "15m"},
		{"interactive-timeout", "-1"}, {"cpu-overcommit", "x"}, {"cpu-overcommit", "NaN"},
		{"cpu-overcommit", "Inf"}, {"cpu-overcommit", "1e999"}, {"ram-reserve", "1.5"},
	} {
		_, err := parseFlags(t, "--"+c.option, c.value)
		if err == nil || !strings.Contains(err.Error(), c.option) {
			t.Errorf("--%s %q: %v", c.option, c.value, err)
		}
	}
}

// TestHelp: --help shows every new option with its range, and --build-ram
// with its alias.
func TestHelp(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"bbot-agent", "--help"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := out.String()
	for _, want := range []string{
		"--slots N ", "(1..99) (default: 1)",
		"--instance NUM ", "--instance-max N ", "(0..99) (default: 0)",
		"--build-ram KiB, --ram KiB ", "(in KiB, 65536..1073741824) (default: 2097152)",
		"--auxiliary-cpu CPU ", "--auxiliary-ram KiB ", "(in KiB, 0..1073741824) (default: 0)", "--auxiliary-range ADDR/LEN ",
		"--bootstrap-auxiliary SECONDS ", "(default: 900)",
		"--interactive MODE ", "--interactive-timeout SECONDS ",
		"--openssl PROGRAM ", "--openssl-option OPTION ", "ignored",
		"--cpu-overcommit RATIO ", "(0.1..16) (default: 1)",
		"--ram-reserve KiB ", "(in KiB, 0..1073741824) (default: 1048576)",
		"--guest-range ADDR/LEN ",
		"instance I of toolchain T listens on this plus (T-1)*100+I",
		"--options-file FILE ",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	// Every Ranges entry is shown with its range.
	for name, r := range agent.Ranges {
		i := strings.Index(help, "--"+name+" ")
		if i < 0 {
			t.Errorf("help lacks --%s", name)
			continue
		}
		line, _, _ := strings.Cut(help[i:], "\n")
		if !strings.Contains(line, r.String()+")") {
			t.Errorf("--%s: range %s not shown: %s", name, r, line)
		}
	}
}

// TestHelpCategories: every option is in a category, and --help shows each
// category's options under its heading.
func TestHelpCategories(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	app.Setup()
	for _, f := range app.VisibleFlags() {
		if cf, ok := f.(cli.CategorizableFlag); !ok || cf.GetCategory() == "" {
			t.Errorf("--%s has no category: put it in one (inCategory in flags.go)", f.Names()[0])
		}
	}
	var out bytes.Buffer
	if code := run([]string{"bbot-agent", "--help"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	help := out.String()
	for _, c := range app.VisibleFlagCategories() {
		heading := "\n   " + c.Name() + "\n\n"
		i := strings.Index(help, heading)
		if i < 0 {
			t.Errorf("help lacks the heading %q", c.Name())
			continue
		}
		section, _, _ := strings.Cut(help[i+len(heading):], "\n\n")
		for _, f := range c.Flags() {
			if !regexp.MustCompile(`(?m)^   --` + regexp.QuoteMeta(f.Names()[0]) + `[ ,]`).MatchString(section) {
				t.Errorf("--%s is not under %q:\n%s", f.Names()[0], c.Name(), section)
			}
		}
	}
}
