package agent

import (
	"slices"

	"github.com/build2/bbot-agent-go/agent/controller"
)

// The slot scheduling decisions, by bbot's priority levels (see
// controller.Priority): B reserves the agent against lower-B URLs, C lets a
// task interrupt one running lower-C task, D makes it interrupt every
// running lower-D task. Levels are hierarchical, so a lower D value is also
// a lower C and B value: a victim is always a task of lower C, and a task
// of a higher B value is never interrupted.

// runningTask is a task occupying a slot.
type runningTask struct {
	Slot     int
	Machine  string
	Priority controller.Priority
}

// Priority levels (controller.Priority.Level).
const (
	levelReserve   = 2 // B
	levelInterrupt = 3 // C
	levelPreempt   = 4 // D
)

// higher reports whether p's level-l value is above q's.
func higher(p, q controller.Priority, l int) bool { return p.Level(l) > q.Level(l) }

// planAsk says whether to ask a controller of priority p and which busy
// machines may be offered to it (interruptible); the caller offers the free
// machines plus those. With a free slot p is asked; with none, only when
// some running task may be interrupted for it.
func planAsk(p controller.Priority, running []runningTask, freeSlots int) (ask bool, interruptible map[string]bool) {
	for _, t := range running {
		if higher(t.Priority, p, levelReserve) {
			return false, nil
		}
	}
	// A machine is offered only if every task on it may go.
	kept := map[string]bool{}
	for _, t := range running {
		if !higher(p, t.Priority, levelInterrupt) {
			kept[t.Machine] = true
		}
	}
	for _, t := range running {
		if !kept[t.Machine] {
			if interruptible == nil {
				interruptible = map[string]bool{}
			}
			interruptible[t.Machine] = true
		}
	}
	return freeSlots > 0 || len(interruptible) > 0, interruptible
}

// planStart says how to start a task for machine from a controller of
// priority p: the slots to interrupt first (sorted), or ok false when it
// cannot start (which offers made by planAsk never lead to, unless the
// running tasks changed since).
func planStart(p controller.Priority, machine string, running []runningTask, freeSlots int) (victims []int, ok bool) {
	busy := false
	for _, t := range running {
		if t.Machine != machine {
			continue
		}
		if !higher(p, t.Priority, levelInterrupt) {
			return nil, false
		}
		busy = true
		victims = append(victims, t.Slot)
	}
	if !busy && freeSlots <= 0 {
		// One slot is needed: the least of the lower-C tasks gives it.
		victim := -1
		for i, t := range running {
			if !higher(p, t.Priority, levelInterrupt) {
				continue
			}
			if victim < 0 || t.Priority.Order() < running[victim].Priority.Order() ||
				t.Priority.Order() == running[victim].Priority.Order() && t.Slot < running[victim].Slot {
				victim = i
			}
		}
		if victim < 0 {
			return nil, false
		}
		victims = append(victims, running[victim].Slot)
	}
	for _, t := range running {
		if higher(p, t.Priority, levelPreempt) && !slices.Contains(victims, t.Slot) {
			victims = append(victims, t.Slot)
		}
	}
	slices.Sort(victims)
	return victims, true
}
