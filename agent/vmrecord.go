package agent

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
)

// vmRecordFile, in the run dir, records the running VM. QEMU's lifetime
// does not rely on pdeathsig (QEMU's -runas clears it): a restarted agent
// kills a recorded VM whose process is still the one recorded.
const vmRecordFile = "vm.json"

type vmRecord struct {
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start-time"` // /proc/<pid>/stat field 22: tells a reused pid apart
	Snapshot  string `json:"snapshot"`
	Entry     string `json:"entry,omitempty"` // journal entry id
	Mode      string `json:"mode"`
}

func writeVMRecord(runDir string, r vmRecord) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return fsx.WriteFileAtomic(filepath.Join(runDir, vmRecordFile), data, 0o600)
}

func removeVMRecord(runDir string) { os.Remove(filepath.Join(runDir, vmRecordFile)) }

func readVMRecord(runDir string) (*vmRecord, error) {
	data, err := os.ReadFile(filepath.Join(runDir, vmRecordFile))
	if err != nil {
		return nil, err
	}
	var r vmRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// processStartTime returns a process's start time in clock ticks since
// boot, or 0 when there is no such process.
func processStartTime(pid int) uint64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	// The command name may contain spaces and parentheses: fields count
	// from the last ")".
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	fields := strings.Fields(s[i+1:])
	if len(fields) < 20 {
		return 0
	}
	v, _ := strconv.ParseUint(fields[19], 10, 64) // field 22 overall
	return v
}

// killRecorded SIGKILLs the recorded process if it is still the one that
// was recorded, and waits for it to go.
func killRecorded(pid int, start uint64) (bool, error) {
	if pid <= 0 || start == 0 || processStartTime(pid) != start {
		return false, nil
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return false, err
	}
	for i := 0; i < 200 && processStartTime(pid) == start; i++ {
		time.Sleep(25 * time.Millisecond)
	}
	return true, nil
}
