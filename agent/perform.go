package agent

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/agent/metrics"
	"github.com/build2/bbot-agent-go/agent/result"
	"github.com/build2/bbot-agent-go/manifest"
)

// resultNames are the names a worker may upload its result manifest as
// (result.manifest.lz4: LZ4-compressed, bbot 0.17's worker).
var resultNames = []string{"manifest", "result.manifest", "result.manifest" + result.CompressedSuffix}

// taskDirs are the TFTP directories of one slot's tasks: GET serves Get,
// PUT writes Put (<tftp>/build/<toolchain>-<instance>/get and put).
type taskDirs struct{ Root, Get, Put string }

// newTaskDirs returns the slot's task directories under the TFTP root.
func newTaskDirs(tftpRoot string, p SlotPlan) taskDirs {
	return taskDirs{Root: tftpRoot, Get: p.TFTPBuildGet, Put: p.TFTPBuildPut}
}

// Remove deletes both directories (never anything outside the TFTP root).
func (d taskDirs) Remove() error {
	return errors.Join(fsx.RemoveOwned(d.Root, d.Get), fsx.RemoveOwned(d.Root, d.Put))
}

// lockWait bounds the wait for a machine another process or slot holds
// (usually enumeration cleaning it up); longer is a machine fault.
var lockWait = 30 * time.Second

// task is one task being performed: what the journal entry and the result
// request need.
type task struct {
	slot *slot
	cpus int
	// onHold, if set, learns that the machine is held for inspection.
	onHold func()
	resp   *manifest.TaskResponse
	task   *manifest.Task
	mach   *inventory.Machine
	// machines are those offered with it: where its auxiliary machines
	// are found.
	machines []*inventory.Machine
	head     result.Head
	rt       result.Task
	entry    *journal.Entry
	dirs     taskDirs
}

// handle performs one task: the journal entry first (with the signed
// interrupt result, before any snapshot), then the machine session, then
// the outcome, written into the entry. It returns the settled entry (to be
// sent) and the teardown to run in parallel with sending.
func (a *Agent) handle(ctx context.Context, sl *slot, resp *manifest.TaskResponse, machines []*inventory.Machine, received time.Time, cpus int, onHold func()) (*journal.Entry, func()) {
	t := &task{slot: sl, cpus: cpus, onHold: onHold, resp: resp, task: resp.Task, dirs: sl.dirs, machines: machines}
	j := sl.journal
	t.mach = findMachine(machines, t.task.Machine())
	t.rt = result.Task{Name: t.task.Name(), Version: t.task.Version()}
	machineID := ""
	if t.mach != nil {
		machineID = t.mach.Manifest.Machine.ID
	}
	t.head = result.Head{Session: resp.Session(), AgentChecksum: agentChecksum(Version, a.Opts.ToolchainID, machineID)}
	if ch := resp.Challenge(); ch != "" {
		if a.Key == nil {
			a.Log.Error("the controller sent a challenge but no --auth-key is set: the result will be dropped")
		} else if sig, err := controller.SignChallenge(a.Key, ch); err != nil {
			a.Log.Error("signing the challenge", "error", err)
		} else {
			t.head.Challenge = sig
		}
	}
	t.entry = &journal.Entry{URL: resp.ResultURL(), Session: t.head.Session, Challenge: t.head.Challenge,
		AgentChecksum: t.head.AgentChecksum, Package: t.rt.Name, PackageVersion: t.rt.Version, Status: "interrupt", Put: t.dirs.Put,
		UploadURLs: uploadURLs(resp)}
	if t.mach == nil || ctx.Err() != nil {
		// Runs no machine, perhaps in a busy slot's journal: the slot's put
		// dir holds another task's upload, never this one's.
		t.entry.Put = ""
	}
	if t.mach != nil {
		t.entry.MachineDir = t.mach.Dir
	}
	var interrupt bytes.Buffer
	if _, err := result.FromMemory(&interrupt, t.head, t.result("interrupt"),
		"the agent stopped before the task completed; the build may be retried", result.MaxRequest); err != nil {
		a.Log.Error("building the interrupt result", "error", err)
	}
	if err := j.Receive(t.entry, interrupt.Bytes()); err != nil {
		// No journal, no snapshot: tell the controller at once, from
		// memory, and back off until the state dir works again.
		a.Log.Error("writing the task journal failed: reporting interrupt without performing the task", "error", err)
		a.postOnce(ctx, t.entry.URL, interrupt.Bytes())
		a.applyBackoff(decideOutcome(buildPhase, evJournalFault), "", "task journal: "+err.Error())
		return nil, func() {}
	}
	crash.Point("after-journal")
	switch {
	case ctx.Err() != nil:
		// Stopping, or the task could not be placed (unplaced): nothing
		// ran, brep may hand it out again.
		a.settle(t, decideOutcome(buildPhase, evInterrupted), interruptNote(ctx))
		return t.entry, func() {}
	case t.mach == nil:
		a.settle(t, decideOutcome(buildPhase, evNotOffered), "task for machine "+t.task.Machine()+", which this agent did not offer")
		return t.entry, func() {}
	case a.Opts.FakeBuild:
		a.settle(t, outcome{Status: "abort", Journaled: true}, "--fake-build: no machine was booted")
		return t.entry, func() {}
	}
	if note := a.interactiveRefusal(t.task); note != "" {
		t.slot.log.Warn("task refused: "+note, "package", t.rt.Name, "machine", t.mach.Header().Name)
		a.settle(t, decideOutcome(buildPhase, evInteractiveOff), note)
		return t.entry, func() {}
	}
	a.setStatus(sl, SlotState{Activity: ActivityBuilding, Task: t.rt.Name + "/" + t.rt.Version, Machine: t.mach.Header().Name})
	return t.entry, a.perform(ctx, t, received)
}

// uploadURLs are the task's <type>-upload-url values by type (the first
// of a type, should a controller repeat one).
func uploadURLs(resp *manifest.TaskResponse) map[string]string {
	var urls map[string]string
	for _, tu := range resp.UploadURLs() {
		if urls == nil {
			urls = map[string]string{}
		}
		if _, dup := urls[tu[0]]; !dup {
			urls[tu[0]] = tu[1]
		}
	}
	return urls
}

// findMachine is the build machine name (an auxiliary one never is).
func findMachine(machines []*inventory.Machine, name string) *inventory.Machine {
	return findMachineIf(machines, name, func(h manifest.MachineHeader) bool { return !isAuxiliary(h) })
}

// interruptNote says why ctx ended: preempted or unplaced (its cause), or
// the agent stopping.
func interruptNote(ctx context.Context) string {
	cause := context.Cause(ctx)
	if errors.As(cause, new(errPreempted)) || errors.As(cause, new(errUnplaced)) {
		return cause.Error()
	}
	return "the agent stopped before the task completed; the build may be retried"
}

// result is an agent-made result for the task.
func (t *task) result(status string) manifest.Result {
	return manifest.Result{Name: t.rt.Name, Version: t.rt.Version, Status: status}
}

// settle writes an agent-made result with notes as the entry's final body.
// If the state dir fails now, the entry keeps its interrupt body, which is
// sent (and is right: the host failed).
// It reports whether the state dir failed (a host fault, which the caller
// backs off for).
func (a *Agent) settle(t *task, o outcome, notes string) bool {
	err := t.slot.journal.Settle(t.entry, o.State(), o.Status, notes, func(w io.Writer) error {
		_, err := result.FromMemory(w, t.head, t.result(o.Status), notes, result.MaxRequest)
		return err
	})
	switch {
	case err == nil:
		return false
	case errors.Is(err, journal.ErrStateNotSaved):
		a.Log.Error("the journal holds the result but not its state; it is sent as written", "status", o.Status, "error", err)
		t.entry.State, t.entry.Status = journal.Sendable, o.Status
	default:
		a.Log.Error("writing the result into the journal failed: the interrupt result stands", "error", err)
		t.entry.State, t.entry.Status = journal.Sendable, "interrupt"
	}
	return true
}

// perform runs the task's machine session and settles its outcome. It
// returns the teardown. The --fake-machine's tasks run the same session
// without a machine: no lock, snapshot or VM; TFTP on the loopback (or
// --tftp-address), for whoever plays the worker.
func (a *Agent) perform(ctx context.Context, t *task, received time.Time) func() {
	unlock := func() {}
	if !t.mach.NoVM {
		uncover := heartOf(ctx).busy(lockWait + time.Minute)
		lock, err := inventory.LockMachineWait(ctx, t.mach.Dir, lockWait)
		uncover()
		if err != nil {
			ev, why := evMachineFault, err.Error()
			if ctx.Err() != nil {
				ev, why = evInterrupted, interruptNote(ctx)
			}
			o := decideOutcome(buildPhase, ev)
			if a.settle(t, o, why) {
				o = decideOutcome(buildPhase, evHostFault)
			}
			a.applyBackoff(o, t.mach.Dir, err.Error())
			return func() {}
		}
		unlock = func() { lock.Close() }
	}
	aux, failed := a.startAuxiliary(ctx, t)
	if failed != nil {
		o := decideOutcome(buildPhase, failed.ev)
		if a.settle(t, o, failed.why) {
			o = decideOutcome(buildPhase, evHostFault)
		}
		a.applyBackoff(o, failed.dir, failed.why)
		unlock()
		return func() {}
	}
	wt := WorkerTask(t.task, a.Opts.Trust, t.resp.AgentChecksum(), t.head.AgentChecksum)
	if aux != nil && len(aux.env) > 0 {
		wt.Fields.Set("auxiliary-environment", strings.Join(aux.env, "\n"), manifest.TaskOrder)
	}
	var task bytes.Buffer
	if err := wt.Serialize(&task); err != nil {
		aux.teardown()
		unlock()
		a.settle(t, decideOutcome(buildPhase, evHostFault), "serializing the task: "+err.Error())
		return func() {}
	}
	o := a.Opts
	s := &session{v: t.slot.vms, mode: "build", cpus: t.cpus, mc: t.mach.Manifest.Machine, source: t.mach.Bootstrapped,
		get: t.dirs.Get, put: t.dirs.Put, getFiles: map[string][]byte{"manifest": task.Bytes(), "task.manifest": task.Bytes()},
		names: resultNames, extras: []string{uploadTarName}, startup: o.BuildStartup, timeout: o.BuildTimeout, retries: o.BuildRetries,
		maxFile: maxTaskUpload, entry: t.entry.ID, noVM: t.mach.NoVM, tweak: aux.buildNIC(t.slot.plan.Offset)}
	if s.v.maxUpload > 0 {
		s.maxFile = s.v.maxUpload
	}
	s.maxSizes = map[string]int64{uploadTarName: cmp.Or(s.v.maxUploadTar, maxUploadTar)}
	s.maxTotal = 4*s.maxFile + s.maxSizes[uploadTarName]
	s.canDetach = aux == nil
	a.interactive(t, s)
	if s.noVM {
		s.bind = fakeBind(o, t.slot.plan)
		t.slot.log.Log(ctx, logx.LevelNotice, "serving the task over TFTP with no VM (--fake-machine): GET manifest, PUT result.manifest[.lz4] and upload.tar",
			"address", s.bind, "get", s.get, "put", s.put, "timeout", s.timeout)
	}
	rep := s.run(ctx)
	if rep.ev == evInterrupted && ctx.Err() != nil {
		rep.why = interruptNote(ctx)
	}
	teardown := func() {
		s.teardown()
		aux.teardown() // after the build machine, held or not
		unlock()
	}
	if rep.ev == evResult {
		crash.Point("after-result-upload")
		s.finishTransfers(ctx)
		crash.Point("before-persist")
		uploads, note := s.extraUpload(uploadTarName)
		var notes []string
		if note != "" {
			notes = append(notes, note)
		}
		// Decompressing and splitting are bounded by the caps.
		uncover := heartOf(ctx).busy(sessionStepBound)
		_, err := a.collect(t.slot.journal, t.entry, collected{put: t.dirs.Put, name: rep.name, uploads: uploads, notes: notes, maxResult: s.maxFile})
		uncover()
		var gf *result.GuestFault
		switch {
		case errors.As(err, &gf):
			rep = sessionReport{ev: evBadResult, why: "result: " + gf.Error()}
		case err != nil:
			rep = sessionReport{ev: evHostFault, why: "persisting the result: " + err.Error()}
		default:
			crash.Point("after-persist")
			t.slot.log.Log(context.Background(), logx.LevelNotice, "task done", "package", t.rt.Name, "status", t.entry.Status, "entry", t.entry.ID, "uploads", len(t.entry.Uploads))
			a.timings(t, received, s)
			a.resetBackoff()
			a.Enumerator.Succeeded(t.mach.Dir)
			return teardown
		}
	}
	oc := decideOutcome(buildPhase, rep.ev)
	notes := rep.why
	if done, _ := s.extraUpload(uploadTarName); done {
		// Artifacts go only with the worker's own result.
		notes += "\n" + uploadTarName + " not uploaded: the task has no usable result"
	}
	notes += s.consoleNote()
	journalFailed := a.settle(t, oc, notes)
	if oc.Hold {
		if t.onHold != nil {
			t.onHold()
		}
		s.hold(ctx, rep.why)
		// The outcome was final before the hold. Left running for the
		// next agent, the entry stays held: that agent sends it.
		if !s.detached {
			if err := t.slot.journal.Settle(t.entry, journal.Sendable, t.entry.Status, t.entry.Reason, nil); err != nil {
				a.Log.Error("journal", "error", err)
			}
		}
	}
	if journalFailed {
		a.applyBackoff(decideOutcome(buildPhase, evHostFault), "", "journal: cannot record the outcome")
	}
	a.applyBackoff(oc, t.mach.Dir, rep.why)
	return teardown
}

// hostReader records the first read error of the uploaded file.
type hostReader struct {
	f   *os.File
	err error
}

func (r *hostReader) Read(p []byte) (int, error) {
	n, err := r.f.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func (r *hostReader) Seek(off int64, whence int) (int64, error) {
	n, err := r.f.Seek(off, whence)
	if err != nil && r.err == nil {
		r.err = err
	}
	return n, err
}

// timings records the agent's own costs around a task, until the POST is
// answered (deliver logs them then).
func (a *Agent) timings(t *task, received time.Time, s *session) {
	tt := taskTimings{Received: received, QEMUStarted: s.qemuStarted, FirstRequest: s.q.firstRequestTime(), Snapshot: s.snapshotTook,
		Uploaded: s.uploaded, Persisted: time.Now()}
	a.observePhases(&tt)
	a.pendingTimings.Store(t.entry.ID, &tt)
}

// delivered completes and reports a task's timings once its result was
// answered.
func (a *Agent) delivered(id string, ok bool) {
	v, found := a.pendingTimings.LoadAndDelete(id)
	if !found || !ok {
		return
	}
	tt := v.(*taskTimings)
	tt.Answered = time.Now()
	a.Metrics.Phase(metrics.PhasePost, tt.Answered.Sub(tt.Persisted))
	a.Log.Info("task timings", "entry", id,
		"response-to-qemu", tt.QEMUStarted.Sub(tt.Received), "guest-boot-to-result", tt.Uploaded.Sub(tt.QEMUStarted),
		"upload-to-persisted", tt.Persisted.Sub(tt.Uploaded), "upload-to-answered", tt.Answered.Sub(tt.Uploaded))
	if a.onTimings != nil {
		a.onTimings(*tt)
	}
}

// postOnce sends a result request from memory, once (the journal failed).
func (a *Agent) postOnce(ctx context.Context, url string, body []byte) {
	if url == "" {
		return
	}
	const bound = 30 * time.Second
	defer heartOf(ctx).busy(bound + 10*time.Second)()
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bound)
	defer cancel()
	status, err := a.Sender.PostBytes(pctx, url, body)
	if err != nil || status/100 != 2 {
		a.Log.Error("posting the interrupt result from memory failed", "status", status, "error", err)
	}
}
