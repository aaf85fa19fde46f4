package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/machine"
)

// suspendedFile, in the run directory, describes the machine the agent
// holds after a soft failure; the admin commands read it.
const suspendedFile = "suspended.json"

// Suspended is a held machine, for administrators.
type Suspended struct {
	PID        int    `json:"pid"`
	StartTime  uint64 `json:"start-time"` // tells a reused pid apart
	Snapshot   string `json:"snapshot"`
	ConsoleLog string `json:"console"`
	// ConsoleSocket serves the live console (ConsoleAttach); VNC is the
	// VNC server's unix socket (VNCAttach), "" if none.
	ConsoleSocket string    `json:"console-socket,omitempty"`
	VNC           string    `json:"vnc,omitempty"`
	AdminSocket   string    `json:"qmp"`
	Since         time.Time `json:"since"`
	Reason        string    `json:"reason"`
	// Interactive: an interactive build at its breakpoint, running (not
	// paused); --release ends the build (abort).
	Interactive bool `json:"interactive,omitempty"`
}

func writeSuspended(runDir string, s Suspended) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return fsx.WriteFileAtomic(filepath.Join(runDir, suspendedFile), append(data, '\n'), 0o600)
}

// ReadSuspended returns the machine held in runDir, or nil when none is.
func ReadSuspended(runDir string) (*Suspended, error) {
	data, err := os.ReadFile(filepath.Join(runDir, suspendedFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s Suspended
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", suspendedFile, err)
	}
	// Left by a crashed agent: the QEMU it names is gone (or the pid is
	// another process now). Acting on it would hit the next, healthy build.
	if s.StartTime == 0 || processStartTime(s.PID) != s.StartTime {
		return nil, nil
	}
	return &s, nil
}

// ReleaseSuspended ends the held machine (QMP quit through its admin
// socket); the agent then cleans up and reports the result.
func ReleaseSuspended(runDir string) (*Suspended, error) {
	return adminCommand(runDir, "quit")
}

// ResumeSuspended lets the held machine run again (QMP cont): the agent
// keeps holding it until it exits.
func ResumeSuspended(runDir string) (*Suspended, error) {
	return adminCommand(runDir, "cont")
}

func adminCommand(runDir, execute string) (*Suspended, error) {
	s, err := ReadSuspended(runDir)
	if err != nil || s == nil {
		return s, err
	}
	if execute == "quit" && s.Interactive {
		if err := markReleased(runDir); err != nil {
			return s, err
		}
	}
	_, err = machine.AdminCommand(s.AdminSocket, execute)
	return s, err
}

// HeldSlot is a machine held in one slot.
type HeldSlot struct {
	Instance  int
	Suspended *Suspended
}

// ListSuspended returns the machines held in every slot's run directory
// (<run>/<instance>/), by instance.
func ListSuspended(runDir string) ([]HeldSlot, error) {
	ents, err := os.ReadDir(runDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var held []HeldSlot
	for _, de := range ents {
		n, err := strconv.Atoi(de.Name())
		if err != nil || !de.IsDir() || strconv.Itoa(n) != de.Name() {
			continue
		}
		s, err := ReadSuspended(filepath.Join(runDir, de.Name()))
		if err != nil {
			return held, err
		}
		if s != nil {
			held = append(held, HeldSlot{Instance: n, Suspended: s})
		}
	}
	slices.SortFunc(held, func(a, b HeldSlot) int { return a.Instance - b.Instance })
	return held, nil
}

// ConsoleAttach is the command that attaches a terminal to a console
// socket: raw, no local echo, Ctrl-] detaches.
func ConsoleAttach(path string) string {
	return "socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:" + path
}

// VNCAttach is, in short, how to reach a VNC socket with a viewer: locally
// through a one-connection TCP forwarder, remotely through ssh (see the
// README and bbot-agent(1)). "" without VNC.
func VNCAttach(path string) string {
	if path == "" {
		return ""
	}
	return "local: socat TCP-LISTEN:5901,bind=127.0.0.1,reuseaddr UNIX-CONNECT:" + path + " & vncviewer 127.0.0.1::5901; remote: ssh -L 5901:" + path + " <host>"
}
