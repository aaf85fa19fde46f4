package agent

import (
	"context"
	"crypto/rsa"
	"errors"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

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

	VMs        *VMs
	Enumerator *Enumerator
	Client     *Client
	Outbox     *Outbox

	// Rescan wakes the poll sleep early (SIGHUP).
	Rescan <-chan struct{}
	// Ready, if set, is called once the agent serves (systemd READY=1).
	Ready func()
	// Status, if set, receives one-line status changes (systemd STATUS=).
	Status func(string)
	// Timings, if set, receives each task's timings once its result is
	// delivered (benchmarks; the same figures are logged).
	Timings func(TaskTimings)
}

// TaskTimings are the agent's own costs around a task.
type TaskTimings struct {
	Received    time.Time // task response parsed
	QEMUStarted time.Time // QEMU process started
	Uploaded    time.Time // result upload completed (TFTP)
	Persisted   time.Time // result request fsynced and renamed
	Answered    time.Time // controller answered the POST
}

func (a *Agent) status(s string) {
	if a.Status != nil {
		a.Status(s)
	}
}

// Recover cleans up after a crashed agent: a QEMU process recorded in the
// run dir is killed and the task's TFTP directories are removed (stale
// snapshots are removed by enumeration, under each machine's lock).
func (a *Agent) Recover() {
	pidFile := filepath.Join(a.Opts.RunDir, machine.PIDFileName)
	if pid, err := machine.ReadPIDFile(pidFile); err == nil && pid > 0 {
		cmdline, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
		if strings.Contains(string(cmdline), filepath.Join(a.Opts.RunDir, machine.QMPSocketName)) {
			a.Log.Warn("killing QEMU left by a previous agent", "pid", pid)
			syscall.Kill(pid, syscall.SIGKILL)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		os.Remove(pidFile)
	}
	os.Remove(filepath.Join(a.Opts.RunDir, machine.QMPSocketName))
	err := errors.Join(NewTaskDirs(a.Opts.TFTP, a.Opts.ToolchainName).Remove(),
		removeOwned(a.Opts.TFTP, filepath.Join(a.Opts.TFTP, "bootstrap", a.Opts.ToolchainName)))
	if err != nil {
		a.Log.Warn("removing leftover TFTP directories", "error", err)
	}
}

// Run works until ctx ends (SIGTERM/SIGINT), then reports an interrupted
// task as "interrupt" and returns nil.
func (a *Agent) Run(ctx context.Context) error {
	a.Recover()
	pending, err := a.Outbox.Pending()
	if err != nil {
		return err
	}
	for _, id := range pending {
		a.Log.Info("sending result left from an earlier run", "id", id)
		a.Outbox.SendAsync(ctx, id, nil)
	}
	if a.Ready != nil {
		a.Ready()
	}
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
	for ctx.Err() == nil {
		a.status("enumerating machines")
		machines, err := a.Enumerator.Enumerate(ctx)
		if err != nil && ctx.Err() == nil {
			a.Log.Error("enumerating machines", "error", err)
		}
		worked := false
		if len(machines) == 0 {
			a.Log.Warn("no usable machines")
		} else if ctx.Err() == nil {
			worked = a.poll(ctx, machines)
		}
		if worked {
			continue // after a task, poll again at once
		}
		a.status("idle")
		// ±20 % jitter so that agents do not poll in lock-step.
		sleep := time.Duration(float64(a.Opts.PollInterval) * (0.8 + 0.4*r.Float64()))
		select {
		case <-ctx.Done():
		case <-a.Rescan:
			a.Log.Info("rescanning machines")
		case <-time.After(sleep):
		}
	}
	a.status("stopping")
	return nil
}

// poll asks for a task and performs it; it reports whether there was one.
func (a *Agent) poll(ctx context.Context, machines []*Machine) bool {
	req := manifest.TaskRequest{
		Agent:            a.Name,
		ToolchainName:    a.Opts.ToolchainName,
		ToolchainVersion: a.Opts.ToolchainVer,
		Fingerprint:      a.Fingerprint,
	}
	for _, m := range machines {
		req.Machines = append(req.Machines, m.Header())
	}
	a.status("polling controllers")
	resp, ctl, err := a.Client.RequestTask(ctx, req)
	if err != nil || resp == nil {
		if err != nil && ctx.Err() == nil {
			a.Log.Error("requesting task", "error", err)
		}
		return false
	}
	received := time.Now()
	a.Log.Info("task received", "controller", ctl.URL, "package", resp.Task.Name(), "version", resp.Task.Version(), "machine", resp.Task.Machine())
	a.handle(ctx, resp, machines, received)
	return true
}

// Next polls (enumerating first, sleeping the poll interval between
// rounds) until a controller hands out a task, and returns it with the
// machines offered. It is for --dump-task and --dump-result.
func (a *Agent) Next(ctx context.Context) (*manifest.TaskResponse, []*Machine, error) {
	a.Recover()
	for {
		machines, err := a.Enumerator.Enumerate(ctx)
		if err != nil {
			return nil, nil, err
		}
		if len(machines) > 0 {
			req := manifest.TaskRequest{Agent: a.Name, ToolchainName: a.Opts.ToolchainName,
				ToolchainVersion: a.Opts.ToolchainVer, Fingerprint: a.Fingerprint}
			for _, m := range machines {
				req.Machines = append(req.Machines, m.Header())
			}
			resp, _, err := a.Client.RequestTask(ctx, req)
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
func (a *Agent) WorkerTaskFor(resp *manifest.TaskResponse, machines []*Machine) *manifest.Task {
	checksum := AgentChecksum(Version, a.Opts.ToolchainID, "")
	for _, m := range machines {
		if m.Header().Name == resp.Task.Machine() {
			checksum = AgentChecksum(Version, a.Opts.ToolchainID, m.Manifest.Machine.ID)
		}
	}
	return WorkerTask(resp.Task, a.Opts.Trust, resp.AgentChecksum(), checksum)
}

// Handle performs the task, delivers its result (waiting for the
// delivery attempt) and returns the result.
func (a *Agent) Handle(ctx context.Context, resp *manifest.TaskResponse, machines []*Machine) manifest.Result {
	res := a.handle(ctx, resp, machines, time.Now())
	a.Outbox.Wait()
	return res
}

// handle performs one task and reports its result.
func (a *Agent) handle(ctx context.Context, resp *manifest.TaskResponse, machines []*Machine, received time.Time) manifest.Result {
	task := resp.Task
	var mach *Machine
	for _, m := range machines {
		if m.Header().Name == task.Machine() {
			mach = m
			break
		}
	}
	var out Outcome
	var teardown func()
	checksum := AgentChecksum(Version, a.Opts.ToolchainID, "")
	switch {
	case mach == nil:
		out = Outcome{Result: manifest.Result{Name: task.Name(), Version: task.Version(), Status: "abort"},
			Diagnostics: "task for machine " + task.Machine() + ", which this agent did not offer"}
	case a.Opts.FakeBuild:
		out = Outcome{Result: manifest.Result{Name: task.Name(), Version: task.Version(), Status: "abort"},
			Diagnostics: "--fake-build: no machine was booted"}
	default:
		checksum = AgentChecksum(Version, a.Opts.ToolchainID, mach.Manifest.Machine.ID)
		a.status("building " + task.Name() + "/" + task.Version() + " on " + mach.Header().Name)
		out, teardown = a.VMs.Perform(ctx, mach, task, WorkerTask(task, a.Opts.Trust, resp.AgentChecksum(), checksum))
	}
	res := WithDiagnostics(out)
	rr, err := ResultRequestFor(resp, a.Key, checksum, res)
	if err != nil {
		a.Log.Error("building the result request", "error", err)
	}
	id, err := a.Outbox.Persist(resp.ResultURL(), rr)
	if err != nil {
		// Never lose the result: fall back to one without logs.
		a.Log.Error("persisting the result, retrying without logs", "error", err)
		rr.Result.Operations = nil
		if id, err = a.Outbox.Persist(resp.ResultURL(), rr); err != nil {
			a.Log.Error("persisting the result", "error", err)
		}
	}
	tt := TaskTimings{Received: received, QEMUStarted: out.QEMUStarted, Uploaded: out.Uploaded, Persisted: time.Now()}
	a.Log.Info("task done", "package", task.Name(), "status", res.Status, "result", id)
	sendCtx := ctx
	if ctx.Err() != nil {
		// Interrupted: one quick try now; the rest on the next start.
		var cancel context.CancelFunc
		sendCtx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
	}
	if id != "" {
		a.Outbox.SendAsync(sendCtx, id, func(delivered bool) {
			if !delivered || tt.QEMUStarted.IsZero() || tt.Uploaded.IsZero() {
				return
			}
			tt.Answered = time.Now()
			a.Log.Info("task timings", "package", task.Name(),
				"response-to-qemu", tt.QEMUStarted.Sub(tt.Received), "guest-boot-to-result", tt.Uploaded.Sub(tt.QEMUStarted),
				"upload-to-persisted", tt.Persisted.Sub(tt.Uploaded), "upload-to-answered", tt.Answered.Sub(tt.Uploaded))
			if a.Timings != nil {
				a.Timings(tt)
			}
		})
	}
	if teardown != nil {
		teardown() // in parallel with the POST
	}
	if ctx.Err() != nil {
		a.Outbox.Wait()
	}
	return res
}

// WithDiagnostics puts the agent's diagnostics into the result: as the log
// of a "configure" step when the worker reported no steps (as brep's own
// abort example does), else appended to the last step's log.
func WithDiagnostics(out Outcome) manifest.Result {
	res := out.Result
	if out.Diagnostics == "" {
		return res
	}
	d := "bbot-agent: " + manifest.Sanitize(strings.TrimRight(out.Diagnostics, "\n")) + "\n"
	if len(res.Operations) == 0 {
		res.Operations = []manifest.OperationResult{{Operation: "configure", Status: res.Status, Log: d}}
		return res
	}
	ops := append([]manifest.OperationResult(nil), res.Operations...)
	last := &ops[len(ops)-1]
	if last.Log != "" && !strings.HasSuffix(last.Log, "\n") {
		last.Log += "\n"
	}
	last.Log += d
	res.Operations = ops
	return res
}

// ErrNoMachine is returned when no machine can run a fake request.
var ErrNoMachine = errors.New("no usable machine for the task")

// RunTask performs one task without a controller (--fake-request): it
// enumerates (bootstrapping as needed), runs the task on the machine it
// names and returns the result.
func (a *Agent) RunTask(ctx context.Context, task *manifest.Task) (manifest.Result, error) {
	a.Recover()
	machines, err := a.Enumerator.Enumerate(ctx)
	if err != nil {
		return manifest.Result{}, err
	}
	var mach *Machine
	for _, m := range machines {
		if m.Header().Name == task.Machine() {
			mach = m
		}
	}
	if mach == nil {
		var names []string
		for _, m := range machines {
			names = append(names, m.Header().Name)
		}
		return manifest.Result{}, errors.Join(ErrNoMachine, errors.New("the task names "+task.Machine()+"; usable: "+strings.Join(names, ", ")))
	}
	checksum := AgentChecksum(Version, a.Opts.ToolchainID, mach.Manifest.Machine.ID)
	out, teardown := a.VMs.Perform(ctx, mach, task, WorkerTask(task, a.Opts.Trust, "", checksum))
	teardown()
	return WithDiagnostics(out), nil
}
