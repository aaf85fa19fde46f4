package agent

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// crashChildEnv names the options file of a child agent run by
// TestCrashPoints (the test binary re-executed as the agent).
const crashChildEnv = "BBOT_CRASH_CHILD"

type childOptions struct {
	Opts Options
	Ver  string
}

// TestCrashChild is the child agent: it runs until it kills itself at its
// crash point (or is killed).
func TestCrashChild(t *testing.T) {
	path := os.Getenv(crashChildEnv)
	if path == "" {
		return // only run as TestCrashPoints' child
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var co childOptions
	if err := json.Unmarshal(data, &co); err != nil {
		t.Fatal(err)
	}
	co.Opts.ToolchainVer = mustVersion(t, co.Ver)
	a, err := New(&co.Opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Client.Min, a.Client.Max = 10*time.Millisecond, 50*time.Millisecond
	a.Sender.Min, a.Sender.Max = 10*time.Millisecond, 100*time.Millisecond
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	a.Run(ctx)
	a.Close()
	t.Fatal("child agent ended without reaching its crash point")
}

// TestCrashPoints SIGKILLs the agent at every named crash point with real
// QEMU, btrfs and the strict test controller, restarts it without the
// crash point and checks: exactly one accepted result per issued session
// (interrupt while nothing was uploaded, the real result once it was, the
// held outcome for a held machine), no temporary snapshot, no process of
// ours, no TFTP task files, nothing held, an empty journal.
func TestCrashPoints(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.UploadTypes = []string{"bindist"}
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.BuildTimeout = 60 * time.Second
	cases := []struct {
		point    string
		pkg      string // "" = no task: the point is in a bootstrap
		status   string
		reboot   bool // change the toolchain id first: a re-bootstrap
		timeout  time.Duration
		stalePut bool     // an earlier task's complete result lies in the put dir
		uploads  []string // instances the controller must have taken, before the result
	}{
		{point: "before-publish", reboot: true},
		{point: "after-exchange", reboot: true},
		// A result left in the shared put dir by an earlier task is not
		// this task's: still interrupt.
		{point: "after-journal", pkg: "hello", status: "interrupt", stalePut: true},
		{point: "after-task-snapshot", pkg: "hello", status: "interrupt"},
		{point: "after-qemu-start", pkg: "hello", status: "interrupt"},
		{point: "after-result-upload", pkg: "hello", status: "success"},
		{point: "before-persist", pkg: "hello", status: "success"},
		{point: "after-persist", pkg: "hello", status: "success"},
		// upload.tar came before the result: recovery collects both.
		{point: "after-result-upload", pkg: "upload", status: "success", uploads: []string{"big", "debian", "fedora"}},
		// The first upload was taken, its outcome not recorded: sent
		// again (brep keeps both), then the others and the result.
		{point: "after-upload-post", pkg: "upload", status: "success", uploads: []string{"big", "debian", "fedora"}},
		{point: "after-post", pkg: "hello", status: "success"},
		{point: "during-teardown", pkg: "hello", status: "success"},
		{point: "while-held", pkg: "hang", status: "abort", timeout: 8 * time.Second},
	}
	covered := map[string]bool{}
	for i, tc := range cases {
		covered[tc.point] = true
		t.Run(tc.point, func(t *testing.T) {
			if tc.reboot {
				e.opts.ToolchainID = "tc-crash-" + tc.point
			}
			e.opts.BuildTimeout = 60 * time.Second
			if tc.timeout > 0 {
				e.opts.BuildTimeout = tc.timeout
			}
			before := len(srv.Sessions())
			if tc.pkg != "" {
				srv.QueueTask(tc.pkg, testMachine)
			}
			if tc.stalePut {
				put := filepath.Join(e.opts.TFTP, "build", "e2e-1", "put")
				os.MkdirAll(put, 0o755)
				old := filepath.Join(put, "manifest")
				os.WriteFile(old, []byte(": 1\nname: hello\nversion: 1.0.0\nstatus: success\n"), 0o644)
				past := time.Now().Add(-time.Hour)
				os.Chtimes(old, past, past)
			}
			runCrashChild(t, e, tc.point, i)

			// Restarted without the crash point: recovery, then normal work.
			if tc.pkg == "" {
				srv.QueueTask("hello", testMachine) // proves the machine is usable
			}
			runRecovered(t, e, srv, before)

			sessions := srv.Sessions()[before:]
			if len(sessions) != 1 {
				t.Fatalf("%d sessions issued, want 1", len(sessions))
			}
			var got []string
			for _, r := range srv.Results() {
				if r.Request.Session == sessions[0] {
					got = append(got, r.Request.Result.Status)
				}
			}
			want := tc.status
			if tc.pkg == "" {
				want = "success"
			}
			if len(got) != 1 || got[0] != want {
				t.Errorf("session %s: results %v, want exactly [%s]", sessions[0], got, want)
			}
			if tc.uploads != nil {
				var result time.Time
				for _, r := range srv.Results() {
					if r.Request.Session == sessions[0] {
						result = r.Received
					}
				}
				var taken []string
				for _, u := range srv.Uploads() {
					if u.Session == sessions[0] {
						if !u.Received.Before(result) {
							t.Errorf("upload %s after the result", u.Instance)
						}
						if !slices.Contains(taken, u.Instance) {
							taken = append(taken, u.Instance)
						}
					}
				}
				slices.Sort(taken)
				if !slices.Equal(taken, tc.uploads) {
					t.Errorf("uploads taken %v, want %v", taken, tc.uploads)
				}
			}
			checkNothingLeft(t, e)
		})
	}
	for _, p := range crash.Points {
		if !covered[p] {
			t.Errorf("crash point %s is not tested", p)
		}
	}
}

// runRecovered runs the agent (after a crash) until its recovery and one
// full round (enumeration, clean-up, poll) are done and every session
// issued since before is answered, then stops it.
func runRecovered(t *testing.T, e *e2e, srv *controllertest.Server, before int) {
	t.Helper()
	a, err := New(&e.opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Client.Min, a.Client.Max = 10*time.Millisecond, 50*time.Millisecond
	a.Sender.Min, a.Sender.Max = 10*time.Millisecond, 100*time.Millisecond
	var idle atomic.Bool
	a.Status = func(s string) {
		if s == "idle" {
			idle.Store(true)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(150 * time.Second)
	for time.Now().Before(deadline) && !(idle.Load() && allAnswered(srv, before)) {
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // a duplicate, if any, would arrive now
	cancel()
	<-done
	a.Close()
}

// allAnswered: every session handed out since before has a result.
func allAnswered(srv *controllertest.Server, before int) bool {
	sessions := srv.Sessions()[before:]
	if len(sessions) == 0 {
		return false
	}
	answered := map[string]bool{}
	for _, r := range srv.Results() {
		answered[r.Request.Session] = true
	}
	for _, s := range sessions {
		if !answered[s] {
			return false
		}
	}
	return true
}

// runCrashChild runs the agent as a child process with the crash point set
// and waits for it to kill itself there.
func runCrashChild(t *testing.T, e *e2e, point string, n int) {
	t.Helper()
	cmd, logFile := startChild(t, e, point)
	var err error
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	select {
	case err = <-waited:
	case <-time.After(180 * time.Second):
		cmd.Process.Kill()
		<-waited
		log, _ := os.ReadFile(logFile)
		t.Fatalf("the child never reached crash point %s:\n%s", point, tail(string(log), 3000))
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		log, _ := os.ReadFile(logFile)
		t.Fatalf("child ended with %v, not SIGKILL at %s:\n%s", err, point, tail(string(log), 3000))
	}
	log, _ := os.ReadFile(logFile)
	if !strings.Contains(string(log), "crash point "+point) {
		t.Fatalf("child killed, but not at %s", point)
	}
}

// startChild starts the agent with e's options as a child process (the
// test binary's TestCrashChild), with the crash point set unless it is "";
// its output goes to the returned log file.
func startChild(t *testing.T, e *e2e, point string) (*exec.Cmd, string) {
	t.Helper()
	data, err := json.Marshal(childOptions{Opts: e.opts, Ver: e.opts.ToolchainVer.String()})
	if err != nil {
		t.Fatal(err)
	}
	optsFile := filepath.Join(t.TempDir(), "opts.json")
	os.WriteFile(optsFile, data, 0o600)
	logFile := filepath.Join(t.TempDir(), "child.log")
	out, _ := os.Create(logFile)
	defer out.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+optsFile)
	if point != "" {
		cmd.Env = append(cmd.Env, crash.Env+"="+point)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, logFile
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// checkNothingLeft: no QEMU of ours, no temporary snapshot, no TFTP task
// files, nothing held, an empty journal.
func checkNothingLeft(t *testing.T, e *e2e) {
	t.Helper()
	e.checkHost(t)
	if s, err := ReadSuspended(e.slotRun(1)); s != nil || err != nil {
		t.Errorf("--suspended shows %+v, %v", s, err)
	}
	j, err := journal.Open(journal.Dir(e.opts.StateDir, 1))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if es, _ := j.Entries(); len(es) != 0 {
		t.Errorf("journal entries left: %+v", es)
	}
}
