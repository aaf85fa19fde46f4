package agent

import (
	"cmp"
	"context"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/agent/metrics"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// Agent is the daemon: it enumerates machines, polls the controllers,
// performs tasks and reports results.
type Agent struct {
	Opts        *Options
	Log         *slog.Logger
	Name        string // sent as "agent": the host name
	Key         *rsa.PrivateKey
	Fingerprint string
	Version     manifest.StandardVersion

	// VMs are the first slot's machine sessions (the one-shot modes use
	// that slot; tests set the shared hooks through it).
	VMs *VMs
	// lastPurge is when failed/ was last purged (purgeFailed).
	lastPurge  time.Time
	floor      diskFloor // the last free-space check
	lastSeen   time.Time // when the toolchain was last marked in use (markSeen)
	loginSlot  int       // the instance the last request's interactive-login names (guarded by mu)
	Enumerator *inventory.Enumerator
	Client     *controller.Client
	// Journal is the first slot's task journal (opened by Run, Next and
	// RunTask); Sender sends every slot's entries.
	Journal *journal.Journal
	Sender  *journal.Sender

	// slots are the instances --instance .. --instance+--slots-1; mu
	// guards their jobs and status; changed wakes the dispatcher when a
	// job ends; jobs runs the dispatcher and every job.
	slots      []*slot
	mu         sync.Mutex
	changed    chan struct{}
	daemon     bool // Run, not a one-shot: holds left are taken over
	jobs       *errgroup.Group
	lastStatus string
	statusMu   sync.Mutex
	// The daemon's state for --status (see State): statusPath is
	// <run-dir>/status.json while Run runs, "" otherwise.
	statusPath        string
	statusWriteFailed bool // guarded by statusMu
	started           time.Time
	startTime         uint64 // this process's, as processStartTime
	draining          bool   // guarded by mu

	// Host-wide backoff after a host fault: no task is asked for until
	// it passes.
	backoffMu    sync.Mutex
	backoffUntil time.Time
	backoffDelay time.Duration
	backoffWhy   string

	// hearts supervises the long-running goroutines; every
	// WatchdogInterval, Watchdog (systemd WATCHDOG=1) is called if all of
	// them answered (see superviseHearts).
	hearts           *supervisor
	Watchdog         func()
	WatchdogInterval time.Duration
	onStuck          func([]string) // tests: each stuck report

	// stopAll ends Run's context (a finished drain); guarded by mu.
	stopAll context.CancelCauseFunc

	// Rescan wakes the poll sleep early (SIGHUP).
	Rescan <-chan struct{}
	// Ready, if set, is called once the agent serves (systemd READY=1).
	Ready func()
	// Status, if set, receives one-line status changes (systemd STATUS=).
	Status func(string)
	// onTimings, if set, receives each task's timings once its result is
	// delivered (benchmarks; the same figures are logged).
	onTimings func(taskTimings)
	// pendingTimings holds timings (by entry id) until the POST is answered.
	pendingTimings sync.Map
	// Metrics, if set, records the daemon's metrics (EnableMetrics).
	Metrics *metrics.Metrics
	// auxOffNotice logs once that auxiliary machines are not offered;
	// auxBadNames, each badly named auxiliary machine once.
	auxOffNotice sync.Once
	auxBadNames  sync.Map
}

// taskTimings are the agent's own costs around a task.
type taskTimings struct {
	Received    time.Time // task response parsed
	QEMUStarted time.Time // QEMU process started
	Uploaded    time.Time // result upload completed (TFTP)
	Persisted   time.Time // result request fsynced and renamed
	Answered    time.Time // controller answered the POST

	// FirstRequest is the guest's first TFTP request; Snapshot what
	// taking the btrfs snapshot took (the metrics' phases).
	FirstRequest time.Time
	Snapshot     time.Duration
}

func (a *Agent) status(s string) {
	if a.Status != nil {
		a.Status(s)
	}
}

// open creates the state and run directories, claims the slots (instance
// flocks and journals) and recovers what a crashed agent left: a VM still
// running, its TFTP directories, stale admin files, and journal entries,
// which are settled (a complete uploaded result is sent instead of the
// interrupt) and sent.
func (a *Agent) open(ctx context.Context) error {
	for _, d := range []struct{ option, dir string }{{"state-dir", a.Opts.StateDir}, {"run-dir", a.Opts.RunDir}} {
		if err := os.MkdirAll(d.dir, 0o700); err != nil {
			return &ConfigError{fmt.Errorf("--%s: %w", d.option, err)}
		}
		// An existing directory keeps its mode (it may be shared):
		// warn, since it holds QMP sockets or signed challenges.
		if fi, err := os.Stat(d.dir); err == nil && fi.Mode().Perm()&0o077 != 0 {
			a.Log.Warn("directory is accessible to its group or others; make it 0700", "dir", d.dir, "mode", fmt.Sprintf("%04o", fi.Mode().Perm()))
		}
	}
	if a.changed == nil {
		a.changed = make(chan struct{}, 1)
	}
	if a.slots[0].journal == nil && a.Journal != nil {
		a.slots[0].journal = a.Journal // set by a test
	}
	if err := a.claimSlots(); err != nil {
		// A busy journal is an earlier agent still sending: it passes.
		// Another process's instance, or directories this one cannot
		// use, do not.
		if errors.Is(err, journal.ErrBusy) {
			return err
		}
		return &ConfigError{err}
	}
	a.Journal = a.slots[0].journal
	for _, s := range a.slots {
		if err := os.MkdirAll(s.plan.RunDir, 0o700); err != nil {
			return &ConfigError{fmt.Errorf("--run-dir: %w", err)}
		}
		if err := a.killLeftovers(s); err != nil {
			return err
		}
	}
	if n, err := a.Journal.ImportLegacy(a.Opts.StateDir); err != nil {
		a.Log.Error("importing results of the old outbox", "error", err)
	} else if n > 0 {
		a.Log.Info("imported results of the old outbox", "count", n)
	}
	a.recoverOtherInstances()
	for _, s := range a.slots {
		a.recoverJournal(ctx, s.journal)
	}
	a.takeResends(ctx)
	a.purgeFailed(time.Now())
	for _, s := range a.slots {
		a.removeTFTPDirs(s.plan)
	}
	a.removeLegacyLayout()
	return nil
}

// removeTFTPDirs removes an instance's TFTP directories (after its journal
// was recovered: a complete upload there is a result).
func (a *Agent) removeTFTPDirs(p SlotPlan) {
	for _, d := range []string{p.TFTPBuildGet, p.TFTPBuildPut, p.TFTPBootstrapPut} {
		if err := fsx.RemoveOwned(a.Opts.TFTP, d); err != nil {
			a.Log.Error("removing TFTP directory", "path", d, "error", err)
		}
	}
}

// recoverOtherInstances cleans up after instances no live process claims
// (a crash with more --slots than now, or another process of this
// toolchain that is gone): under the instance's flock, it kills a VM left
// in <run>/<n>/, moves its journal entries into this process's first
// journal (sent from there, so that the instance is free again at once)
// and removes its TFTP directories.
func (a *Agent) recoverOtherInstances() {
	ours := map[int]bool{}
	for _, s := range a.slots {
		ours[s.n()] = true
	}
	found := map[int]bool{}
	for _, dir := range []string{filepath.Join(a.Opts.StateDir, "journal"), a.Opts.RunDir} {
		ents, _ := os.ReadDir(dir)
		for _, de := range ents {
			if n, err := strconv.Atoi(de.Name()); err == nil && de.IsDir() && strconv.Itoa(n) == de.Name() && n >= 1 && n <= 99 && !ours[n] {
				found[n] = true
			}
		}
	}
	adopted := 0
	for n := range found {
		claim, err := flockFile(filepath.Join(a.Opts.RunDir, "instance-"+strconv.Itoa(n)+".lock"))
		if err != nil || claim == nil {
			continue // a live process runs it
		}
		plan := PlanSlot(a.Opts, n)
		a.killLeftovers(&slot{plan: plan, log: a.Log.With("instance", n)})
		if j, err := journal.Open(journal.Dir(a.Opts.StateDir, n)); err == nil {
			// Settle against the instance's own TFTP dirs first: a complete
			// upload there is that task's result.
			entries, _ := j.Entries()
			for _, e := range entries {
				if e.State == journal.Received {
					a.recoverReceived(j, e)
				}
			}
			ids, err := a.Journal.Adopt(j)
			if err != nil {
				a.Log.Error("taking over another instance's journal", "instance", n, "error", err)
			}
			adopted += len(ids)
			j.Close()
		}
		a.removeTFTPDirs(plan)
		claim.Close()
	}
	if adopted > 0 {
		a.Log.Info("took over results left by other instances", "count", adopted)
	}
}

// removeLegacyLayout cleans up after an agent of the one-instance layout
// (before slots) that crashed before this upgrade: a VM recorded directly
// in the run dir, and its TFTP directories build/<tc>/ and bootstrap/<tc>/
// (after the journal was recovered: entries record their put dir). A
// toolchain name ending in -<digits> is skipped: build/<name>/ is then
// also another toolchain's instance directory (toolchain x, instance 1:
// build/x-1/).
func (a *Agent) removeLegacyLayout() {
	a.killLeftoversIn(&slot{plan: SlotPlan{RunDir: a.Opts.RunDir}, log: a.Log}, false)
	tc := a.Opts.ToolchainName
	if instanceSuffix.MatchString(tc) {
		return
	}
	for _, d := range []string{filepath.Join(a.Opts.TFTP, "build", tc, "get"), filepath.Join(a.Opts.TFTP, "build", tc, "put"),
		filepath.Join(a.Opts.TFTP, "bootstrap", tc)} {
		if _, err := os.Lstat(d); err == nil {
			if err := fsx.RemoveOwned(a.Opts.TFTP, d); err != nil {
				a.Log.Error("removing TFTP directory of the old layout", "path", d, "error", err)
			}
		}
	}
	os.Remove(filepath.Join(a.Opts.TFTP, "build", tc)) // only if empty
}

// Close releases the slots once sends are done.
func (a *Agent) Close() {
	a.Sender.Wait()
	a.releaseSlots()
	a.Journal = nil
}

// killLeftovers kills a VM recorded in the slot's run dir by a previous
// agent (checked by its start time, so a reused pid is never hit) and
// removes stale run files.
// Only the daemon (Run) takes a live hold over; a one-shot (--fake-request,
// --dump-result) refuses to run in its slot rather than end the evidence.
func (a *Agent) killLeftovers(s *slot) error {
	if !a.daemon {
		if pid := liveHold(s.plan.RunDir); pid != 0 {
			return &ConfigError{fmt.Errorf("instance %d holds a machine for inspection (QEMU pid %d) that the daemon will take over: --release it first", s.n(), pid)}
		}
	} else if a.adoptHold(s) {
		return nil
	}
	a.killLeftoversIn(s, true)
	a.cleanAuxiliary(s)
	return nil
}

// killLeftoversIn is killLeftovers; slotSockets says whether the run dir
// is a slot's, which also had a console and a VNC socket (the one-instance
// layout's never did).
func (a *Agent) killLeftoversIn(s *slot, slotSockets bool) {
	run := s.plan.RunDir
	if r, err := readVMRecord(run); err == nil {
		if killed, err := killRecorded(r.PID, r.StartTime); err != nil {
			s.log.Error("killing QEMU left by a previous agent", "pid", r.PID, "error", err)
		} else if killed {
			s.log.Warn("killed QEMU left by a previous agent", "pid", r.PID, "snapshot", r.Snapshot)
		}
	}
	removeVMRecord(run)
	// A QEMU started just before the agent died, not yet recorded: its
	// own pid file names it; it is ours if its command line names our
	// QMP socket.
	if pid, err := machine.ReadPIDFile(filepath.Join(run, machine.PIDFileName)); err == nil && pid > 0 {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.Contains(string(cmdline), filepath.Join(run, machine.QMPSocketName)) {
			if killed, _ := killRecorded(pid, processStartTime(pid)); killed {
				s.log.Warn("killed an unrecorded QEMU left by a previous agent", "pid", pid)
			}
		}
	}
	for _, n := range []string{machine.PIDFileName, suspendedFile} {
		os.Remove(filepath.Join(run, n))
	}
	// Sockets go only if they are sockets.
	sockets := []string{machine.QMPSocketName, machine.AdminSocketName}
	if slotSockets {
		sockets = append(sockets, machine.ConsoleSocketName, machine.VNCSocketName)
	}
	for _, n := range sockets {
		if err := machine.RemoveSocket(filepath.Join(run, n)); err != nil {
			s.log.Warn("removing a stale socket", "error", err)
		}
	}
	// The worker redirect and the tap, by the slot's own names (a bridge
	// mode run may have left them before a restart in user mode).
	if slotSockets && s.plan.Offset >= 1 && (a.Opts.Network == "bridge" || (os.Geteuid() == 0 && machine.HaveNFT() == nil)) {
		if err := machine.RemoveRedirect(redirectTable(s.plan.Offset)); err != nil {
			s.log.Warn("removing a worker redirect left by a previous agent", "error", err)
		}
		if err := machine.DeleteTap(s.plan.Tap); err != nil {
			s.log.Warn("removing a tap left by a previous agent", "error", err)
		}
	}
	// The TFTP directories are removed once the journal is recovered: a
	// complete upload there is a result.
}

// recoverJournal settles and sends what j holds: received entries become
// their uploaded result if one was completely uploaded, else the interrupt
// they hold; held entries (their VM is gone now) are final as they are.
func (a *Agent) recoverJournal(ctx context.Context, j *journal.Journal) *sync.WaitGroup {
	var sent sync.WaitGroup
	entries, err := j.Entries()
	if err != nil {
		a.Log.Error("reading the task journal", "dir", j.Path(), "error", err)
	}
	for _, e := range entries {
		if a.adoptedEntry(e.ID) {
			continue // sent when its hold ends
		}
		if e.State == journal.Received {
			a.recoverReceived(j, e)
		}
		if e.State != journal.Sendable {
			if err := j.Settle(e, journal.Sendable, e.Status, e.Reason, nil); err != nil {
				a.Log.Error("journal", "entry", e.ID, "error", err)
			}
		}
		a.Log.Info("sending result left by an earlier run", "entry", e.ID, "package", e.Package, "status", e.Status)
		sent.Add(1)
		a.Sender.Async(ctx, j, e, func(bool) { sent.Done() })
	}
	return &sent
}

// instanceSuffix matches names that end like an instance directory.
var instanceSuffix = regexp.MustCompile(`-[0-9]+$`)

// recoverReceived settles an entry whose task was cut short by a crash:
// a result uploaded completely (and upload.tar beside it) is collected as
// perform collects it.
func (a *Agent) recoverReceived(j *journal.Journal, e *journal.Entry) {
	if e.Put == "" {
		return
	}
	for _, n := range resultNames {
		// The put dir is shared by the toolchain's tasks: only a file
		// uploaded after this task was received can be its own.
		if fi, err := os.Stat(filepath.Join(e.Put, n)); err != nil || !fi.ModTime().After(e.Created) {
			continue
		}
		fi, err := os.Stat(filepath.Join(e.Put, uploadTarName))
		uploads := err == nil && fi.ModTime().After(e.Created)
		if _, err := a.collect(j, e, collected{put: e.Put, name: n, uploads: uploads, maxResult: cmp.Or(a.VMs.maxUpload, maxTaskUpload),
			notes: []string{"the agent restarted after the result was uploaded"}}); err != nil {
			a.Log.Warn("uploaded result left by a crashed agent is unusable; sending interrupt", "entry", e.ID, "error", err)
			return
		}
		a.Log.Info("recovered a result uploaded before the agent crashed", "entry", e.ID, "status", e.Status, "uploads", len(e.Uploads))
		return
	}
}

// sigtermSendGrace bounds the POST of a task's result after SIGTERM.
var sigtermSendGrace = 10 * time.Second

// hostBackoffMax caps the host-wide backoff.
var hostBackoffMax = 10 * time.Minute

// applyBackoff records an outcome's backoff: a machine fault withholds the
// machine, a host fault the whole agent (base the poll interval, doubling,
// capped). Only a delivered worker result resets it (resetBackoff).
func (a *Agent) applyBackoff(o outcome, machineDir, why string) {
	switch o.Backoff {
	case machineBackoff:
		if machineDir != "" {
			a.Enumerator.Withhold(machineDir, why)
		}
	case hostBackoff:
		a.backoffMu.Lock()
		if a.backoffDelay == 0 {
			a.backoffDelay = a.Opts.PollInterval
		} else if a.backoffDelay *= 2; a.backoffDelay > hostBackoffMax {
			a.backoffDelay = hostBackoffMax
		}
		a.backoffUntil, a.backoffWhy = time.Now().Add(a.backoffDelay), why
		d := a.backoffDelay
		a.backoffMu.Unlock()
		a.Log.Error("host fault: backing off before asking for another task", "for", d, "why", why)
	}
}

// resetBackoff ends the host-wide backoff: a task went well.
func (a *Agent) resetBackoff() {
	a.backoffMu.Lock()
	a.backoffDelay, a.backoffUntil = 0, time.Time{}
	a.backoffMu.Unlock()
}

func (a *Agent) backingOff() (time.Duration, string) {
	a.backoffMu.Lock()
	defer a.backoffMu.Unlock()
	return time.Until(a.backoffUntil), a.backoffWhy
}

// taskRequest offers the machines that could run here (offerable), with
// --auxiliary-ram.
func (a *Agent) taskRequest(machines []*inventory.Machine) manifest.TaskRequest {
	req := manifest.TaskRequest{Agent: a.Name, ToolchainName: a.Opts.ToolchainName,
		ToolchainVersion: a.Opts.ToolchainVer, Fingerprint: a.Fingerprint}
	for _, m := range machines {
		if a.offerable(m.Header()) {
			req.Machines = append(req.Machines, m.Header())
		}
	}
	if a.Opts.Network == "bridge" {
		req.AuxiliaryRAM = a.Opts.AuxiliaryRAM
	}
	a.addInteractive(&req)
	return req
}

// offerAll offers every machine to every controller.
func (a *Agent) offerAll(machines []*inventory.Machine) func(controller.Controller) (manifest.TaskRequest, bool) {
	return func(controller.Controller) (manifest.TaskRequest, bool) { return a.taskRequest(machines), true }
}

// deliver performs the task in slot s (jctx ends it early: SIGTERM, or a
// higher-priority task), sends its entry in parallel with the teardown,
// and returns the entry (nil when the journal failed). ctx is the agent's:
// when it ends (SIGTERM), the POST gets a short grace.
func (a *Agent) deliver(ctx, jctx context.Context, s *slot, resp *manifest.TaskResponse, machines []*inventory.Machine, received time.Time, cpus int, onHold func()) *journal.Entry {
	e, teardown := a.handle(jctx, s, resp, machines, received, cpus, onHold)
	a.Metrics.TaskOutcome(reportedStatus(e))
	if e != nil && e.State == journal.Held {
		s.log.Info("the held machine's result stays journaled until the next agent ends the hold", "entry", e.ID)
	} else if e != nil {
		// SIGTERM, before or during the POST, leaves it a short grace
		// (one quick try); what is still unsent goes at the next start.
		sendCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		sent := make(chan struct{})
		go func() {
			select {
			case <-ctx.Done():
				select {
				case <-time.After(sigtermSendGrace):
				case <-sent:
				}
			case <-sent:
			}
			cancel()
		}()
		id := e.ID
		a.Sender.Async(sendCtx, s.journal, e, func(ok bool) { close(sent); a.delivered(id, ok) })
	}
	uncover := heartOf(jctx).busy(sessionStepBound)
	teardown() // in parallel with the POST
	uncover()
	if ctx.Err() != nil {
		a.Sender.Wait()
	}
	return e
}

// Next polls (enumerating first, sleeping the poll interval between
// rounds) until a controller hands out a task, and returns it with the
// machines offered. It is for --dump-task and --dump-result.
func (a *Agent) Next(ctx context.Context) (*manifest.TaskResponse, []*inventory.Machine, error) {
	if err := a.open(ctx); err != nil {
		return nil, nil, err
	}
	for {
		machines, err := a.Enumerator.Enumerate(ctx)
		if err != nil {
			return nil, nil, err
		}
		if len(machines) > 0 {
			resp, _, err := a.Client.RequestTask(ctx, a.offerAll(machines))
			if err != nil {
				return nil, nil, err
			}
			if resp != nil {
				return resp, machines, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(a.Opts.PollInterval):
		}
	}
}

// WorkerTaskFor is the task the worker would get for resp.
func (a *Agent) WorkerTaskFor(resp *manifest.TaskResponse, machines []*inventory.Machine) *manifest.Task {
	checksum := agentChecksum(Version, a.Opts.ToolchainID, "")
	for _, m := range machines {
		if m.Header().Name == resp.Task.Machine() {
			checksum = agentChecksum(Version, a.Opts.ToolchainID, m.Manifest.Machine.ID)
		}
	}
	return WorkerTask(resp.Task, a.Opts.Trust, resp.AgentChecksum(), checksum)
}

// Handle performs the task, delivers its result (waiting for the
// delivery attempt) and returns the result (for --dump-result).
func (a *Agent) Handle(ctx context.Context, resp *manifest.TaskResponse, machines []*inventory.Machine) (manifest.Result, error) {
	var res manifest.Result
	e, teardown := a.handle(ctx, a.slots[0], resp, machines, time.Now(), a.Opts.CPU, nil)
	teardown()
	if e == nil {
		return res, errors.New("the task journal could not be written")
	}
	// Uploads first: the result printed is the one sent, with the notes
	// of uploads that failed.
	a.Sender.SendUploads(ctx, a.Journal, e)
	f, err := os.Open(a.Journal.BodyPath(e.ID))
	if err != nil {
		return res, err
	}
	rr, err := manifest.ParseResultRequest(f, "result request")
	f.Close()
	a.Sender.Async(ctx, a.Journal, e, nil)
	a.Sender.Wait()
	return rr.Result, err
}

// errNoMachine is returned when no machine can run a fake request.
var errNoMachine = errors.New("no usable machine for the task")

// RunTask performs one task without a controller (--fake-request): it
// enumerates (bootstrapping as needed), runs the task on the machine it
// names through the same session and journal as a controller's task, and
// returns the result. Nothing is sent.
func (a *Agent) RunTask(ctx context.Context, task *manifest.Task) (manifest.Result, error) {
	if err := a.open(ctx); err != nil {
		return manifest.Result{}, err
	}
	machines, err := a.Enumerator.Enumerate(ctx)
	if err != nil {
		return manifest.Result{}, err
	}
	if findMachine(machines, task.Machine()) == nil {
		var names []string
		for _, m := range machines {
			names = append(names, m.Header().Name)
		}
		return manifest.Result{}, errors.Join(errNoMachine, errors.New("the task names "+task.Machine()+"; usable: "+strings.Join(names, ", ")))
	}
	resp := &manifest.TaskResponse{Fields: manifest.Fields{{Name: "session", Value: "fake-request"}}, Task: task}
	e, teardown := a.handle(ctx, a.slots[0], resp, machines, time.Now(), a.Opts.CPU, nil)
	teardown()
	if e == nil {
		return manifest.Result{}, errors.New("the task journal could not be written")
	}
	defer a.Journal.Remove(e.ID)
	f, err := os.Open(a.Journal.BodyPath(e.ID))
	if err != nil {
		return manifest.Result{}, err
	}
	defer f.Close()
	rr, err := manifest.ParseResultRequest(f, "result request")
	return rr.Result, err
}
