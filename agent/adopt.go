package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine"
)

// adoptedHold is a build machine a previous agent left held in a slot
// (SIGTERM, an upgrade, a crash): its QEMU still runs, paused; this agent
// holds it on and ends it.
type adoptedHold struct {
	rec   *vmRecord
	sus   *Suspended
	entry *journal.Entry
	lock  *inventory.Lock
}

// adoptHold takes over the held machine recorded in slot s, if there is
// one: the VM record and suspended.json name the same live QEMU, its task
// left no auxiliary machine, and the slot's journal holds its entry in
// state held. The machine's lock is taken here, before enumeration can
// sweep the snapshot. The console socket was the dead agent's (it served
// it) and goes until holdAdopted serves it again; QEMU's own sockets
// (QMP, admin, VNC) stay.
func (a *Agent) adoptHold(s *slot) bool {
	run := s.plan.RunDir
	r, err := readVMRecord(run)
	if err != nil || r.Mode != "build" || r.Entry == "" || s.journal == nil {
		return false
	}
	sus, err := ReadSuspended(run)
	if err != nil || sus == nil || sus.PID != r.PID || sus.StartTime != r.StartTime {
		if err != nil {
			s.log.Warn("not taking over a held machine: its record is unreadable; it is ended", "pid", r.PID, "error", err)
		}
		return false
	}
	if aux, _ := filepath.Glob(filepath.Join(run, "a*", vmRecordFile)); len(aux) > 0 {
		s.log.Warn("not taking over the held machine: its auxiliary machines are not taken over; it is ended", "pid", r.PID)
		return false
	}
	entries, _ := s.journal.Entries()
	var e *journal.Entry
	for _, x := range entries {
		if x.ID == r.Entry && x.State == journal.Held && x.MachineDir != "" {
			e = x
		}
	}
	if e == nil {
		s.log.Warn("not taking over the held machine: its journal entry is not held; it is ended", "pid", r.PID, "entry", r.Entry)
		return false
	}
	// The lock is shared with every toolchain's scans: a short wait lets
	// one pass.
	lock, err := inventory.LockMachineWait(context.Background(), e.MachineDir, adoptLockWait)
	if err != nil || lock == nil {
		s.log.Warn("not taking over the held machine: its machine lock stays busy; it is ended and its result sent", "pid", r.PID, "machine", e.MachineDir, "error", err)
		return false
	}
	machine.RemoveSocket(filepath.Join(run, machine.ConsoleSocketName))
	sus.ConsoleSocket = ""
	if err := writeSuspended(run, *sus); err != nil {
		s.log.Warn("rewriting the held machine's record", "error", err)
	}
	s.adopted = &adoptedHold{rec: r, sus: sus, entry: e, lock: lock}
	s.log.Warn("took over a machine a previous agent held for inspection", "pid", r.PID, "snapshot", r.Snapshot,
		"since", sus.Since, "reason", sus.Reason, "entry", e.ID)
	return true
}

// adoptLockWait bounds the wait for a held machine's lock at take-over.
const adoptLockWait = 30 * time.Second

// liveHold returns the pid of the live QEMU runDir's records name as
// held, 0 if none.
func liveHold(runDir string) int {
	r, err := readVMRecord(runDir)
	if err != nil || r.Mode != "build" {
		return 0
	}
	sus, err := ReadSuspended(runDir)
	if err != nil || sus == nil || sus.PID != r.PID || sus.StartTime != r.StartTime || processStartTime(r.PID) != r.StartTime {
		return 0
	}
	return r.PID
}

// adoptedEntry reports whether entry id belongs to a hold taken over.
func (a *Agent) adoptedEntry(id string) bool {
	for _, s := range a.slots {
		if s.adopted != nil && s.adopted.entry.ID == id {
			return true
		}
	}
	return false
}

// startAdoptedHolds runs the holds taken over at start-up as the slots'
// jobs.
func (a *Agent) startAdoptedHolds(ctx context.Context) {
	for _, s := range a.slots {
		ad := s.adopted
		if ad == nil {
			continue
		}
		s.adopted = nil
		j := &job{dir: ad.entry.MachineDir, machine: filepath.Base(ad.entry.MachineDir), held: true, heldSince: ad.sus.Since,
			ram: a.Opts.RAM, done: make(chan struct{})}
		a.mu.Lock()
		s.job = j
		a.mu.Unlock()
		a.setStatus(s, SlotState{Activity: ActivityHeld, Machine: j.machine})
		a.jobs.Go(func() error {
			defer a.endJob(s, j)
			hctx, untrack := a.hearts.track(ctx, fmt.Sprintf("slot %d hold", s.n()))
			defer untrack()
			a.holdAdopted(hctx, s, ad)
			return nil
		})
		a.enforceSuspendMax()
	}
}

// adoptedPoll is how often a taken-over QEMU (not this agent's child) is
// checked for having gone.
const adoptedPoll = 250 * time.Millisecond

// holdAdopted holds a taken-over machine as session.hold does: until QEMU
// ends (--release), --suspend-timeout counted from when the hold began,
// --suspend-max, or the agent stops (then it stays for the next one).
// Ended, the VM, its snapshot, tap and records go and the result is sent.
func (a *Agent) holdAdopted(ctx context.Context, s *slot, ad *adoptedHold) {
	v, pid, start := s.vms, ad.rec.PID, ad.rec.StartTime
	var timeout <-chan time.Time
	if a.Opts.SuspendTimeout > 0 {
		t := time.NewTimer(max(time.Until(ad.sus.Since.Add(a.Opts.SuspendTimeout)), 0))
		defer t.Stop()
		timeout = t.C
	}
	tick := time.NewTicker(adoptedPoll)
	defer tick.Stop()
	h := heartOf(ctx)
	console := a.reattachConsole(ctx, s, ad)
held:
	for {
		select {
		case <-tick.C:
			if processStartTime(pid) != start {
				s.log.Info("suspended machine released", "snapshot", ad.rec.Snapshot)
				break held
			}
		case <-timeout:
			s.log.Warn("suspend timeout passed, releasing machine", "snapshot", ad.rec.Snapshot)
			break held
		case <-v.evict:
			s.log.Warn("releasing the oldest held machine: more are held than --suspend-max allows", "snapshot", ad.rec.Snapshot)
			break held
		case <-ctx.Done():
			s.log.Warn("the agent stops: the held machine stays suspended for the next agent to take over", "pid", pid)
			if console != nil {
				console.Close()
				ad.sus.ConsoleSocket = ""
				if err := writeSuspended(s.plan.RunDir, *ad.sus); err != nil {
					s.log.Warn("rewriting the held machine's record", "error", err)
				}
			}
			ad.lock.Close()
			return
		case <-h.beat():
		}
	}
	defer h.busy(sessionStepBound)()
	if _, err := killRecorded(pid, start); err != nil {
		s.log.Error("ending the held QEMU", "pid", pid, "error", err)
	}
	if console != nil {
		console.Close()
	}
	run := s.plan.RunDir
	removeVMRecord(run)
	for _, n := range []string{suspendedFile, machine.PIDFileName} {
		os.Remove(filepath.Join(run, n))
	}
	for _, n := range []string{machine.QMPSocketName, machine.AdminSocketName, machine.ConsoleSocketName, machine.VNCSocketName} {
		machine.RemoveSocket(filepath.Join(run, n))
	}
	if a.Opts.Network == "bridge" {
		v.dropRedirect()
		v.dropTap()
	}
	// Only a temporary snapshot of the task's own machine.
	snap := ad.rec.Snapshot
	if filepath.Dir(snap) == ad.entry.MachineDir && strings.Contains(filepath.Base(snap), "~") {
		if ok, _ := btrfs.IsSubvolume(snap); ok {
			if err := btrfs.Delete(snap); err != nil {
				s.log.Error("deleting snapshot", "path", snap, "error", err)
			}
		}
	}
	ad.lock.Close()
	e := ad.entry
	if err := s.journal.Settle(e, journal.Sendable, e.Status, e.Reason, nil); err != nil {
		s.log.Error("journal", "error", err)
	}
	a.Sender.Async(ctx, s.journal, e, func(bool) {})
}

// reattachConsole serves the taken-over machine's serial console again,
// on the slot's console socket, and records it for --suspended; nil (and
// the hold goes on without it) if QEMU does not let it.
func (a *Agent) reattachConsole(ctx context.Context, s *slot, ad *adoptedHold) *machine.HeldConsole {
	defer heartOf(ctx).busy(sessionStepBound)()
	run := s.plan.RunDir
	c, err := machine.ReattachConsole(ctx, filepath.Join(run, machine.QMPSocketName), run, ad.sus.ConsoleLog,
		machine.DefaultConsoleLogMax, s.log, filepath.Base(ad.entry.MachineDir))
	if err != nil {
		s.log.Warn("the held machine's console is not served again (VNC and the admin socket still are)", "error", err)
		return nil
	}
	ad.sus.ConsoleSocket = c.SocketPath()
	if err := writeSuspended(run, *ad.sus); err != nil {
		s.log.Warn("rewriting the held machine's record", "error", err)
	}
	s.log.Info("serving the held machine's console again", "attach", ConsoleAttach(c.SocketPath()))
	return c
}
