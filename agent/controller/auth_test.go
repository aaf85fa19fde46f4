package controller

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/build2/bbot-agent-go/manifest"
)

// protocolDir holds the brep samples and the throwaway test key.
var protocolDir = filepath.Join("..", "..", "testdata", "conformance", "protocol")

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

// TestKeyFileExposed: any group or other permission bit on the --auth-key
// file is reported; the owner's bits and the file type are not.
func TestKeyFileExposed(t *testing.T) {
	for mode, want := range map[os.FileMode]bool{
		0o600: false, 0o400: false, 0o700: false, 0o000: false,
		0o640: true, 0o644: true, 0o604: true, 0o620: true, 0o602: true,
		0o610: true, 0o601: true, 0o666: true, 0o777: true,
		os.ModeSymlink | 0o600: false, os.ModeSetuid | 0o600: false,
		os.ModeSticky | 0o644: true,
	} {
		if got := KeyFileExposed(mode); got != want {
			t.Errorf("%v: got %v, want %v", mode, got, want)
		}
	}
}
