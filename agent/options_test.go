package agent

import (
	"errors"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

func TestWorkerTask(t *testing.T) {
	in := ": 1\nname: a\nversion: 1\nrepository-url: u\ntrust: AA\ndependency-checksum: d\nmachine: m\ntarget: t\nworker-checksum: w\n"
	task, err := manifest.ParseTask(strings.NewReader(in), "t")
	if err != nil {
		t.Fatal(err)
	}
	ours := agentChecksum(Version, "tc", "mid")
	same := WorkerTask(task, nil, ours, ours)
	if same.Fields.Value("worker-checksum") != "w" || same.Fields.Value("dependency-checksum") != "d" {
		t.Errorf("checksums dropped although agent checksum matches: %v", same.Fields)
	}
	other := WorkerTask(task, []string{"yes"}, "stale", ours)
	if _, ok := other.Fields.Get("worker-checksum"); ok {
		t.Errorf("worker checksum kept for a mismatching agent checksum")
	}
	if got := other.Fields.All("trust"); len(got) != 1 || got[0] != "yes" {
		t.Errorf("trust %v", got)
	}
	if task.Fields.Value("trust") != "AA" {
		t.Errorf("the controller's task was modified")
	}
	if agentChecksum("1", "2", "3") == agentChecksum("1", "23", "") {
		t.Errorf("checksum inputs are not separated")
	}
}

func TestValidateToolchainName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"default", true},
		{"gcc-13", true},
		{"clang_17.0", true},
		{"x1", true},
		{"a+b", true},
		{"1x", true}, // digits then a letter: neither <P> nor <P>.<R>
		{strings.Repeat("a", maxToolchainName), true},

		{"", false},
		{".", false},
		{"..", false},
		{"1", false},   // the bootstrap protocol: <machine>-1 is the admin's link
		{"1.0", false}, // <machine>-1.0 is an admin's image
		{"12", false},
		{"1.x", false},
		{"007", false},
		{"a/b", false},
		{"a~b", false},
		{"a b", false},
		{"a\tb", false},
		{"a\nb", false},
		{"-x", false},
		{".hidden", false},
		{"_x", false},
		{"ça", false},
		{"tc\u00e9", false},
		{strings.Repeat("a", maxToolchainName+1), false},
		{strings.Repeat("a", 300), false},
	}
	for _, tc := range tests {
		err := validateToolchainName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("%q: got %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--toolchain-name") {
			t.Errorf("%q: error does not name the option: %v", tc.name, err)
		}
		// Validate applies the same rule.
		o := validOptions()
		o.ToolchainName = tc.name
		if err := o.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate with %q: got %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// validOptions are valid options (cmd/bbot-agent's defaults) with a
// controller.
func validOptions() Options {
	return Options{
		ToolchainName: "default", ToolchainNum: 1, TFTPPort: 23400,
		Slots: 1, Instance: 1,
		BootstrapStartup: 300 * time.Second, BootstrapTimeout: 3600 * time.Second, BootstrapRetries: 2,
		BuildStartup: 60 * time.Second, BuildTimeout: 5400 * time.Second, BuildRetries: 2,
		CPU: 2, RAM: 2097152,
		AuxiliaryCPU: 1, BootstrapAuxiliary: 900 * time.Second,
		Interactive: "false", InteractiveTimeout: 10800 * time.Second, OpenSSL: "openssl",
		CPUOvercommit: 1, RAMReserve: 1048576,
		ConnectTimeout: 60 * time.Second, RequestTimeout: 300 * time.Second, RequestRetries: 4,
		Verbose: 1, Network: "bridge", Accel: "auto",
		PollInterval: 60 * time.Second, ResultTTL: 10800 * time.Second,
		StateDir: "/s", RunDir: "/r",
		Controllers: []controller.Controller{{URL: "http://x/"}},
	}
}

// TestValidateRanges: every numeric option is accepted at its Ranges min and
// max and refused just outside, with an error naming it; every Ranges entry
// is covered.
func TestValidateRanges(t *testing.T) {
	whole := func(p func(*Options) *int) func(*Options, float64) {
		return func(o *Options, v float64) { *p(o) = int(v) }
	}
	// Through int64, so that -1 becomes a huge value, not an
	// implementation-defined one.
	size := func(p func(*Options) *uint64) func(*Options, float64) {
		return func(o *Options, v float64) { *p(o) = uint64(int64(v)) }
	}
	secs := func(p func(*Options) *time.Duration) func(*Options, float64) {
		return func(o *Options, v float64) { *p(o) = time.Duration(v) * time.Second }
	}
	set := map[string]func(*Options, float64){
		"tftp-port":           whole(func(o *Options) *int { return &o.TFTPPort }),
		"toolchain-num":       func(o *Options, v float64) { o.ToolchainNum = int(v); o.TFTPPort = 1 },
		"slots":               whole(func(o *Options) *int { return &o.Slots }),
		"instance":            whole(func(o *Options) *int { return &o.Instance }),
		"instance-max":        whole(func(o *Options) *int { return &o.InstanceMax }),
		"bootstrap-retries":   whole(func(o *Options) *int { return &o.BootstrapRetries }),
		"build-retries":       whole(func(o *Options) *int { return &o.BuildRetries }),
		"request-retries":     whole(func(o *Options) *int { return &o.RequestRetries }),
		"cpu":                 whole(func(o *Options) *int { return &o.CPU }),
		"build-ram":           size(func(o *Options) *uint64 { return &o.RAM }),
		"auxiliary-cpu":       whole(func(o *Options) *int { return &o.AuxiliaryCPU }),
		"auxiliary-ram":       size(func(o *Options) *uint64 { return &o.AuxiliaryRAM }),
		"cpu-overcommit":      func(o *Options, v float64) { o.CPUOvercommit = v },
		"ram-reserve":         size(func(o *Options) *uint64 { return &o.RAMReserve }),
		"verbose":             whole(func(o *Options) *int { return &o.Verbose }),
		"bootstrap-startup":   secs(func(o *Options) *time.Duration { return &o.BootstrapStartup }),
		"bootstrap-timeout":   secs(func(o *Options) *time.Duration { return &o.BootstrapTimeout }),
		"build-startup":       secs(func(o *Options) *time.Duration { return &o.BuildStartup }),
		"build-timeout":       secs(func(o *Options) *time.Duration { return &o.BuildTimeout }),
		"connect-timeout":     secs(func(o *Options) *time.Duration { return &o.ConnectTimeout }),
		"request-timeout":     secs(func(o *Options) *time.Duration { return &o.RequestTimeout }),
		"poll-interval":       secs(func(o *Options) *time.Duration { return &o.PollInterval }),
		"result-ttl":          secs(func(o *Options) *time.Duration { return &o.ResultTTL }),
		"suspend-timeout":     secs(func(o *Options) *time.Duration { return &o.SuspendTimeout }),
		"bootstrap-auxiliary": secs(func(o *Options) *time.Duration { return &o.BootstrapAuxiliary }),
		"interactive-timeout": secs(func(o *Options) *time.Duration { return &o.InteractiveTimeout }),
		"suspend-max":         whole(func(o *Options) *int { return &o.SuspendMax }),
		"min-free":            size(func(o *Options) *uint64 { return &o.MinFree }),
		"failed-ttl":          secs(func(o *Options) *time.Duration { return &o.FailedTTL }),
		"retire-after":        secs(func(o *Options) *time.Duration { return &o.RetireAfter }),
	}
	if len(set) != len(Ranges) {
		t.Errorf("%d options tested, %d in Ranges", len(set), len(Ranges))
	}
	for name, r := range Ranges {
		f, ok := set[name]
		if !ok {
			t.Errorf("--%s: not tested", name)
			continue
		}
		for _, c := range []struct {
			v  float64
			ok bool
		}{{r.Min - 1, false}, {r.Min, true}, {r.Max, true}, {r.Max + 1, false}} {
			o := validOptions()
			f(&o, c.v)
			err := o.Validate()
			if (err == nil) != c.ok {
				t.Errorf("--%s %v: got %v, want ok=%v", name, c.v, err, c.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "--"+name+" ") {
				t.Errorf("--%s %v: error does not name the option: %v", name, c.v, err)
			}
		}
	}
	// The port limit moves with the last instance: the port is --tftp-port
	// plus Offset(toolchain, instance).
	for _, c := range []struct {
		port, num, instance, slots int
		ok                         bool
	}{
		{65534, 1, 1, 1, true}, {65535, 1, 1, 1, false},
		{65535 - 9801, 99, 1, 1, true}, {65535 - 9800, 99, 1, 1, false},
		{65535 - 9899, 99, 1, 99, true}, {65535 - 9898, 99, 1, 99, false},
		{65535 - 9899, 99, 99, 1, true}, {65535 - 9898, 99, 50, 50, false},
		{0, 99, 1, 1, false},
	} {
		o := validOptions()
		o.TFTPPort, o.ToolchainNum, o.Instance, o.Slots = c.port, c.num, c.instance, c.slots
		err := o.Validate()
		if (err == nil) != c.ok {
			t.Errorf("--tftp-port %d --toolchain-num %d --instance %d --slots %d: got %v, want ok=%v", c.port, c.num, c.instance, c.slots, err, c.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--tftp-port ") {
			t.Errorf("--tftp-port %d --toolchain-num %d: error does not name the option: %v", c.port, c.num, err)
		}
	}
	// Instances past 99 are refused as a --slots error, whose reason says
	// which instances.
	for _, c := range []struct {
		instance, slots int
		ok              bool
	}{{1, 99, true}, {2, 98, true}, {2, 99, false}, {99, 1, true}, {99, 2, false}, {50, 60, false}} {
		o := validOptions()
		o.TFTPPort, o.Instance, o.Slots = 1, c.instance, c.slots
		err := o.Validate()
		if (err == nil) != c.ok {
			t.Errorf("--instance %d --slots %d: got %v, want ok=%v", c.instance, c.slots, err, c.ok)
		}
		if err != nil && (!strings.Contains(err.Error(), "--slots ") || !strings.Contains(err.Error(), "99")) {
			t.Errorf("--instance %d --slots %d: error does not name --slots and the limit: %v", c.instance, c.slots, err)
		}
	}
	// A RAM value beyond int64 does not wrap into the range, and is shown
	// exactly.
	for name, p := range map[string]func(*Options) *uint64{
		"build-ram":     func(o *Options) *uint64 { return &o.RAM },
		"ram-reserve":   func(o *Options) *uint64 { return &o.RAMReserve },
		"auxiliary-ram": func(o *Options) *uint64 { return &o.AuxiliaryRAM },
	} {
		o := validOptions()
		*p(&o) = 1<<63 + 65537
		if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--"+name+" value '9223372036854841345'") {
			t.Errorf("--%s %d: %v", name, *p(&o), err)
		}
	}
	// Fractions and NaN for --cpu-overcommit.
	for v, ok := range map[float64]bool{0.1: true, 0.09999: false, 1.5: true, 16.000001: false, math.NaN(): false, math.Inf(1): false} {
		o := validOptions()
		o.CPUOvercommit = v
		if err := o.Validate(); (err == nil) != ok {
			t.Errorf("--cpu-overcommit %v: got %v, want ok=%v", v, err, ok)
		}
	}
}

// TestOptionsStrings: the new string options' values and errors.
func TestOptionsStrings(t *testing.T) {
	for _, c := range []struct {
		option string
		set    func(*Options)
		reason string // "" for accepted
	}{
		{"interactive", func(o *Options) { o.Interactive = "false" }, ""},
		{"interactive", func(o *Options) { o.Interactive = "true" }, ""},
		{"interactive", func(o *Options) { o.Interactive = "both" }, ""},
		{"interactive", func(o *Options) { o.Interactive = "" }, "must be 'false', 'true' or 'both'"},
		{"interactive", func(o *Options) { o.Interactive = "False" }, "must be 'false', 'true' or 'both'"},
		{"interactive", func(o *Options) { o.Interactive = "yes" }, "must be 'false', 'true' or 'both'"},
		{"auxiliary-ram", func(o *Options) { o.AuxiliaryRAM = 0 }, ""},
		{"auxiliary-ram", func(o *Options) { o.AuxiliaryRAM, o.Network = 4194304, "bridge" }, ""},
		{"auxiliary-ram", func(o *Options) { o.AuxiliaryRAM, o.Network = 4194304, "user" }, "auxiliary machines need --network bridge"},
		{"guest-range", func(o *Options) { o.GuestRange = "" }, ""},
		{"guest-range", func(o *Options) { o.GuestRange = "10.0.0.128/25" }, ""},
		{"guest-range", func(o *Options) { o.GuestRange = "192.168.1.0/24" }, ""}, // the bridge is checked when known
		{"guest-range", func(o *Options) { o.GuestRange = "10.0.0.129/25" }, "host bits are set; did you mean 10.0.0.128/25?"},
		{"guest-range", func(o *Options) { o.GuestRange = "10.0.0.128" }, "expected an IPv4 ADDR/LEN"},
		{"guest-range", func(o *Options) { o.GuestRange = "10.0.0.128/33" }, "expected an IPv4 ADDR/LEN"},
		{"guest-range", func(o *Options) { o.GuestRange = "fd00::/64" }, "expected an IPv4 ADDR/LEN"},
		{"guest-range", func(o *Options) { o.GuestRange = "::ffff:10.0.0.0/120" }, "expected an IPv4 ADDR/LEN"},
		{"guest-range", func(o *Options) { o.GuestRange = "nonsense" }, "expected an IPv4 ADDR/LEN"},
		{"openssl", func(o *Options) { o.OpenSSL, o.OpenSSLOptions = "/opt/openssl3", []string{"-engine", "a,b"} }, ""},
	} {
		o := validOptions()
		c.set(&o)
		err := o.Validate()
		switch {
		case c.reason == "" && err != nil:
			t.Errorf("--%s %+v: %v", c.option, o, err)
		case c.reason == "":
		case err == nil:
			t.Errorf("--%s: accepted, want %q", c.option, c.reason)
		case !strings.Contains(err.Error(), "--"+c.option) || !strings.Contains(err.Error(), c.reason):
			t.Errorf("--%s: %v, want %q", c.option, err, c.reason)
		default:
			var oe *OptionError
			if !errors.As(err, &oe) || oe.Option != c.option {
				t.Errorf("--%s: not an *OptionError for it: %#v", c.option, err)
			}
		}
	}
}

// TestValidateQEMUUser: --qemu-user takes a plain user name or nothing;
// QEMU gets it as -runas only when the agent is root, and always runs
// under -sandbox.
func TestValidateQEMUUser(t *testing.T) {
	for u, ok := range map[string]bool{
		"": true, "nobody": true, "bbot-qemu": true, "_q.1": true,
		"0:0": false, "65534": false, "-root": false, "a,b": false, "a b": false,
		strings.Repeat("u", 33): false,
	} {
		o := validOptions()
		o.QEMUUser = u
		err := o.Validate()
		if (err == nil) != ok {
			t.Errorf("--qemu-user %q: got %v, want ok=%v", u, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--qemu-user ") {
			t.Errorf("--qemu-user %q: error does not name the option: %v", u, err)
		}
	}

	o := validOptions()
	o.QEMUUser, o.Network, o.Accel = "nobody", "user", "tcg"
	want := ""
	if os.Geteuid() == 0 {
		want = "nobody"
	}
	if got := o.QEMURunAs(); got != want {
		t.Errorf("QEMURunAs as uid %d: %q, want %q", os.Geteuid(), got, want)
	}
	v := &VMs{Opts: &o, Accel: &machine.Accel{Requested: o.Accel}, TFTPEndpoint: "10.0.2.2:23401", runDir: t.TempDir()}
	cfg := v.machineConfig(manifest.Machine{MachineHeader: manifest.MachineHeader{Name: "m"}}, t.TempDir(), "build", 1)
	if !cfg.Sandbox || cfg.RunAs != want {
		t.Errorf("machine config: Sandbox %v, RunAs %q", cfg.Sandbox, cfg.RunAs)
	}
	args, err := cfg.Args()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(args, "-sandbox") || slices.Contains(args, "-runas") != (want != "") {
		t.Errorf("argv: %s", machine.CommandLine(args))
	}
}
