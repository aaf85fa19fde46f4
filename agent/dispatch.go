package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/manifest"
)

// Run works until ctx ends (SIGTERM/SIGINT), then reports interrupted
// tasks as "interrupt" and returns nil.
//
// One dispatcher loop per process scans the machines, starts bootstraps in
// idle slots, asks the controllers for tasks (offering free machines, and
// busy ones a URL's priority may interrupt) and starts each task in a slot;
// every job runs in its own goroutine of one errgroup.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.open(ctx); err != nil {
		return err
	}
	if a.Ready != nil {
		a.Ready()
	}
	g, gctx := errgroup.WithContext(ctx)
	a.jobs = g
	g.Go(func() error { a.dispatch(gctx); return nil })
	err := g.Wait()
	for _, s := range a.slots {
		a.setStatus(s, "stopping")
	}
	return err
}

// dispatch is the poll loop.
func (a *Agent) dispatch(ctx context.Context) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	for ctx.Err() == nil {
		if wait, why := a.backingOff(); wait > 0 {
			a.statusLine(fmt.Sprintf("backing off %s after a host fault: %s", wait.Round(time.Second), why))
			select {
			case <-ctx.Done():
			case <-time.After(wait):
			}
			continue
		}
		usable, pending, err := a.Enumerator.Scan(ctx)
		if err != nil && ctx.Err() == nil {
			a.Log.Error("enumerating machines", "error", err)
		}
		a.startBootstraps(ctx, pending)
		worked := false
		if ctx.Err() == nil {
			worked = a.pollOnce(ctx, usable)
		}
		if worked {
			continue // after a task, poll again at once
		}
		if len(usable) == 0 && len(pending) == 0 && !a.anyBusy() {
			a.Log.Warn("no usable machines")
		}
		a.setStatus(nil, "") // the slots' status (after a backoff line)
		// ±20 % jitter so that agents do not poll in lock-step. A job
		// ending (a slot freed, a machine bootstrapped) ends the wait.
		sleep := time.Duration(float64(a.Opts.PollInterval) * (0.8 + 0.4*r.Float64()))
		select {
		case <-ctx.Done():
		case <-a.Rescan:
			a.Log.Info("rescanning machines")
		case <-a.changed:
		case <-time.After(sleep):
		}
	}
}

// signalChanged wakes the dispatcher.
func (a *Agent) signalChanged() {
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *Agent) anyBusy() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slots {
		if s.job != nil {
			return true
		}
	}
	return false
}

// idleSlots returns the slots without a job. Called with a.mu held.
func (a *Agent) idleSlots() []*slot {
	var idle []*slot
	for _, s := range a.slots {
		if s.job == nil {
			idle = append(idle, s)
		}
	}
	return idle
}

// startBootstraps bootstraps pending machines in idle slots, one machine
// per slot, in parallel (another process may be bootstrapping one: then
// BootstrapDir finds it locked and skips it).
func (a *Agent) startBootstraps(ctx context.Context, pending []string) {
	for _, dir := range pending {
		a.mu.Lock()
		idle := a.idleSlots()
		busy := slices.ContainsFunc(a.slots, func(s *slot) bool { return s.job != nil && s.job.dir == dir })
		if len(idle) == 0 {
			a.mu.Unlock()
			return
		}
		if busy {
			a.mu.Unlock()
			continue
		}
		s := idle[0]
		j := &job{bootstrap: true, dir: dir, cpus: a.Opts.CPU, ram: a.Opts.RAM, done: make(chan struct{})}
		s.job = j
		a.mu.Unlock()
		a.setStatus(s, "bootstrapping "+dir)
		a.jobs.Go(func() error {
			defer a.endJob(s, j)
			var boot inventory.Bootstrapper = s.vms
			if a.Opts.FakeBootstrap {
				boot = inventory.FakeBootstrapper{Version: a.Version}
			}
			if m, err := a.Enumerator.BootstrapDir(ctx, dir, boot); err != nil {
				s.log.Warn("bootstrap failed", "machine", dir, "error", err)
			} else if m != nil {
				s.log.Info("machine bootstrapped", "machine", dir)
			}
			return nil
		})
	}
}

// endJob frees the slot and wakes the dispatcher.
func (a *Agent) endJob(s *slot, j *job) {
	a.mu.Lock()
	if s.job == j {
		s.job = nil
	}
	tok := j.token
	j.token = nil
	a.mu.Unlock()
	if tok != nil {
		tok.Close()
	}
	close(j.done)
	a.setStatus(s, "idle")
	a.signalChanged()
}

// runningTasks are the interruptible tasks, for the priority decisions.
// Called with a.mu held.
func (a *Agent) runningTasks() []runningTask {
	var rt []runningTask
	for _, s := range a.slots {
		if j := s.job; j != nil && !j.bootstrap && !j.held {
			rt = append(rt, runningTask{Slot: s.n(), Machine: j.machine, Priority: j.priority})
		}
	}
	return rt
}

// capacity is whether one more task may start now (1 or 0; a poll starts
// at most one): an idle slot, admission, and an --instance-max token, taken
// here (the caller closes it unless the task keeps it). Called with a.mu
// held.
func (a *Agent) capacity() (n int, tokens []*os.File) {
	if len(a.idleSlots()) == 0 || !a.admits(a.Opts.CPU, a.Opts.RAM) {
		return 0, nil
	}
	tok, ok := a.takeToken()
	if !ok {
		return 0, nil
	}
	return 1, []*os.File{tok}
}

func closeTokens(ts []*os.File) {
	for _, t := range ts {
		if t != nil {
			t.Close()
		}
	}
}

// pollOnce asks the controllers for one task and starts it; it reports
// whether there was one.
func (a *Agent) pollOnce(ctx context.Context, usable []*inventory.Machine) bool {
	a.mu.Lock()
	running := a.runningTasks()
	free, tokens := a.capacity()
	busyMachines := map[string]*inventory.Machine{}
	for _, s := range a.slots {
		if j := s.job; j != nil && !j.bootstrap && !j.held && s.jobMachine != nil {
			busyMachines[j.machine] = s.jobMachine
		}
	}
	a.mu.Unlock()
	defer func() { closeTokens(tokens) }()
	if free == 0 && len(running) == 0 {
		return false
	}

	offered := slices.Clone(usable)
	for _, m := range busyMachines {
		offered = append(offered, m)
	}
	offer := func(ctl controller.Controller) (manifest.TaskRequest, bool) {
		ask, interruptible := planAsk(controller.Priority(ctl.Priority), running, free)
		if !ask {
			return manifest.TaskRequest{}, false
		}
		var ms []*inventory.Machine
		if free > 0 || len(interruptible) > 0 {
			ms = append(ms, usable...)
		}
		for name, m := range busyMachines {
			if interruptible[name] {
				ms = append(ms, m)
			}
		}
		req := a.taskRequest(ms)
		return req, len(req.Machines) > 0
	}
	resp, ctl, err := a.Client.RequestTask(ctx, offer)
	if err != nil || resp == nil {
		if err != nil && ctx.Err() == nil {
			a.Log.Error("requesting task", "error", err)
		}
		return false
	}
	received := time.Now()
	prio := controller.Priority(ctl.Priority)
	a.Log.Info("task received", "controller", ctl.URL, "priority", int(prio), "package", resp.Task.Name(), "version", resp.Task.Version(), "machine", resp.Task.Machine())

	victims, ok := planStart(prio, resp.Task.Machine(), running, free)
	var s *slot
	if ok {
		s = a.preempt(ctx, victims, ctl.URL)
	}
	if s == nil {
		// No slot can take it (the machine was not offered, or the
		// interrupted task did not free its slot): the task is settled
		// without a machine, in the first idle slot or slot 1's journal.
		a.mu.Lock()
		if idle := a.idleSlots(); len(idle) > 0 {
			s = idle[0]
		} else {
			s = a.slots[0]
		}
		a.mu.Unlock()
		a.deliver(ctx, ctx, s, resp, nil, received, a.Opts.CPU, nil)
		return true
	}
	var tok *os.File
	if len(tokens) > 0 {
		tok, tokens = tokens[0], tokens[1:]
	} else if a.Opts.InstanceMax > 0 {
		// The victim's token came back with its slot.
		tok, _ = a.takeToken()
	}
	a.startTask(ctx, s, resp, offered, prio, tok, received)
	return true
}

// preempt interrupts the victims (slot numbers), waits for their jobs to
// end (VM forced down, snapshot removed, interrupt settled) and returns a
// slot for the new task: an idle one, else the first victim's. nil when
// none frees up.
func (a *Agent) preempt(ctx context.Context, victims []int, by string) *slot {
	var waits []chan struct{}
	a.mu.Lock()
	for _, n := range victims {
		for _, s := range a.slots {
			if s.n() == n && s.job != nil && !s.job.held && !s.job.bootstrap {
				s.log.Warn("interrupting task for a higher-priority one", "machine", s.job.machine, "by", by)
				s.job.cancel(errPreempted{by: by})
				waits = append(waits, s.job.done)
			}
		}
	}
	a.mu.Unlock()
	for _, w := range waits {
		select {
		case <-w:
		case <-ctx.Done():
			return nil
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if idle := a.idleSlots(); len(idle) > 0 {
		return idle[0]
	}
	return nil
}

// startTask runs a task in slot s, in its own goroutine.
func (a *Agent) startTask(ctx context.Context, s *slot, resp *manifest.TaskResponse, offered []*inventory.Machine, prio controller.Priority, tok *os.File, received time.Time) {
	cpus := a.Opts.CPU
	if prio.Boost() {
		cpus = hostThreads() // bbot's F=1: all hardware threads
	}
	m := findMachine(offered, resp.Task.Machine())
	ram := a.Opts.RAM
	if m != nil {
		ram = taskRAM(a.Opts, m.Header())
	}
	jctx, cancel := context.WithCancelCause(ctx)
	j := &job{dir: "", machine: resp.Task.Machine(), priority: prio, cpus: cpus, ram: ram, token: tok, cancel: cancel, done: make(chan struct{})}
	if m != nil {
		j.dir = m.Dir
	}
	a.mu.Lock()
	s.job, s.jobMachine = j, m
	a.mu.Unlock()
	a.jobs.Go(func() error {
		defer cancel(nil)
		defer a.endJob(s, j)
		a.deliver(ctx, jctx, s, resp, offered, received, cpus, func() {
			// Held, paused: no longer a running task, so it gives its
			// --instance-max token back (it keeps its RAM, see admits).
			a.mu.Lock()
			j.held = true
			tok := j.token
			j.token = nil
			a.mu.Unlock()
			if tok != nil {
				tok.Close()
			}
			a.setStatus(s, "holding "+j.machine+" for inspection")
			a.signalChanged()
		})
		return nil
	})
}
