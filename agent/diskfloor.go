package agent

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/metrics"
)

// diskFloor remembers the last free-space check, for status and metrics.
type diskFloor struct {
	mu   sync.Mutex
	free []metrics.FreeSpace
	low  string // why the last check found too little space; "" if none
	said bool   // the low space was logged (until space is back)
}

// checkFreeSpace measures the free space (for unprivileged users, as
// statfs's f_bavail) of the filesystems the agent writes: the machines
// (snapshots), the TFTP root (uploads land there) and the state directory
// (results), each once. It returns why no bootstrap or task may start
// (one of them below --min-free), or "".
func (a *Agent) checkFreeSpace() string {
	floor := a.Opts.MinFree * 1024
	var free []metrics.FreeSpace
	var low string
	seen := map[uint64]bool{}
	for _, d := range []struct{ option, path string }{{"machines", a.Opts.Machines}, {"tftp", a.Opts.TFTP}, {"state-dir", a.Opts.StateDir}} {
		var st unix.Statfs_t
		if err := unix.Statfs(d.path, &st); err != nil {
			a.Log.Debug("free space: statfs", "path", d.path, "error", err)
			continue
		}
		var stat unix.Stat_t
		if unix.Stat(d.path, &stat) == nil {
			if seen[stat.Dev] {
				continue
			}
			seen[stat.Dev] = true
		}
		bytes := st.Bavail * uint64(st.Bsize)
		free = append(free, metrics.FreeSpace{Path: d.path, Bytes: bytes})
		if floor > 0 && bytes < floor && low == "" {
			low = fmt.Sprintf("free space on --%s %s is %s, below --min-free %s: no bootstrap or task starts until there is more",
				d.option, d.path, formatBytes(bytes), formatBytes(floor))
		}
	}
	a.floor.mu.Lock()
	was := a.floor.low
	a.floor.free, a.floor.low = free, low
	if low == "" {
		a.floor.said = false
	}
	a.floor.mu.Unlock()
	if was != "" && low == "" {
		a.Log.Info("free space is above --min-free again")
	}
	return low
}

// lowSpaceBackoff is the host backoff for low free space: one poll
// interval at a time, not the doubling of other host faults, so that work
// resumes soon after space is freed; said once, then at debug level.
func (a *Agent) lowSpaceBackoff(why string) {
	a.backoffMu.Lock()
	a.backoffUntil, a.backoffWhy = time.Now().Add(a.Opts.PollInterval), why
	a.backoffMu.Unlock()
	// The figures change every round: said once per low-space episode.
	a.floor.mu.Lock()
	repeated := a.floor.said
	a.floor.said = true
	a.floor.mu.Unlock()
	if repeated {
		a.Log.Debug("host fault: low free space", "why", why)
		return
	}
	a.Log.Error("host fault: backing off before starting anything", "why", why)
}

// freeSpace is the last check's result.
func (a *Agent) freeSpace() ([]metrics.FreeSpace, string) {
	a.floor.mu.Lock()
	defer a.floor.mu.Unlock()
	return a.floor.free, a.floor.low
}

func formatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
