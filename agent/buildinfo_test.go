package agent

import (
	"runtime/debug"
	"testing"
)

// TestBuildModuleVersion: `go install ...@version` records no vcs
// settings, only the module version (a pseudo-version names the commit).
func TestBuildModuleVersion(t *testing.T) {
	b := buildFrom(&debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261202140000-53265bb01234"}})
	if b.Module != "v0.0.0-20261202140000-53265bb01234" || b.UserAgent() != "bbot-agent/"+Version+" (v0.0.0-20261202140000-53265bb01234)" {
		t.Fatalf("%+v, User-Agent %q", b, b.UserAgent())
	}
}

func TestBuildUserAgent(t *testing.T) {
	for _, c := range []struct {
		settings []debug.BuildSetting
		want     Build
		ua       string
	}{
		{nil, Build{Go: "go1.26.0"}, "bbot-agent/" + Version},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "53265bb0123456789abcdef0123456789abcdef0"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "false"}},
			Build{Revision: "53265bb0123456789abcdef0123456789abcdef0", Time: "2026-01-02T03:04:05Z", Go: "go1.26.0"},
			"bbot-agent/" + Version + " (53265bb01234)"},
		{[]debug.BuildSetting{{Key: "vcs.revision", Value: "53265bb0123456789abcdef0123456789abcdef0"}, {Key: "vcs.modified", Value: "true"}},
			Build{Revision: "53265bb0123456789abcdef0123456789abcdef0", Modified: true, Go: "go1.26.0"},
			"bbot-agent/" + Version + " (53265bb01234 modified)"},
	} {
		b := buildFrom(&debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: c.settings})
		if b != c.want {
			t.Errorf("%v: %+v, want %+v", c.settings, b, c.want)
		}
		if ua := b.UserAgent(); ua != c.ua {
			t.Errorf("%v: User-Agent %q, want %q", c.settings, ua, c.ua)
		}
	}
}
