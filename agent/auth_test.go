package agent

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/build2/bbot-agent-go/manifest"
)

// protocolDir holds the brep samples and the throwaway test key.
var protocolDir = filepath.Join("..", "testdata", "conformance", "protocol")

// TestAuthReproducesSamples: the fixture key's fingerprint and challenge
// signature come out byte for byte as in the brep samples.
func TestAuthReproducesSamples(t *testing.T) {
	key, err := LoadKey(filepath.Join(protocolDir, "test-agent-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	fp, err := Fingerprint(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	f, _ := os.Open(filepath.Join(protocolDir, "task-request.manifest"))
	defer f.Close()
	tr, err := manifest.ParseTaskRequest(f, "task-request.manifest")
	if err != nil {
		t.Fatal(err)
	}
	if fp != tr.Fingerprint {
		t.Errorf("fingerprint %s, sample %s", fp, tr.Fingerprint)
	}
	rf, _ := os.Open(filepath.Join(protocolDir, "task-response.manifest"))
	defer rf.Close()
	resp, err := manifest.ParseTaskResponse(rf, "task-response.manifest")
	if err != nil {
		t.Fatal(err)
	}
	sig, err := SignChallenge(key, resp.Challenge())
	if err != nil {
		t.Fatal(err)
	}
	qf, _ := os.Open(filepath.Join(protocolDir, "result-request.manifest"))
	defer qf.Close()
	rr, err := manifest.ParseResultRequest(qf, "result-request.manifest")
	if err != nil {
		t.Fatal(err)
	}
	if sig != rr.Challenge {
		t.Errorf("signature:\n%s\nsample:\n%s", sig, rr.Challenge)
	}
}

func TestLoadKeyErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.pem")
	os.WriteFile(bad, []byte("not pem"), 0o600)
	if _, err := LoadKey(bad); err == nil {
		t.Error("garbage key accepted")
	}
	if _, err := LoadKey(filepath.Join(dir, "missing.pem")); err == nil {
		t.Error("missing key accepted")
	}
}
