package agent

import (
	"runtime"
	"runtime/debug"
)

// Build is what the binary records of its own build (go version -m shows
// the same): which commit it was built from, so that an admin and a
// controller's logs can tell two builds of one Version apart.
type Build struct {
	Revision string // VCS commit; "" when not recorded (go test, go run, -buildvcs=false)
	Time     string // commit time, RFC 3339; "" when not recorded
	Modified bool   // built from a work tree with uncommitted changes
	Go       string // Go version
	// Module is the main module's version when it is not "(devel)": what
	// `go install ...@version` records (a pseudo-version names the commit)
	// where there are no vcs settings.
	Module string
}

// ReadBuild is this binary's Build.
func ReadBuild() Build {
	b := Build{Go: runtime.Version()}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return b
	}
	return buildFrom(info)
}

func buildFrom(info *debug.BuildInfo) Build {
	b := Build{Go: info.GoVersion}
	if v := info.Main.Version; v != "" && v != "(devel)" {
		b.Module = v
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			b.Revision = s.Value
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value == "true"
		}
	}
	return b
}

// ShortRevision is the revision's first 12 characters (git's usual
// abbreviation is shorter but can become ambiguous), "" when unknown.
func (b Build) ShortRevision() string {
	if len(b.Revision) > 12 {
		return b.Revision[:12]
	}
	return b.Revision
}

// UserAgent is the User-Agent of the agent's HTTP requests:
// bbot-agent/<Version> (<short revision>[ modified]), without the comment
// when the revision is unknown.
func (b Build) UserAgent() string {
	ua := "bbot-agent/" + Version
	if r := b.ShortRevision(); r != "" {
		if b.Modified {
			r += " modified"
		}
		ua += " (" + r + ")"
	} else if b.Module != "" {
		ua += " (" + b.Module + ")"
	}
	return ua
}

// UserAgent is this binary's User-Agent.
func UserAgent() string { return ReadBuild().UserAgent() }
