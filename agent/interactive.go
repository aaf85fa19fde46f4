package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
)

// Interactive builds (README "Interactive builds"): with --interactive
// true or both the agent asks for them, naming the console of the slot
// that asks as its interactive-login. A worker that reaches the task's
// breakpoint PUTs a file named interactiveName; from then on the build has
// --interactive-timeout (not what is left of --build-timeout), its machine
// keeps running and is listed with the held machines until the worker
// uploads its result, the administrator releases it or the timeout passes.

// interactiveName is what a worker PUTs at its breakpoint; its content (up
// to maxInteractiveNote bytes, say the step it stopped at) is logged and
// shown.
const (
	interactiveName    = "interactive"
	maxInteractiveNote = 1024
)

// releasedFile, in the slot's run directory, tells the session that the
// administrator released its interactive machine (--release), not the
// guest that powered off.
const releasedFile = "released"

// interactiveMode is the --interactive value ("" in Options built by hand
// means bbot's default, false).
func interactiveMode(o *Options) string {
	if o.Interactive == "" {
		return "false"
	}
	return o.Interactive
}

// breakpoint is the task's interactive breakpoint; "" for a build that is
// not interactive (no interactive value, or none).
func breakpoint(t *manifest.Task) string {
	if bp := t.Interactive(); bp != "none" {
		return bp
	}
	return ""
}

// InteractiveLogin is the interactive-login of the slot whose run directory
// is runDir: the command that attaches a terminal to its console (the one
// --suspended and --status print). brep matches "<agent> <login>" against
// its build-interactive-login regexes, e.g. `^(\S+) (.+)$` to `ssh -t \1
// \2`.
func InteractiveLogin(runDir string) string {
	return ConsoleAttach(filepath.Join(runDir, machine.ConsoleSocketName))
}

// addInteractive adds interactive-mode and interactive-login to a task
// request, with --interactive true or both (false sends neither, as bbot
// does). The login names the lowest idle slot's console, where a task
// received now goes (the first slot's when none is idle).
func (a *Agent) addInteractive(req *manifest.TaskRequest) {
	mode := interactiveMode(a.Opts)
	if mode == "false" {
		return
	}
	plan := PlanSlot(a.Opts, a.Opts.Instance)
	a.mu.Lock()
	if idle := a.idleSlots(); len(idle) > 0 {
		plan = idle[0].plan
	} else if len(a.slots) > 0 {
		plan = a.slots[0].plan
	}
	// An interactive task this request brings goes to this slot if it is
	// free then (placeTask): the controller shows this console.
	a.loginSlot = plan.Instance
	a.mu.Unlock()
	req.InteractiveMode, req.InteractiveLogin = mode, InteractiveLogin(plan.RunDir)
}

// interactiveRefusal is why the agent refuses the task ("" when it does
// not): an interactive build while it runs with --interactive false.
func (a *Agent) interactiveRefusal(t *manifest.Task) string {
	if bp := breakpoint(t); bp != "" && interactiveMode(a.Opts) == "false" {
		return fmt.Sprintf("interactive build (breakpoint %s) but this agent runs with --interactive false", bp)
	}
	return ""
}

// interactiveWait is an interactive build session's breakpoint state.
type interactiveWait struct {
	breakpoint string
	timeout    time.Duration
	// onReached learns that the worker reached the breakpoint (the slot's
	// status), with the record --suspended lists.
	onReached func(Suspended)
	reached   time.Time // zero until the worker says so
}

// waiting reports whether the session waits at its breakpoint (false for
// a session that is not interactive).
func (w *interactiveWait) waiting() bool { return w != nil && !w.reached.IsZero() }

// interactive prepares the session of an interactive task (nothing for
// another): its breakpoint file is capped, and reaching it is shown as
// the slot's status.
func (a *Agent) interactive(t *task, s *session) {
	bp := breakpoint(t.task)
	if bp == "" || interactiveMode(a.Opts) == "false" {
		return
	}
	s.maxSizes[interactiveName] = maxInteractiveNote
	s.interactive = &interactiveWait{breakpoint: bp, timeout: a.Opts.InteractiveTimeout, onReached: func(rec Suspended) {
		a.setStatus(t.slot, SlotState{Activity: ActivityInteractive, Task: t.rt.Name + "/" + t.rt.Version,
			Machine: t.mach.Header().Name, Console: rec.ConsoleSocket})
	}}
}

// reachBreakpoint: the worker says it is at its breakpoint. The machine
// keeps running; it is recorded beside held machines (so that --suspended
// lists it and --release ends it) until the session's teardown.
func (s *session) reachBreakpoint(ctx context.Context) {
	w, v := s.interactive, s.v
	w.reached = time.Now()
	note := readNote(filepath.Join(s.put, interactiveName))
	reason := "interactive: breakpoint " + w.breakpoint + " reached"
	if note != "" {
		reason += " (worker: " + note + ")"
	}
	rec := Suspended{Snapshot: s.snapshot, Since: w.reached.UTC(), Reason: reason, Interactive: true}
	if s.m != nil {
		info := s.m.Info()
		rec.PID, rec.StartTime, rec.ConsoleLog = info.PID, processStartTime(info.PID), info.ConsoleLog
		rec.ConsoleSocket, rec.VNC, rec.AdminSocket = info.ConsoleSocket, info.VNC, info.AdminSocket
		os.Remove(filepath.Join(v.runDir, releasedFile)) // a --release of an earlier hold
		if err := writeSuspended(v.runDir, rec); err != nil {
			v.Log.Error("recording the interactive machine", "error", err)
		}
		s.push(func() {
			os.Remove(filepath.Join(v.runDir, suspendedFile))
			os.Remove(filepath.Join(v.runDir, releasedFile))
		})
	}
	v.Log.Log(ctx, logx.LevelNotice, "interactive build at its breakpoint: "+reason,
		"snapshot", s.snapshot, "console", rec.ConsoleLog,
		"attach", ConsoleAttach(rec.ConsoleSocket), "vnc", rec.VNC, "vnc-attach", VNCAttach(rec.VNC),
		"timeout", w.timeout,
		"release", fmt.Sprintf("bbot-agent --run-dir %s --instance %d --release", v.Opts.RunDir, v.instance))
	if w.onReached != nil {
		w.onReached(rec)
	}
}

// interactiveEnd is the report of an interactive build that ended at its
// breakpoint without a result: the machine exited (released or powered
// off) or the interactive timeout passed.
func (s *session) interactiveEnd(timedOut bool) sessionReport {
	w := s.interactive
	at := fmt.Sprintf("breakpoint %s reached at %s", w.breakpoint, w.reached.UTC().Format(time.RFC3339))
	switch {
	case timedOut:
		return sessionReport{ev: evInteractiveEnd, why: fmt.Sprintf("interactive timeout (%s) passed without a result (%s)", w.timeout, at)}
	case released(s.v.runDir):
		return sessionReport{ev: evInteractiveEnd, why: "interactive build released by the administrator (--release) without a result (" + at + ")"}
	}
	return sessionReport{ev: evInteractiveEnd, why: "the machine powered off during the interactive build without a result (" + at + ")"}
}

func released(runDir string) bool {
	_, err := os.Stat(filepath.Join(runDir, releasedFile))
	return err == nil
}

// markReleased records that the administrator releases the interactive
// machine of runDir, before it is quit.
func markReleased(runDir string) error {
	return fsx.WriteFileAtomic(filepath.Join(runDir, releasedFile), []byte("released\n"), 0o600)
}

// readNote is the worker's breakpoint note: its first line, printable,
// at most maxInteractiveNote bytes.
func readNote(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxInteractiveNote))
	if err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	line, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return -1
		}
		return r
	}, line))
}
