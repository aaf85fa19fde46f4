package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// slot is one instance of the address plan: its own TFTP port, tap, TFTP
// directories, run files and journal. It runs one job at a time: a task or
// a bootstrap.
type slot struct {
	plan    SlotPlan
	vms     *VMs
	journal *journal.Journal
	dirs    taskDirs
	log     *slog.Logger
	claim   *os.File // flock on <run>/instance-<n>.lock
	// adopted is a hold a previous agent left, taken over at start-up
	// (open) until Run starts it as the slot's job.
	adopted *adoptedHold

	// Guarded by Agent.mu.
	job        *job
	jobMachine *inventory.Machine // the task's machine, offered again to URLs that may interrupt it
	state      SlotState
}

func (s *slot) n() int { return s.plan.Instance }

// job is what occupies a slot.
type job struct {
	bootstrap bool     // a bootstrap, not a task
	dir       string   // machine directory
	auxDirs   []string // its auxiliary machines' directories
	machine   string   // machine name
	priority  controller.Priority
	cpus      int
	ram       uint64 // KiB
	held      bool   // suspended for inspection: neither interruptible nor counted in priorities
	heldSince time.Time
	token     *os.File
	cancel    context.CancelCauseFunc
	done      chan struct{}
}

// errPreempted is the cause given to a task interrupted for a
// higher-priority one.
type errPreempted struct{ by string }

func (e errPreempted) Error() string {
	return "interrupted for a higher-priority task from " + e.by
}

// flockFile takes an exclusive flock on path without waiting; nil, nil
// when another process (or another open file here) holds it.
func flockFile(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, err
	}
	return f, nil
}

// claimWait bounds the wait for an instance's flock: another process's
// start-up recovery holds a free instance's flock for a moment; a running
// process holds it for good.
var claimWait = 5 * time.Second

// flockFileWait retries flockFile for up to wait.
func flockFileWait(path string, wait time.Duration) (*os.File, error) {
	deadline := time.Now().Add(wait)
	for {
		f, err := flockFile(path)
		if err != nil || f != nil || time.Now().After(deadline) {
			return f, err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// errInstanceClaimed: another process runs this instance.
var errInstanceClaimed = errors.New("claimed by another bbot-agent process")

// claimSlots takes each slot's instance flock and opens its journal. It
// fails, releasing what it took, if another process holds an instance.
func (a *Agent) claimSlots() error {
	for _, s := range a.slots {
		path := filepath.Join(a.Opts.RunDir, "instance-"+strconv.Itoa(s.n())+".lock")
		f, err := flockFileWait(path, claimWait)
		if err == nil && f == nil {
			err = fmt.Errorf("instance %d (%s): %w; give this process another --instance, or fewer --slots", s.n(), path, errInstanceClaimed)
		}
		if err == nil {
			s.claim = f
			if s.journal == nil {
				s.journal, err = journal.Open(journal.Dir(a.Opts.StateDir, s.plan.JournalInstance))
				if errors.Is(err, journal.ErrBusy) {
					err = fmt.Errorf("instance %d: journal %w (an earlier agent's results are being sent; try again later)", s.n(), err)
				}
			}
		}
		if err != nil {
			a.releaseSlots()
			return err
		}
	}
	return nil
}

func (a *Agent) releaseSlots() {
	for _, s := range a.slots {
		if s.journal != nil {
			s.journal.Close()
			s.journal = nil
		}
		if s.claim != nil {
			s.claim.Close()
			s.claim = nil
		}
	}
}

// takeToken takes one of the --instance-max tokens shared by every process
// of this toolchain (flocks in the run dir); nil when all are taken. With
// --instance-max 0 there is no cap and no token.
func (a *Agent) takeToken() (*os.File, bool) {
	if a.Opts.InstanceMax == 0 {
		return nil, true
	}
	for k := 1; k <= a.Opts.InstanceMax; k++ {
		f, err := flockFile(filepath.Join(a.Opts.RunDir, "token-"+strconv.Itoa(k)+".lock"))
		if err != nil {
			a.Log.Error("--instance-max token", "error", err)
			return nil, false
		}
		if f != nil {
			return f, true
		}
	}
	return nil, false
}

// hostThreads and hostMemory are the admission limits' bases.
var hostThreads = runtime.NumCPU

func hostMemory() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb
		}
	}
	return 0
}

// admits reports whether a task of cpus and ram fits beside the running
// jobs: their CPUs within host threads × --cpu-overcommit, their RAM
// within host memory minus --ram-reserve. A held (paused) machine keeps its
// RAM but uses no CPU. The first job is always admitted, so that a host
// smaller than one task still works. Called with a.mu held.
func (a *Agent) admits(cpus int, ram uint64) bool { return a.admitsBeside(cpus, ram, nil) }

// admitsBoost: an F=1 task of priority p takes all hardware threads; it
// fits beside the jobs that remain once the tasks it interrupts (lower D,
// as planStart) are gone. Called with a.mu held.
func (a *Agent) admitsBoost(p controller.Priority) bool {
	return a.admitsBeside(hostThreads(), a.Opts.RAM, func(j *job) bool {
		return !j.bootstrap && !j.held && p.Level(4) > j.priority.Level(4)
	})
}

// admitsBeside is admits, leaving out the jobs gone reports true for.
func (a *Agent) admitsBeside(cpus int, ram uint64, gone func(*job) bool) bool {
	var usedCPU int
	var usedRAM uint64
	busy := false
	for _, s := range a.slots {
		j := s.job
		if j == nil || gone != nil && gone(j) {
			continue
		}
		busy = true
		usedRAM += j.ram
		if !j.held {
			usedCPU += j.cpus
		}
	}
	if !busy {
		return true
	}
	overcommit := a.Opts.CPUOvercommit
	if overcommit <= 0 {
		overcommit = 1
	}
	if float64(usedCPU+cpus) > float64(hostThreads())*overcommit {
		return false
	}
	if mem := hostMemory(); mem > 0 {
		avail := uint64(0)
		if mem > a.Opts.RAMReserve {
			avail = mem - a.Opts.RAMReserve
		}
		if usedRAM+ram > avail {
			return false
		}
	}
	return true
}

// setStatus records a slot's state (nil: none changed) and publishes the
// agent's state: systemd STATUS=, one part per slot, and the status file.
func (a *Agent) setStatus(s *slot, st SlotState) {
	a.statusMu.Lock()
	defer a.statusMu.Unlock()
	if s != nil {
		a.mu.Lock()
		if st.Activity != s.state.Activity || s.state.Since.IsZero() {
			st.Since = time.Now().UTC()
		} else {
			st.Since = s.state.Since
		}
		s.state = st
		a.mu.Unlock()
	}
	a.publishState()
}
