package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
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
	// rctx also ends when a drain is done: the results left by an earlier
	// run, sent from open, stop with everything else (they stay
	// journaled).
	rctx, stopAll := context.WithCancelCause(ctx)
	defer stopAll(nil)
	a.mu.Lock()
	a.stopAll = stopAll
	a.mu.Unlock()
	a.daemon = true // holds left by an earlier agent are taken over, not refused
	if err := a.open(rctx); err != nil {
		return err
	}
	a.mu.Lock()
	a.started, a.startTime = time.Now().UTC(), processStartTime(os.Getpid())
	a.mu.Unlock()
	a.statusMu.Lock()
	a.statusPath = filepath.Join(a.Opts.RunDir, statusFile(a.slots[0].n()))
	a.statusMu.Unlock()
	a.Metrics.SetState(a.metricsSnapshot) // State is whole from here on
	a.setStatus(nil, SlotState{})
	a.LogStartup()
	if a.Ready != nil {
		a.Ready()
	}
	g, gctx := errgroup.WithContext(rctx)
	a.jobs = g
	a.startAdoptedHolds(gctx)
	g.Go(func() error { a.dispatch(gctx); return nil })
	if a.Watchdog != nil && a.WatchdogInterval > 0 {
		g.Go(func() error { a.superviseHearts(gctx, a.WatchdogInterval, a.Watchdog); return nil })
	}
	err := g.Wait()
	for _, s := range a.slots {
		a.setStatus(s, SlotState{Activity: ActivityStopping})
	}
	return err
}

// dispatch is the poll loop.
func (a *Agent) dispatch(ctx context.Context) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	ctx, untrack := a.hearts.track(ctx, "dispatcher")
	defer untrack()
	h := heartOf(ctx)
	for ctx.Err() == nil {
		crash.Point("dispatch")
		if a.isDraining() {
			if !a.anyRunning() {
				a.finishDrain(h)
				return
			}
			a.waitJobs(ctx)
			continue
		}
		if wait, _ := a.backingOff(); wait > 0 {
			a.setStatus(nil, SlotState{}) // the backoff line
			t := time.NewTimer(wait)
		backoff:
			for {
				select {
				case <-ctx.Done():
					break backoff
				case <-t.C:
					break backoff
				case <-a.changed: // a drain
					break backoff
				case <-h.beat():
				}
			}
			t.Stop()
			continue
		}
		uncover := h.busy(scanBound)
		usable, pending, err := a.Enumerator.Scan(ctx)
		uncover()
		if err != nil && ctx.Err() == nil {
			a.Log.Error("enumerating machines", "error", err)
		}
		a.takeResends(ctx)
		a.purgeFailed(time.Now())
		a.markSeen(time.Now())
		// Below the free-space floor nothing new starts (a full disk
		// would fail it mid-way, as a host fault): a host backoff.
		if why := a.checkFreeSpace(); why != "" {
			a.lowSpaceBackoff(why)
			continue
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
		a.setStatus(nil, SlotState{}) // the slots' status (after a backoff line)
		// ±20 % jitter so that agents do not poll in lock-step. A job
		// ending (a slot freed, a machine bootstrapped) ends the wait.
		sleep := time.NewTimer(time.Duration(float64(a.Opts.PollInterval) * (0.8 + 0.4*r.Float64())))
	wait:
		for {
			select {
			case <-ctx.Done():
				break wait
			case <-a.Rescan:
				a.Log.Info("rescanning machines")
				break wait
			case <-a.changed:
				break wait
			case <-sleep.C:
				break wait
			case <-h.beat():
			}
		}
		sleep.Stop()
	}
}

// scanBound bounds a scan of the machines (directory reads, stale
// snapshot deletion: no bootstrap) for the watchdog.
var scanBound = 5 * time.Minute

// Drain stops taking work (SIGUSR1): running tasks and bootstraps finish,
// no controller is asked again (a poll under way ends first, and a task it
// brings runs too), and once none runs Run returns nil. Safe to call from
// any goroutine, and more than once.
func (a *Agent) Drain() {
	a.mu.Lock()
	was := a.draining
	a.draining = true
	a.mu.Unlock()
	if !was {
		a.Log.Warn("draining: finishing running tasks and bootstraps, taking no new ones, then exiting")
		a.setStatus(nil, SlotState{})
		a.signalChanged()
	}
}

func (a *Agent) isDraining() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.draining
}

// anyRunning reports a job that is not a held machine: holds do not
// delay a drain (they end as on SIGTERM).
func (a *Agent) anyRunning() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.slots {
		if s.job != nil && !s.job.held {
			return true
		}
	}
	return false
}

// waitJobs waits for a job to end (or a heartbeat ask, or ctx).
func (a *Agent) waitJobs(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-a.changed:
	case <-heartOf(ctx).beat():
	}
}

// drainSendGrace bounds how long a drain waits for results still being
// POSTed; what is unsent stays journaled and goes at the next start.
var drainSendGrace = time.Minute

// errDrained ends the agent after a drain.
var errDrained = errors.New("drained")

// finishDrain waits a little for the outbox, then stops the agent: held
// machines stay held, as on SIGTERM, for the next agent to take over.
func (a *Agent) finishDrain(h *heart) {
	sent := make(chan struct{})
	go func() { a.Sender.Wait(); close(sent) }()
	t := time.NewTimer(drainSendGrace)
	defer t.Stop()
	for waiting := true; waiting; {
		select {
		case <-sent:
			waiting = false
		case <-t.C:
			a.Log.Warn("drained with results still being sent; they stay journaled for the next start")
			waiting = false
		case <-h.beat():
		}
	}
	a.Log.Warn("drained: no task running, exiting")
	a.stopAll(errDrained)
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
		if !a.admits(a.Opts.CPU, a.Opts.RAM) {
			a.mu.Unlock()
			return
		}
		s := idle[0]
		j := &job{bootstrap: true, dir: dir, cpus: a.Opts.CPU, ram: a.Opts.RAM, done: make(chan struct{})}
		s.job = j
		a.mu.Unlock()
		a.setStatus(s, SlotState{Activity: ActivityBootstrapping, Machine: dir})
		a.jobs.Go(func() error {
			defer a.endJob(s, j)
			ctx, untrack := a.hearts.track(ctx, fmt.Sprintf("slot %d bootstrap", s.n()))
			defer untrack()
			var boot inventory.Bootstrapper = s.vms
			if a.Opts.FakeBootstrap {
				boot = inventory.FakeBootstrapper{Version: a.Version}
			}
			if m, err := a.Enumerator.BootstrapDir(ctx, dir, boot); err != nil {
				s.log.Warn("bootstrap failed", "machine", dir, "error", err)
			} else if m != nil {
				s.log.Log(ctx, logx.LevelNotice, "machine bootstrapped", "machine", dir)
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
	// Idle before done: a preempting task may start in s at once.
	a.setStatus(s, SlotState{Activity: ActivityIdle})
	close(j.done)
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

// slotState returns, from the slots now, the interruptible running tasks,
// their machines, and the scanned machines that no job uses (a job's
// machine may still be unlocked while the job starts, so the scan alone
// would offer it again). Called with a.mu held.
func (a *Agent) slotState(scanned []*inventory.Machine) (running []runningTask, busy map[string]*inventory.Machine, free []*inventory.Machine) {
	running = a.runningTasks()
	busy = map[string]*inventory.Machine{}
	inUse := map[string]bool{}
	for _, s := range a.slots {
		j := s.job
		if j == nil {
			continue
		}
		inUse[j.dir] = true
		for _, d := range j.auxDirs {
			inUse[d] = true
		}
		if !j.bootstrap && !j.held && s.jobMachine != nil {
			busy[j.machine] = s.jobMachine
		}
	}
	for _, m := range scanned {
		if !inUse[m.Dir] {
			free = append(free, m)
		}
	}
	return running, busy, free
}

// pollOnce asks the controllers for one task and starts it; it reports
// whether there was one.
func (a *Agent) pollOnce(ctx context.Context, scanned []*inventory.Machine) bool {
	a.mu.Lock()
	free, tokens := a.capacity()
	anyRunning := len(a.runningTasks()) > 0
	a.mu.Unlock()
	defer func() { closeTokens(tokens) }()
	if free == 0 && !anyRunning {
		return false
	}

	// Each controller is offered what the slots allow when it is asked (a
	// poll with retries lasts a while): free machines, and busy ones whose
	// task its priority may interrupt.
	offered := map[string]*inventory.Machine{}
	offer := func(ctl controller.Controller) (manifest.TaskRequest, bool) {
		p := controller.Priority(ctl.Priority)
		a.mu.Lock()
		running, busy, usable := a.slotState(scanned)
		boostFits := !p.Boost() || a.admitsBoost(p)
		a.mu.Unlock()
		ask, interruptible := planAsk(p, running, free)
		if !ask || !boostFits {
			return manifest.TaskRequest{}, false
		}
		var ms []*inventory.Machine
		if free > 0 || len(interruptible) > 0 {
			ms = append(ms, usable...)
		}
		for name, m := range busy {
			if interruptible[name] {
				ms = append(ms, m)
			}
		}
		for _, m := range ms {
			offered[m.Header().Name] = m
		}
		req := a.taskRequest(ms)
		return req, len(req.Machines) > 0
	}
	// The poll is bounded (PollBound); answering the watchdog meanwhile
	// is left to that bound, plus a margin for the offers' computation.
	uncover := heartOf(ctx).busy(a.Client.PollBound() + time.Minute)
	resp, ctl, err := a.Client.RequestTask(ctx, offer)
	uncover()
	if err != nil || resp == nil {
		if err != nil && ctx.Err() == nil {
			a.Log.Error("requesting task", "error", err)
		}
		return false
	}
	received := time.Now()
	prio := controller.Priority(ctl.Priority)
	a.Log.Log(ctx, logx.LevelNotice, "task received", "controller", ctl.URL, "priority", int(prio), "package", resp.Task.Name(), "version", resp.Task.Version(), "machine", resp.Task.Machine())

	m := offered[resp.Task.Machine()]
	if m == nil {
		// Not a machine we offered: settled at once (abort), in an idle
		// slot's journal or the first slot's.
		a.deliver(ctx, ctx, a.journalSlot(), resp, nil, received, a.Opts.CPU, nil)
		return true
	}
	a.mu.Lock()
	running, _, _ := a.slotState(scanned)
	a.mu.Unlock()
	victims, ok := planStart(prio, m.Header().Name, running, free)
	var s *slot
	if ok {
		prefer := 0
		if breakpoint(resp.Task) != "" {
			a.mu.Lock()
			prefer = a.loginSlot
			a.mu.Unlock()
		}
		s = a.preempt(ctx, victims, ctl.URL, prefer)
		if s != nil && prefer != 0 && s.n() != prefer {
			s.log.Warn("the interactive task's slot is not the one its interactive-login named (that slot is busy): its console is this slot's",
				"login-instance", prefer, "console", InteractiveLogin(s.plan.RunDir))
		}
	}
	var tok *os.File
	switch {
	case s == nil:
		a.unplaced(ctx, resp, m, received, "no slot became free for the task (the tasks it could interrupt changed, or the agent is stopping)")
		return true
	case len(tokens) > 0:
		tok, tokens = tokens[0], tokens[1:]
	case a.Opts.InstanceMax > 0:
		// The victim's token came back with its slot, unless another
		// process took it meanwhile.
		if tok, ok = a.takeToken(); !ok {
			a.unplaced(ctx, resp, m, received, "--instance-max reached: another process took the interrupted task's token")
			return true
		}
	}
	a.startTask(ctx, s, resp, m, auxiliaryOffered(offered), prio, tok, received)
	return true
}

// journalSlot is the slot whose journal records a task that runs no
// machine: an idle one, else the first.
func (a *Agent) journalSlot() *slot {
	a.mu.Lock()
	defer a.mu.Unlock()
	if idle := a.idleSlots(); len(idle) > 0 {
		return idle[0]
	}
	return a.slots[0]
}

// errUnplaced is why a task for an offered machine could not start.
type errUnplaced struct{ why string }

func (e errUnplaced) Error() string { return e.why }

// unplaced reports a task for a machine we offered that no slot can take
// as interrupt (brep hands it out again), without running it.
func (a *Agent) unplaced(ctx context.Context, resp *manifest.TaskResponse, m *inventory.Machine, received time.Time, why string) {
	a.Log.Warn("task received but not started: reporting interrupt", "package", resp.Task.Name(), "machine", m.Header().Name, "why", why)
	jctx, cancel := context.WithCancelCause(ctx)
	cancel(errUnplaced{why})
	a.deliver(ctx, jctx, a.journalSlot(), resp, []*inventory.Machine{m}, received, a.Opts.CPU, nil)
}

// preempt interrupts the victims (slot numbers), waits for their jobs to
// end (VM forced down, snapshot removed, interrupt settled) and returns a
// slot for the new task: an idle one, else the first victim's. nil when
// none frees up.
// An idle slot numbered prefer (0: any) is taken first.
func (a *Agent) preempt(ctx context.Context, victims []int, by string, prefer int) *slot {
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
	victim:
		for {
			select {
			case <-w:
				break victim
			case <-ctx.Done():
				return nil
			case <-heartOf(ctx).beat(): // the victims have hearts of their own
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	idle := a.idleSlots()
	for _, s := range idle {
		if s.n() == prefer {
			return s
		}
	}
	if len(idle) > 0 {
		return idle[0]
	}
	return nil
}

// startTask runs a task in slot s, in its own goroutine.
func (a *Agent) startTask(ctx context.Context, s *slot, resp *manifest.TaskResponse, m *inventory.Machine, aux []*inventory.Machine, prio controller.Priority, tok *os.File, received time.Time) {
	cpus := a.Opts.CPU
	if prio.Boost() {
		cpus = hostThreads() // bbot's F=1: all hardware threads
	}
	jctx, cancel := context.WithCancelCause(ctx)
	auxCPUs, auxMem := a.auxiliaryNeeds(resp.Task)
	j := &job{dir: m.Dir, auxDirs: auxiliaryDirs(resp.Task, aux), machine: m.Header().Name, priority: prio, cpus: cpus + auxCPUs, ram: taskRAM(a.Opts, m.Header()) + auxMem,
		token: tok, cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	s.job, s.jobMachine = j, m
	a.mu.Unlock()
	a.jobs.Go(func() error {
		defer cancel(nil)
		defer a.endJob(s, j)
		jctx, untrack := a.hearts.track(jctx, fmt.Sprintf("slot %d task", s.n()))
		defer untrack()
		a.deliver(ctx, jctx, s, resp, append([]*inventory.Machine{m}, aux...), received, cpus, func() { a.markHeld(s) })
		return nil
	})
}

// markHeld records that slot s holds its machine for inspection: the job is
// no longer a running task (not interruptible, not in the priority
// decisions, no CPU in admission) and gives its --instance-max token back;
// its RAM stays counted (the paused VM keeps it).
func (a *Agent) markHeld(s *slot) {
	a.mu.Lock()
	j := s.job
	if j == nil {
		a.mu.Unlock()
		return
	}
	j.held, j.heldSince = true, time.Now()
	tok := j.token
	j.token = nil
	what := j.machine
	if what == "" {
		what = j.dir
	}
	a.mu.Unlock()
	if tok != nil {
		tok.Close()
	}
	a.setStatus(s, SlotState{Activity: ActivityHeld, Machine: what})
	a.enforceSuspendMax()
	a.signalChanged()
}

// enforceSuspendMax releases the oldest held machines beyond
// --suspend-max (0: no cap): each held snapshot keeps its disk space.
func (a *Agent) enforceSuspendMax() {
	if a.Opts.SuspendMax <= 0 {
		return
	}
	a.mu.Lock()
	var held []*slot
	for _, s := range a.slots {
		if s.job != nil && s.job.held {
			held = append(held, s)
		}
	}
	slices.SortFunc(held, func(x, y *slot) int { return x.job.heldSince.Compare(y.job.heldSince) })
	a.mu.Unlock()
	for i := 0; i < len(held)-a.Opts.SuspendMax; i++ {
		select {
		case held[i].vms.evict <- struct{}{}:
		default: // already told
		}
	}
}
