package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite bbot-agent.1 from the command line definition")

// TestManPage: bbot-agent.1 is what manPage makes of the flags, it
// documents every one of them, and groff formats it without a warning.
func TestManPage(t *testing.T) {
	app := newApp(io.Discard, io.Discard)
	got := manPage(app)
	if *update {
		if err := os.WriteFile("bbot-agent.1", got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile("bbot-agent.1")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("bbot-agent.1 differs from the options; regenerate it: go test ./cmd/bbot-agent -run TestManPage -update")
	}
	for _, f := range app.VisibleFlags() {
		for _, n := range f.Names() {
			dashes := `\-\-`
			if len(n) == 1 {
				dashes = `\-`
			}
			if !bytes.Contains(got, []byte(`\fB`+dashes+strings.ReplaceAll(n, "-", `\-`)+`\fP`)) {
				t.Errorf("the man page lacks %s", n)
			}
		}
	}
	for _, section := range []string{"NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "PRIORITY", "EXIT STATUS", "FILES", "SIGNALS", "SEE ALSO"} {
		if !bytes.Contains(got, []byte("\n.SH "+section+"\n")) {
			t.Errorf("the man page lacks %s", section)
		}
	}

	groff, err := exec.LookPath("groff")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("groff is needed to check the man page (apt-get install groff-base)")
		}
		t.Skip("no groff to check the man page with")
	}
	cmd := exec.Command(groff, "-man", "-Tutf8", "-ww", "-z", "bbot-agent.1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Errorf("groff: %v\n%s", err, stderr.String())
	}
}
