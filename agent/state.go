package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
)

// Activity is what a slot is doing. The same states make the systemd
// STATUS= line, `--status` and the metrics.
type Activity string

const (
	ActivityIdle          Activity = "idle"
	ActivityBootstrapping Activity = "bootstrapping"
	ActivityBuilding      Activity = "building"
	ActivityHeld          Activity = "held"
	// ActivityInteractive: an interactive build waits at its breakpoint,
	// its machine running for a person on its console.
	ActivityInteractive Activity = "interactive"
	ActivityStopping    Activity = "stopping"
)

// Activities lists every activity, in a fixed order (metrics export one
// series per activity).
var Activities = []Activity{ActivityIdle, ActivityBootstrapping, ActivityBuilding, ActivityHeld, ActivityInteractive, ActivityStopping}

// SlotState is one slot's activity.
type SlotState struct {
	Instance int       `json:"instance"`
	Activity Activity  `json:"activity"`
	Machine  string    `json:"machine,omitempty"` // machine name or directory
	Task     string    `json:"task,omitempty"`    // <package>/<version> while building
	Console  string    `json:"console,omitempty"` // console socket, while interactive
	Since    time.Time `json:"since"`
}

// part is the slot's piece of the STATUS= line.
func (s SlotState) part() string {
	switch s.Activity {
	case ActivityBootstrapping:
		return "bootstrapping " + s.Machine
	case ActivityBuilding:
		return "building " + s.Task + " on " + s.Machine
	case ActivityHeld:
		return "holding " + s.Machine + " for inspection"
	case ActivityInteractive:
		return "interactive " + s.Task + " on " + s.Machine + " at its breakpoint"
	case "":
		return string(ActivityIdle)
	}
	return string(s.Activity)
}

// Withheld is a machine waiting out a machine-fault backoff.
type Withheld struct {
	Machine string    `json:"machine"` // directory
	Until   time.Time `json:"until"`
	Why     string    `json:"why"`
}

// State is a running agent's state: what its slots do, its host backoff
// and the machines it withholds. The daemon keeps it in
// <run-dir>/status.json for `--status`, which binds and locks nothing.
type State struct {
	PID          int         `json:"pid"`
	StartTime    uint64      `json:"start-time"` // tells a reused pid apart
	Started      time.Time   `json:"started"`
	Updated      time.Time   `json:"updated"`
	Toolchain    string      `json:"toolchain"`
	Slots        []SlotState `json:"slots"`
	BackoffUntil time.Time   `json:"backoff-until,omitzero"`
	BackoffWhy   string      `json:"backoff-why,omitempty"`
	Draining     bool        `json:"draining,omitempty"`
	Withheld     []Withheld  `json:"withheld,omitempty"`
}

// BackingOff reports whether the host backoff is in force at now.
func (s *State) BackingOff(now time.Time) bool { return now.Before(s.BackoffUntil) }

// Line is the systemd STATUS= line: the host backoff when in force, else
// one part per slot.
func (s *State) Line(now time.Time) string {
	if s.BackingOff(now) {
		return fmt.Sprintf("backing off %s after a host fault: %s", s.BackoffUntil.Sub(now).Round(time.Second), s.BackoffWhy)
	}
	var parts []string
	for _, x := range s.Slots {
		if len(s.Slots) == 1 {
			parts = append(parts, x.part())
		} else {
			parts = append(parts, strconv.Itoa(x.Instance)+": "+x.part())
		}
	}
	line := strings.Join(parts, "; ")
	if s.Draining {
		line = "draining: " + line
	}
	return line
}

// statusFile, in the run directory, is the State of the process whose
// first instance is first: several processes may share a run directory.
func statusFile(first int) string { return "status-" + strconv.Itoa(first) + ".json" }

// State returns the agent's current state.
func (a *Agent) State() State {
	st := State{PID: os.Getpid(), Updated: time.Now().UTC(), Toolchain: a.Opts.ToolchainName}
	a.mu.Lock()
	st.StartTime, st.Started = a.startTime, a.started
	for _, s := range a.slots {
		x := s.state
		x.Instance = s.n()
		if x.Activity == "" {
			x.Activity, x.Since = ActivityIdle, a.started
		}
		st.Slots = append(st.Slots, x)
	}
	st.Draining = a.draining
	a.mu.Unlock()
	a.backoffMu.Lock()
	if time.Now().Before(a.backoffUntil) {
		st.BackoffUntil, st.BackoffWhy = a.backoffUntil.UTC(), a.backoffWhy
	}
	a.backoffMu.Unlock()
	if a.Enumerator != nil {
		for _, w := range a.Enumerator.Waiting() {
			st.Withheld = append(st.Withheld, Withheld{Machine: w.Dir, Until: w.Until.UTC(), Why: w.Why})
		}
	}
	return st
}

// publishState sends the STATUS= line when it changed and rewrites the
// status file (when the daemon keeps one). Called with statusMu held, so
// that lines and files go out in the order they were made.
func (a *Agent) publishState() {
	st := a.State()
	line := st.Line(time.Now())
	a.mu.Lock()
	changed := line != a.lastStatus
	a.lastStatus = line
	a.mu.Unlock()
	if a.statusPath != "" {
		if err := writeState(a.statusPath, st); err != nil && !a.statusWriteFailed {
			// Said once: a full run dir must not flood the log.
			a.statusWriteFailed = true
			a.Log.Error("writing the status file for --status", "path", a.statusPath, "error", err)
		}
	}
	if changed {
		a.status(line)
	}
}

func writeState(path string, st State) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	return fsx.WriteFileAtomic(path, append(data, '\n'), 0o600)
}

// ReadStates returns the state of each agent process that has run with
// runDir, by first instance; Running tells whether it still runs (a gone
// one's last state is kept to be shown).
func ReadStates(runDir string) ([]ProcessState, error) {
	names, err := filepath.Glob(filepath.Join(runDir, "status-*.json"))
	if err != nil {
		return nil, err
	}
	var out []ProcessState
	for _, name := range names {
		data, err := os.ReadFile(name)
		if errors.Is(err, os.ErrNotExist) {
			continue // its process just stopped
		}
		if err != nil {
			return nil, err
		}
		var st State
		if err := json.Unmarshal(data, &st); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		running := st.StartTime != 0 && processStartTime(st.PID) == st.StartTime
		out = append(out, ProcessState{State: st, Running: running})
	}
	slices.SortFunc(out, func(a, b ProcessState) int { return firstInstance(a.State) - firstInstance(b.State) })
	return out, nil
}

// ProcessState is one agent process's State, and whether it still runs.
type ProcessState struct {
	State
	Running bool
}

func firstInstance(s State) int {
	if len(s.Slots) == 0 {
		return 0
	}
	return s.Slots[0].Instance
}
