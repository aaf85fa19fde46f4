package machine

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/qemu")

func baseConfig() Config {
	return Config{
		Name:       "x86_64-linux_test-busybox",
		Dir:        "/build/machines/v/m/m-ci~1a2b",
		RunDir:     "/run/bbot-agent/ci",
		Accel:      "tcg",
		CPUs:       2,
		RAM:        2097152,
		Network:    "user",
		OEMStrings: []string{"bbot.tftp=10.0.2.2:23401", "bbot.mode=build"},
		Options:    `-kernel vmlinuz -initrd initrd.img -append "console=ttyS0 quiet"`,
	}
}

// TestArgsGolden checks QEMU's argv for each network/accel/options
// combination against testdata/qemu/NAME.golden (one argument a line).
func TestArgsGolden(t *testing.T) {
	cases := map[string]func(*Config){
		"user-tcg": func(c *Config) {},
		"user-kvm": func(c *Config) { c.Accel = "kvm"; c.CPUs = 8; c.RAM = 8388608 },
		"bridge-kvm": func(c *Config) {
			c.Accel, c.Network, c.Tap, c.MAC = "kvm", "bridge", "bb1", "de:ad:be:ef:00:01"
			c.OEMStrings = append(c.OEMStrings, "bbot.ip=192.168.100.101/24", "bbot.gw=192.168.100.1")
		},
		"user-tcg-disk-bootstrap": func(c *Config) {
			c.Disk = "disk.img"
			c.OEMStrings = []string{"bbot.tftp=10.0.2.2:23402", "bbot.mode=bootstrap"}
			c.Options = `-device virtio-rng-pci -append 'console=ttyS0 a="b c"'`
		},
		"user-tcg-no-options": func(c *Config) { c.Options = ""; c.OEMStrings = []string{"comma,in=value"} },
		// The agent's sandbox: as root with -runas (setuid allowed) ...
		"user-kvm-sandbox-runas": func(c *Config) {
			c.Accel = "kvm"
			c.Sandbox = true
			c.RunAs = "bbot-qemu"
			c.VNC = true                                                // the agent's: <RunDir>/vnc.sock
			c.OEMFiles = []string{"/run/bbot-agent/default/oem-prefix"} // a secret: not on the command line
		},
		// ... and unprivileged (no setuid).
		"bridge-tcg-sandbox": func(c *Config) {
			c.Network, c.Tap = "bridge", "bb2"
			c.Sandbox = true
			c.VNC, c.VNCSocket = true, "/run/bbot-agent/ci/v,nc.sock" // a comma, escaped
		},
	}
	for name, mod := range cases {
		t.Run(name, func(t *testing.T) {
			c := baseConfig()
			mod(&c)
			args, err := c.Args()
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(args, "\n") + "\n"
			golden := filepath.Join("..", "testdata", "qemu", name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			if got != string(want) {
				t.Errorf("argv differs from %s:\n%s", golden, got)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	bad := map[string]func(*Config){
		"long socket path": func(c *Config) { c.RunDir = "/" + strings.Repeat("d", 100) },
		"accel":            func(c *Config) { c.Accel = "auto" },
		"cpus":             func(c *Config) { c.CPUs = 0 },
		"ram":              func(c *Config) { c.RAM = 1024 },
		"network":          func(c *Config) { c.Network = "wifi" },
		"tap name":         func(c *Config) { c.Network, c.Tap = "bridge", "a-very-long-tap-name" },
		"no tap":           func(c *Config) { c.Network = "bridge" },
		"mac":              func(c *Config) { c.MAC = "de:ad" },
		"oem":              func(c *Config) { c.OEMStrings = []string{""} },
		"disk":             func(c *Config) { c.Disk = "/etc/disk.img" },
		"quote":            func(c *Config) { c.Options = `-append "unterminated` },
		"no dir":           func(c *Config) { c.Dir = "" },
		"runas option":     func(c *Config) { c.RunAs = "-root" },
		"runas uid:gid":    func(c *Config) { c.RunAs = "0:0" },
		"runas comma":      func(c *Config) { c.RunAs = "a,b" },
		"runas long":       func(c *Config) { c.RunAs = strings.Repeat("u", 33) },
		"runas digits":     func(c *Config) { c.RunAs = "65534" },
		"sandbox off":      func(c *Config) { c.Sandbox = true; c.Options += " -sandbox off" },
		"sandbox --":       func(c *Config) { c.Sandbox = true; c.Options += " --sandbox off" },
		"runas root":       func(c *Config) { c.RunAs = "nobody"; c.Options += " -runas root" },
		"run-with":         func(c *Config) { c.RunAs = "nobody"; c.Options += " -run-with user=root" },
		"long console":     func(c *Config) { c.ConsoleSocket = "/" + strings.Repeat("c", 107) },
		// Console socket names are longer than QMP's: a run directory that
		// fits QMP's may not fit it.
		"run dir for console": func(c *Config) { c.RunDir = "/" + strings.Repeat("d", maxSunPath-2-len(ConsoleSocketName)+1) },
		"long vnc":            func(c *Config) { c.VNC, c.VNCSocket = true, "/"+strings.Repeat("v", 107) },
		"vnc option":          func(c *Config) { c.Options += " -vnc 0.0.0.0:1" },
		"vnc option --":       func(c *Config) { c.Options += " --vnc unix:/tmp/v.sock" },
		"display option":      func(c *Config) { c.Options += " -display vnc=127.0.0.1:1" },
		"display option --":   func(c *Config) { c.Options += " --display gtk" },
	}
	for name, mod := range bad {
		c := baseConfig()
		mod(&c)
		if _, err := c.Args(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestValidateAllows: the manifest may bring its own -sandbox or -runas
// when the agent sets none, and user names follow useradd's usual forms.
func TestValidateAllows(t *testing.T) {
	good := map[string]func(*Config){
		"own sandbox": func(c *Config) { c.Options += " -sandbox on" },
		"own runas":   func(c *Config) { c.Options += " -runas qemu" },
		"user names": func(c *Config) {
			c.Sandbox, c.RunAs = true, "_bbot-qemu.1"
		},
		"32 bytes":        func(c *Config) { c.RunAs = strings.Repeat("u", 32) },
		"longest run dir": func(c *Config) { c.RunDir = "/" + strings.Repeat("d", MaxRunDir-1) },
		"vnc":             func(c *Config) { c.VNC = true },
		"longest vnc":     func(c *Config) { c.VNC, c.VNCSocket = true, "/"+strings.Repeat("v", maxSunPath-1) },
	}
	for name, mod := range good {
		c := baseConfig()
		mod(&c)
		if _, err := c.Args(); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestConsoleSocketAndVNC: the defaults and what Info reports come from
// the configuration.
func TestConsoleSocketAndVNC(t *testing.T) {
	c := baseConfig()
	if got := c.ConsoleSocketPath(); got != "/run/bbot-agent/ci/console.sock" {
		t.Errorf("default console socket %s", got)
	}
	if got := c.VNCSocketPath(); got != "" {
		t.Errorf("VNC socket without VNC: %q", got)
	}
	c.VNC = true
	if got := c.VNCSocketPath(); got != "/run/bbot-agent/ci/vnc.sock" {
		t.Errorf("default VNC socket %s", got)
	}
	c.ConsoleSocket, c.VNCSocket = "/tmp/c.sock", "/tmp/v.sock"
	if got := c.ConsoleSocketPath(); got != "/tmp/c.sock" {
		t.Errorf("console socket %s", got)
	}
	if got := c.VNCSocketPath(); got != "/tmp/v.sock" {
		t.Errorf("VNC socket %s", got)
	}
}

func TestSplitOptions(t *testing.T) {
	tests := map[string][]string{
		``:                          nil,
		`-a b`:                      {"-a", "b"},
		`  -a   "b c"  `:            {"-a", "b c"},
		`-x 'a "b" c'`:              {"-x", `a "b" c`},
		`-x "a \"q\" \\ \n"`:        {"-x", `a "q" \ \n`},
		`a\ b c`:                    {"a b", "c"},
		`pre"mid dle"post`:          {"premid dlepost"},
		"-a\tb\nc":                  {"-a", "b", "c"},
		`-append "console=ttyS0 x"`: {"-append", "console=ttyS0 x"},
		`''`:                        {""},
	}
	for in, want := range tests {
		got, err := SplitOptions(in)
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Errorf("%q: got %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{`"open`, `'open`, `trailing\`} {
		if _, err := SplitOptions(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

func TestCommandLine(t *testing.T) {
	got := CommandLine([]string{"qemu", "-append", "console=ttyS0 x", "it's"})
	if want := `qemu -append 'console=ttyS0 x' 'it'\''s'`; got != want {
		t.Errorf("got %s", got)
	}
}

func TestConsoleLogKeepsTail(t *testing.T) {
	p := filepath.Join(t.TempDir(), "console.log")
	c, err := openConsoleLog(p, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var all strings.Builder
	for i := 0; i < 300; i++ {
		line := strings.Repeat(string(rune('a'+i%26)), 9) + "\n"
		all.WriteString(line)
		if _, err := c.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	c.Close()
	data, _ := os.ReadFile(p)
	if len(data) > 1000 || len(data) < 500 {
		t.Fatalf("log is %d bytes", len(data))
	}
	if !strings.HasSuffix(all.String(), string(data)) {
		t.Errorf("log is not the tail of the output")
	}
	if n, err := c.Write([]byte("late")); n != 4 || err != nil {
		t.Errorf("write after close: %d, %v", n, err)
	}
}

func TestAccel(t *testing.T) {
	state := filepath.Join(t.TempDir(), "accel")
	usable := func() bool { return true }
	a := &Accel{Requested: "auto", StateFile: state, KVMUsable: usable}
	if got := a.Current(); got != "kvm" {
		t.Fatalf("auto with kvm: %s", got)
	}
	a.Booted("tcg") // no mis-boot yet: nothing learned
	a.MisBooted("kvm")
	if got := a.Current(); got != "tcg" {
		t.Fatalf("after a kvm mis-boot: %s", got)
	}
	a.Booted("tcg")
	if data, _ := os.ReadFile(state); strings.TrimSpace(string(data)) != "tcg" {
		t.Fatalf("choice not recorded: %q", data)
	}
	// A new agent reads the recorded choice.
	b := &Accel{Requested: "auto", StateFile: state, KVMUsable: usable}
	if got := b.Current(); got != "tcg" {
		t.Errorf("restarted agent: %s", got)
	}
	// Explicit choices are never overridden.
	c := &Accel{Requested: "kvm", StateFile: state, KVMUsable: func() bool { return false }}
	c.MisBooted("kvm")
	if got := c.Current(); got != "kvm" {
		t.Errorf("explicit kvm: %s", got)
	}
	if got := (&Accel{Requested: "auto", KVMUsable: func() bool { return false }}).Current(); got != "tcg" {
		t.Errorf("auto without kvm: %s", got)
	}
}

// TestRedirectScript: the nft transaction names only the slot's own
// tables, and bad values never reach nft.
func TestRedirectScript(t *testing.T) {
	good := Redirect{Table: "bbot_7", Tap: "bb7", MAC: "02:aa:bb:cc:00:07", Mark: 0x62620007, To: netip.MustParseAddrPort("10.0.0.1:40000")}
	s, err := good.script()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"delete table bridge bbot_7", "delete table ip bbot_7", `iifname "bb7" ether saddr != 02:aa:bb:cc:00:07 drop`,
		"meta mark 0x62620007 ip daddr 196.254.111.222 udp dport 69 dnat to 10.0.0.1:40000", "ip daddr 10.0.0.1 udp dport 40000 meta mark != 0x62620007 drop"} {
		if !strings.Contains(s, want) {
			t.Errorf("script lacks %q:\n%s", want, s)
		}
	}
	for _, bad := range []Redirect{
		{Table: "bbot 7; flush ruleset", Tap: "bb7", MAC: good.MAC, To: good.To},
		{Table: "bbot_7", Tap: `bb7" accept`, MAC: good.MAC, To: good.To},
		{Table: "bbot_7", Tap: "bb7", MAC: "02:aa:bb:cc:00:07:08:09", To: good.To},
		{Table: "bbot_7", Tap: "bb7", MAC: good.MAC, To: netip.MustParseAddrPort("[fd00::1]:69")},
	} {
		if _, err := bad.script(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	if err := RemoveRedirect("x; flush ruleset"); err == nil {
		t.Error("RemoveRedirect took a bad table name")
	}
}
