package agent

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/build2/bbot-agent-go/manifest"
)

// protocolDir holds the brep samples and the throwaway test key.
var protocolDir = filepath.Join("..", "testdata", "conformance", "protocol")

func mustVersion(t testing.TB, s string) manifest.StandardVersion {
	t.Helper()
	v, err := manifest.ParseStandardVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// testLog sends the agent's log to t.Log, so it shows for failing tests.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
