package machine

import (
	"log/slog"
	"os"
	"strings"
	"sync"
)

// Accel chooses QEMU's accelerator for --accel auto|kvm|tcg. With auto it
// uses kvm when /dev/kvm opens, unless an earlier machine mis-booted under
// kvm and then booted under tcg: then it switches to tcg for good, records
// that in StateFile and warns (hosts exist where /dev/kvm opens but guests
// hang).
type Accel struct {
	Requested string // "auto", "kvm" or "tcg"
	StateFile string // where a learned choice is kept; "" = not kept
	Log       *slog.Logger
	// KVMUsable reports whether /dev/kvm can be used; nil = try to open it.
	KVMUsable func() bool

	mu        sync.Mutex
	learned   string
	kvmFailed bool
}

func kvmOpens() bool {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// Current returns the accelerator to use for the next start.
func (a *Accel) Current() string {
	if a.Requested == "kvm" || a.Requested == "tcg" {
		return a.Requested
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.learned == "" && a.StateFile != "" {
		if data, err := os.ReadFile(a.StateFile); err == nil {
			a.learned = strings.TrimSpace(string(data))
		}
	}
	if a.learned == "tcg" {
		return "tcg"
	}
	usable := a.KVMUsable
	if usable == nil {
		usable = kvmOpens
	}
	if usable() && !a.kvmFailed {
		return "kvm"
	}
	return "tcg"
}

// MisBooted records that a machine never talked under accel; the next
// Current() tries tcg if this was kvm.
func (a *Accel) MisBooted(accel string) {
	if a.Requested != "auto" || accel != "kvm" {
		return
	}
	a.mu.Lock()
	a.kvmFailed = true
	a.mu.Unlock()
}

// Booted records a machine that talked under accel. A tcg boot after a kvm
// mis-boot makes tcg this agent's choice.
func (a *Accel) Booted(accel string) {
	if a.Requested != "auto" || accel != "tcg" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.kvmFailed || a.learned == "tcg" {
		return
	}
	a.learned = "tcg"
	if a.Log != nil {
		a.Log.Warn("a machine mis-booted under kvm but booted under tcg: using tcg from now on", "state", a.StateFile)
	}
	if a.StateFile != "" {
		if err := os.WriteFile(a.StateFile+".tmp", []byte("tcg\n"), 0o644); err == nil {
			os.Rename(a.StateFile+".tmp", a.StateFile)
		}
	}
}
