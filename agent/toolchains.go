package agent

import (
	"os"
	"path/filepath"
	"time"

	"github.com/build2/bbot-agent-go/agent/inventory"
)

// seenInterval is how often a running agent records that its toolchain is
// in use (inventory.MarkSeen), for retiring the snapshots of toolchains no
// agent runs any more.
const seenInterval = time.Hour

// markSeen records, at most once per seenInterval, that this toolchain's
// agent runs.
func (a *Agent) markSeen(now time.Time) {
	if now.Sub(a.lastSeen) < seenInterval {
		return
	}
	a.lastSeen = now
	if err := inventory.MarkSeen(a.Opts.Machines, a.Opts.ToolchainName, now); err != nil {
		a.Log.Warn("recording that the toolchain is in use (for retiring unused toolchains' snapshots)", "error", err)
	}
}

// DefaultRunDir is the run directory of toolchain's agents unless
// --run-dir says otherwise.
func DefaultRunDir(toolchain string) string { return filepath.Join("/run/bbot-agent", toolchain) }

// InstancesRunning reports whether a process holds an instance of the
// agent whose run directory is runDir (its instance-<n>.lock flocks).
func InstancesRunning(runDir string) bool {
	locks, _ := filepath.Glob(filepath.Join(runDir, "instance-*.lock"))
	for _, l := range locks {
		if _, err := os.Stat(l); err != nil {
			continue
		}
		f, err := flockFile(l)
		if err == nil && f == nil {
			return true // held
		}
		if f != nil {
			f.Close()
		}
	}
	return false
}
