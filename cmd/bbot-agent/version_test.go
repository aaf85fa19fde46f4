package main

import (
	"bytes"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/build2/bbot-agent-go/agent"
)

// revisionLine is --version's second line: the commit, its time and
// whether the tree was modified, or that the build did not record it (go
// test and go run binaries, -buildvcs=false).
var revisionLine = regexp.MustCompile(`^(revision [0-9a-f]{40}( \S+)?( \(modified\))?|module version \S+|unknown revision)$`)

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"bbot-agent", "--version"}, &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) != 3 || lines[2] != "" ||
		!regexp.MustCompile(`^bbot-agent `+regexp.QuoteMeta(agent.Version)+` \(Go go1\.\S+\)$`).MatchString(lines[0]) ||
		!revisionLine.MatchString(lines[1]) {
		t.Fatalf("--version printed:\n%s", out.String())
	}

	for _, c := range []struct {
		build agent.Build
		want  string
	}{
		{agent.Build{Go: "go1.26.0"}, "unknown revision"},
		{agent.Build{Go: "go1.26.0", Module: "v0.0.0-20261202140000-53265bb01234"}, "module version v0.0.0-20261202140000-53265bb01234"},
		{agent.Build{Revision: "53265bb0123456789abcdef0123456789abcdef0", Time: "2026-01-02T03:04:05Z", Go: "go1.26.0"},
			"revision 53265bb0123456789abcdef0123456789abcdef0 2026-01-02T03:04:05Z"},
		{agent.Build{Revision: "53265bb0123456789abcdef0123456789abcdef0", Time: "2026-01-02T03:04:05Z", Modified: true, Go: "go1.26.0"},
			"revision 53265bb0123456789abcdef0123456789abcdef0 2026-01-02T03:04:05Z (modified)"},
	} {
		var b bytes.Buffer
		printVersion(&b, c.build)
		want := "bbot-agent " + agent.Version + " (Go go1.26.0)\n" + c.want + "\n"
		if b.String() != want || !revisionLine.MatchString(c.want) {
			t.Errorf("%+v: %q, want %q", c.build, b.String(), want)
		}
	}
}
