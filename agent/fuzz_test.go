package agent

import (
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
)

// FuzzOptions: option parsing never panics. An accepted --toolchain-name
// is one harmless path component (it names snapshots and directories the
// agent creates and deletes), an accepted controller is an http(s) URL
// with a host, and Validate accepts only values within their ranges.
func FuzzOptions(f *testing.F) {
	f.Add("default", "https://ci.cppget.org/?build-task", "yes", "bridge", "auto", 23400, 1, 2, 1, uint64(2097152), int64(60), int64(3600))
	f.Add("gcc-13", "10=https://ci.cppget.org/?build-task", "86:BA:"+strings.Repeat("00:", 29)+"FF", "user", "kvm", 1, 99, 1024, 6, uint64(65536), int64(1), int64(maxSeconds))
	f.Add("..", "99999=http://x/?build-task&a=b", "", "user", "tcg", 65534, 1, 1, 0, uint64(1<<30), int64(0), int64(1))
	f.Add(".", "123456=http://x/", "no", "bridge", "auto", 0, 0, 0, -1, uint64(0), int64(-1), int64(maxSeconds+1))
	f.Add("a/b", "=http://x/", "yes", "x", "y", 65535, 100, 1025, 7, uint64(1<<30+1), int64(1), int64(1))
	f.Add("1.0", "ftp://x/", "yes", "user", "auto", 23400, 1, 2, 1, uint64(2097152), int64(60), int64(3600))
	f.Add("1x", "http://[::1]:8080/", "yes", "user", "auto", 23400, 1, 2, 1, uint64(2097152), int64(60), int64(3600))
	f.Add(strings.Repeat("a", maxToolchainName+1), "https://", "yes", "user", "auto", 23400, 1, 2, 1, uint64(2097152), int64(60), int64(3600))
	f.Fuzz(func(t *testing.T, name, ctl, trust, network, accel string, port, num, cpu, verbose int, ram uint64, startup, timeout int64) {
		nameErr := validateToolchainName(name)
		if nameErr == nil {
			checkToolchainName(t, name)
		}

		c, ctlErr := controller.ParseController(ctl)
		if ctlErr == nil {
			u, err := url.Parse(c.URL)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				t.Fatalf("controller %q accepted as %+v", ctl, c)
			}
			if c.Priority < 0 || c.Priority > controller.MaxPriority || !strings.HasSuffix(ctl, c.URL) {
				t.Fatalf("controller %q accepted as %+v", ctl, c)
			}
		}

		o := validOptions()
		o.ToolchainName, o.Trust, o.Network, o.Accel = name, []string{trust}, network, accel
		o.TFTPPort, o.ToolchainNum, o.CPU, o.Verbose, o.RAM = port, num, cpu, verbose, ram
		o.BuildStartup, o.BuildTimeout = time.Duration(startup)*time.Second, time.Duration(timeout)*time.Second
		o.StateDir, o.RunDir = "", ""
		o.Controllers = nil
		if ctlErr == nil {
			o.Controllers = []controller.Controller{c}
		}
		if err := o.Validate(); err != nil {
			return
		}
		if nameErr != nil || ctlErr != nil {
			t.Fatalf("Validate accepted toolchain name %q (%v), controller %q (%v)", name, nameErr, ctl, ctlErr)
		}
		// Instance 1 (validOptions) listens on port+(num-1)*100+1.
		if port < 1 || port+(num-1)*100+1 > 65535 || num < 1 || num > 99 || cpu < 1 || verbose < 0 || ram < 65536 ||
			startup < 1 || timeout < 1 || startup > maxSeconds || timeout > maxSeconds {
			t.Fatalf("Validate accepted out of range values: %+v", o)
		}
		for _, d := range []struct{ dir, root string }{{o.StateDir, "/var/lib/bbot-agent"}, {o.RunDir, "/run/bbot-agent"}} {
			if filepath.Dir(d.dir) != d.root || filepath.Base(d.dir) != name {
				t.Fatalf("toolchain %q: directory %q not directly under %s", name, d.dir, d.root)
			}
		}
	})
}

// checkToolchainName fails unless name is one harmless path component.
func checkToolchainName(t *testing.T, name string) {
	t.Helper()
	bad := func(why string) { t.Fatalf("toolchain name %q accepted: %s", name, why) }
	switch {
	case name == "" || name == "." || name == "..":
		bad("not a name")
	case len(name) > maxToolchainName:
		bad("too long")
	case strings.ContainsAny(name, "/\\~ \t\n\r\x00"):
		bad("separator, space or '~'")
	case strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-"):
		bad("hidden or option-like")
	case filepath.Base(name) != name || filepath.Clean(name) != name:
		bad("not one clean path component")
	case protocolLike.MatchString(name):
		bad("collides with the machine's own <machine>-<P>[.<R>] names")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c >= 0x7f {
			bad("control or non-ASCII byte")
		}
	}
}
