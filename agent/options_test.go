package agent

import (
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
		BootstrapStartup: 300 * time.Second, BootstrapTimeout: 3600 * time.Second, BootstrapRetries: 2,
		BuildStartup: 60 * time.Second, BuildTimeout: 5400 * time.Second, BuildRetries: 2,
		CPU: 2, RAM: 2097152,
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
	secs := func(p func(*Options) *time.Duration) func(*Options, int64) {
		return func(o *Options, v int64) { *p(o) = time.Duration(v) * time.Second }
	}
	set := map[string]func(*Options, int64){
		"tftp-port":         func(o *Options, v int64) { o.TFTPPort = int(v) },
		"toolchain-num":     func(o *Options, v int64) { o.ToolchainNum = int(v); o.TFTPPort = 1 },
		"bootstrap-retries": func(o *Options, v int64) { o.BootstrapRetries = int(v) },
		"build-retries":     func(o *Options, v int64) { o.BuildRetries = int(v) },
		"request-retries":   func(o *Options, v int64) { o.RequestRetries = int(v) },
		"cpu":               func(o *Options, v int64) { o.CPU = int(v) },
		"ram":               func(o *Options, v int64) { o.RAM = uint64(v) },
		"verbose":           func(o *Options, v int64) { o.Verbose = int(v) },
		"bootstrap-startup": secs(func(o *Options) *time.Duration { return &o.BootstrapStartup }),
		"bootstrap-timeout": secs(func(o *Options) *time.Duration { return &o.BootstrapTimeout }),
		"build-startup":     secs(func(o *Options) *time.Duration { return &o.BuildStartup }),
		"build-timeout":     secs(func(o *Options) *time.Duration { return &o.BuildTimeout }),
		"connect-timeout":   secs(func(o *Options) *time.Duration { return &o.ConnectTimeout }),
		"request-timeout":   secs(func(o *Options) *time.Duration { return &o.RequestTimeout }),
		"poll-interval":     secs(func(o *Options) *time.Duration { return &o.PollInterval }),
		"result-ttl":        secs(func(o *Options) *time.Duration { return &o.ResultTTL }),
		"suspend-timeout":   secs(func(o *Options) *time.Duration { return &o.SuspendTimeout }),
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
			v  int64
			ok bool
		}{{r.Min - 1, false}, {r.Min, true}, {r.Max, true}, {r.Max + 1, false}} {
			o := validOptions()
			f(&o, c.v)
			err := o.Validate()
			if (err == nil) != c.ok {
				t.Errorf("--%s %d: got %v, want ok=%v", name, c.v, err, c.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "--"+name+" ") {
				t.Errorf("--%s %d: error does not name the option: %v", name, c.v, err)
			}
		}
	}
	// The port limit moves with --toolchain-num: the sum is the port.
	for _, c := range []struct {
		port, num int
		ok        bool
	}{{65436, 99, true}, {65437, 99, false}, {65534, 1, true}, {0, 99, false}} {
		o := validOptions()
		o.TFTPPort, o.ToolchainNum = c.port, c.num
		if err := o.Validate(); (err == nil) != c.ok {
			t.Errorf("--tftp-port %d --toolchain-num %d: got %v, want ok=%v", c.port, c.num, err, c.ok)
		}
	}
	// A RAM value beyond int64 does not wrap into the range.
	o := validOptions()
	o.RAM = 1<<63 + 65536
	if err := o.Validate(); err == nil {
		t.Errorf("--ram %d accepted", o.RAM)
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
