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
	}
	return ua
}

// UserAgent is this binary's User-Agent.
func UserAgent() string { return ReadBuild().UserAgent() }
