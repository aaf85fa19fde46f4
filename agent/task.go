package agent

import (
	"crypto/sha256"
	"encoding/hex"

	"github.com/build2/bbot-agent-go/manifest"
)

// agentChecksum is the checksum the agent reports in every result request:
// it changes whenever the agent, the toolchain or the machine changes, which
// makes brep hand out full (not "skip"-able) rebuilds.
func agentChecksum(agentVersion, toolchainID, machineID string) string {
	h := sha256.New()
	for _, s := range []string{agentVersion, toolchainID, machineID} {
		h.Write([]byte(s))
		h.Write([]byte{0}) // separator, so ("ab","c") differs from ("a","bc")
	}
	return hex.EncodeToString(h.Sum(nil))
}

// WorkerTask returns the task as it is handed to the worker: every field the
// controller sent, except that --trust values replace the controller's trust
// values, and the worker and dependency checksums are dropped unless the
// controller's agent checksum (responseChecksum, empty if none) equals ours.
func WorkerTask(t *manifest.Task, trust []string, responseChecksum, ourChecksum string) *manifest.Task {
	w := &manifest.Task{Fields: append(manifest.Fields(nil), t.Fields...)}
	if len(trust) != 0 {
		w.Fields.Replace("trust", trust, manifest.TaskOrder)
	}
	if responseChecksum == "" || responseChecksum != ourChecksum {
		w.Fields.Delete("worker-checksum")
		w.Fields.Delete("dependency-checksum")
	}
	return w
}
