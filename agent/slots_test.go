package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

const testMachine2 = "x86_64-linux_test-busybox2"

// addMachine adds a second test machine (the same image under another
// name and id) beside the first.
func (e *e2e) addMachine(dir, name string) {
	m := filepath.Join(e.opts.Machines, "vol", dir)
	os.MkdirAll(m, 0o755)
	img := filepath.Join(m, dir+"-1.0")
	if err := btrfs.Create(img); err != nil {
		e.t.Fatal(err)
	}
	machinetest.CopyImage(e.t, img)
	mf := filepath.Join(img, "manifest")
	data, err := os.ReadFile(mf)
	if err != nil {
		e.t.Fatal(err)
	}
	text := strings.Replace(string(data), "name: "+testMachine+"\n", "name: "+name+"\n", 1)
	text = strings.Replace(text, "id: ", "id: "+dir+"-", 1)
	if text == string(data) || !strings.Contains(text, "name: "+name+"\n") {
		e.t.Fatalf("cannot rename the test machine: %s", data)
	}
	os.WriteFile(mf, []byte(text), 0o644)
	os.Symlink(dir+"-1.0", filepath.Join(m, dir+"-1"))
}

// statusSeen records the status lines and reports whether one matched.
type statusSeen struct {
	mu    sync.Mutex
	lines []string
}

func (s *statusSeen) add(line string) { s.mu.Lock(); s.lines = append(s.lines, line); s.mu.Unlock() }

func (s *statusSeen) any(f func(string) bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.lines, f)
}

func resultFor(rs []controllertest.Result, pkg string) (controllertest.Result, bool) {
	for _, r := range rs {
		if r.Request.Result.Name == pkg {
			return r, true
		}
	}
	return controllertest.Result{}, false
}

// TestSlots: two machines, --slots 2: both tasks run at once (seen in the
// status line and as two QEMU processes), both results are right, and
// nothing is left after the stop.
func TestSlots(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addMachine("busybox2", testMachine2)
	e.opts.Slots = 2
	var seen statusSeen
	e.onStatus = seen.add
	maxQEMU, stopCount := watchQEMU(e.opts.RunDir)
	srv.QueueTask("slow", testMachine)
	srv.QueueTask("slow", testMachine2)
	e.start()
	rs := srv.WaitResults(2, 240*time.Second)
	close(stopCount)
	if len(rs) != 2 {
		t.Fatalf("%d results, want 2: %+v", len(rs), rs)
	}
	machines := map[string]bool{}
	for _, r := range rs {
		if r.Request.Result.Status != "success" {
			t.Errorf("%s on %s: %s", r.Request.Result.Name, r.Machine, r.Request.Result.Status)
		}
		machines[r.Machine] = true
	}
	if len(machines) != 2 {
		t.Errorf("results from machines %v, want both", machines)
	}
	if !seen.any(func(l string) bool { return strings.Contains(l, "1: building") && strings.Contains(l, "2: building") }) {
		t.Errorf("never saw both slots building; status lines: %q", seen.lines)
	}
	if maxQEMU.Load() < 2 {
		t.Errorf("at most %d QEMU at once, want 2", maxQEMU.Load())
	}
	e.stop()
}

// watchQEMU samples the number of our QEMU processes every 100 ms until
// stop is closed; max is the most seen at once.
func watchQEMU(runDir string) (max *atomic.Int32, stop chan struct{}) {
	max, stop = new(atomic.Int32), make(chan struct{})
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if n := int32(countProcs(runDir)); n > max.Load() {
				max.Store(n)
			}
		}
	}()
	return max, stop
}

// countProcs counts processes whose command line names dir (QEMU of ours).
func countProcs(dir string) int {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	n := 0
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && strings.Contains(string(data), dir) && strings.Contains(string(data), "qemu") {
			n++
		}
	}
	return n
}

// waitStatus waits until a status line matches.
func waitStatus(t *testing.T, seen *statusSeen, d time.Duration, f func(string) bool) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if seen.any(f) {
			return
		}
	}
	t.Fatalf("status never matched; lines: %q", seen.lines)
}

// TestPriorityInterruptC: one slot busy with a low URL's long task; a
// C-level URL's task for the same machine interrupts it: low gets
// interrupt, high its result.
func TestPriorityInterruptC(t *testing.T) {
	low, high := controllertest.New(), controllertest.New()
	defer low.Close()
	defer high.Close()
	e := newE2E(t, controller.Controller{URL: low.TaskURL()}, controller.Controller{URL: high.TaskURL(), Priority: 100})
	e.opts.BuildTimeout = 300 * time.Second
	var seen statusSeen
	e.onStatus = seen.add
	low.QueueTask("hang", testMachine)
	e.start()
	waitStatus(t, &seen, 180*time.Second, func(l string) bool { return strings.Contains(l, "building hang") })
	high.QueueTask("hello", testMachine)
	hr := high.WaitResults(1, 120*time.Second)
	lr := low.WaitResults(1, 60*time.Second)
	if len(hr) != 1 || hr[0].Request.Result.Status != "success" {
		t.Fatalf("high: %+v", hr)
	}
	if len(lr) != 1 || lr[0].Request.Result.Status != "interrupt" {
		t.Fatalf("low: %+v, want interrupt", lr)
	}
	e.stop()
}

// TestPriorityReserveB: while a B-level URL's task runs, a lower-B URL is
// not asked even with a slot and a machine free; once it ends, it is.
func TestPriorityReserveB(t *testing.T) {
	low, mid := controllertest.New(), controllertest.New()
	defer low.Close()
	defer mid.Close()
	e := newE2E(t, controller.Controller{URL: low.TaskURL()}, controller.Controller{URL: mid.TaskURL(), Priority: 10})
	e.addMachine("busybox2", testMachine2)
	e.opts.Slots = 2
	var seen statusSeen
	e.onStatus = seen.add
	mid.QueueTask("slow", testMachine)
	e.start()
	waitStatus(t, &seen, 240*time.Second, func(l string) bool { return strings.Contains(l, "building slow") })
	asked := len(low.Requests())
	low.QueueTask("hello", testMachine2)
	mr := mid.WaitResults(1, 120*time.Second)
	if len(mr) != 1 || mr[0].Request.Result.Status != "success" {
		t.Fatalf("mid: %+v", mr)
	}
	// Asked again only after mid's task ended: its result precedes low's
	// next request, and low's task had to wait.
	if lr := low.Results(); len(lr) != 0 {
		t.Errorf("low's task ran while the B-level task ran: %+v", lr)
	}
	if n := len(low.Requests()); n > asked+1 {
		t.Errorf("low asked %d times while the B-level task ran", n-asked)
	}
	lr := low.WaitResults(1, 120*time.Second)
	if len(lr) != 1 || lr[0].Request.Result.Status != "success" {
		t.Fatalf("low: %+v", lr)
	}
	e.stop()
}

// TestPriorityInterruptD: both slots busy with a low URL's long tasks; a
// D-level URL's task interrupts both.
func TestPriorityInterruptD(t *testing.T) {
	low, top := controllertest.New(), controllertest.New()
	defer low.Close()
	defer top.Close()
	e := newE2E(t, controller.Controller{URL: low.TaskURL()}, controller.Controller{URL: top.TaskURL(), Priority: 1000})
	e.addMachine("busybox2", testMachine2)
	e.opts.Slots = 2
	e.opts.BuildTimeout = 300 * time.Second
	var seen statusSeen
	e.onStatus = seen.add
	low.QueueTask("hang", testMachine)
	low.QueueTask("hang", testMachine2)
	e.start()
	waitStatus(t, &seen, 240*time.Second, func(l string) bool { return strings.Count(l, "building hang") == 2 })
	top.QueueTask("hello", testMachine)
	tr := top.WaitResults(1, 120*time.Second)
	lr := low.WaitResults(2, 60*time.Second)
	if len(tr) != 1 || tr[0].Request.Result.Status != "success" {
		t.Fatalf("top: %+v", tr)
	}
	if len(lr) != 2 || lr[0].Request.Result.Status != "interrupt" || lr[1].Request.Result.Status != "interrupt" {
		t.Fatalf("low: %+v, want two interrupts", lr)
	}
	e.stop()
}

// TestInstances: two processes' worth of agents side by side (--instance 1
// --slots 2 and --instance 3, sharing the run, state and TFTP dirs) run a
// task each at once; a third claiming instance 2 is refused.
func TestInstances(t *testing.T) {
	srvA, srvB := controllertest.New(), controllertest.New()
	defer srvA.Close()
	defer srvB.Close()
	e := newE2E(t, controller.Controller{URL: srvA.TaskURL()})
	e.addMachine("busybox2", testMachine2)
	e.opts.Slots = 2
	e.start() // A: instances 1 and 2; bootstraps both machines
	for deadline := time.Now().Add(240 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		_, err1 := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e"))
		_, err2 := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox2", "busybox2-e2e"))
		if err1 == nil && err2 == nil {
			break
		}
	}

	ob := e.opts
	ob.Instance, ob.Slots, ob.Controllers = 3, 1, []controller.Controller{{URL: srvB.TaskURL()}}
	b, err := New(&ob, testLog(t).With("agent", "B"))
	if err != nil {
		t.Fatal(err)
	}
	b.Client.Min, b.Client.Max = 10*time.Millisecond, 50*time.Millisecond
	bctx, bcancel := context.WithCancel(context.Background())
	bdone := make(chan error, 1)
	go func() { bdone <- b.Run(bctx) }()
	defer func() {
		bcancel()
		if err := <-bdone; err != nil {
			t.Errorf("B: %v", err)
		}
		b.Close()
	}()

	oc := e.opts
	oc.Instance, oc.Slots = 2, 1
	c, err := New(&oc, testLog(t).With("agent", "C"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ccancel()
	if err := c.Run(cctx); !errors.Is(err, errInstanceClaimed) {
		t.Errorf("a third agent claiming instance 2: %v, want refused", err)
	}

	maxQEMU, stopCount := watchQEMU(e.opts.RunDir)
	srvA.QueueTask("slow", testMachine)
	srvB.QueueTask("slow", testMachine2)
	ra := srvA.WaitResults(1, 180*time.Second)
	rb := srvB.WaitResults(1, 180*time.Second)
	close(stopCount)
	if len(ra) != 1 || ra[0].Request.Result.Status != "success" || len(rb) != 1 || rb[0].Request.Result.Status != "success" {
		t.Fatalf("A: %+v, B: %+v", ra, rb)
	}
	if maxQEMU.Load() < 2 {
		t.Errorf("at most %d QEMU at once, want 2", maxQEMU.Load())
	}
	e.stop()
}

// TestInstanceMaxTokens: --instance-max caps tasks across agents sharing a
// run dir: tokens are flocks, given back when closed.
func TestInstanceMaxTokens(t *testing.T) {
	run := t.TempDir()
	a := &Agent{Opts: &Options{RunDir: run, InstanceMax: 1}, Log: testLog(t)}
	b := &Agent{Opts: &Options{RunDir: run, InstanceMax: 1}, Log: testLog(t)}
	tok, ok := a.takeToken()
	if !ok || tok == nil {
		t.Fatal("first token not taken")
	}
	if _, ok := b.takeToken(); ok {
		t.Error("a second token beyond --instance-max 1")
	}
	tok.Close()
	if tok2, ok := b.takeToken(); !ok {
		t.Error("token not given back")
	} else {
		tok2.Close()
	}
	unlimited := &Agent{Opts: &Options{RunDir: run}}
	if tok, ok := unlimited.takeToken(); !ok || tok != nil {
		t.Error("--instance-max 0 must not cap")
	}
}

// BenchmarkSlotsThroughput: 4 tasks whose guest sleeps 5 s on 2 machines,
// --cpu 1, run with --slots 2 and --slots 1 in interleaved pairs (the
// machines stay bootstrapped between runs). It reports the median time per
// batch of each and the throughput ratio (goal ≥ 1.6). Run with
// -benchtime 1x; BBOT_BENCH_RUNS sets the pairs (default 3).
func BenchmarkSlotsThroughput(b *testing.B) {
	runs := 3
	if v, err := strconv.Atoi(os.Getenv("BBOT_BENCH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	srv := controllertest.New()
	defer srv.Close()
	e := newE2E(b, controller.Controller{URL: srv.TaskURL()})
	e.addMachine("busybox2", testMachine2)
	batch := func(slots int) time.Duration {
		e.opts.Slots = slots
		e.start()
		defer func() { e.stop(); e.stop = nil }()
		// Bootstrapped and idle first: the batch times tasks only.
		for deadline := time.Now().Add(240 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			_, err1 := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox", "busybox-e2e"))
			_, err2 := os.Stat(filepath.Join(e.opts.Machines, "vol", "busybox2", "busybox2-e2e"))
			if err1 == nil && err2 == nil {
				break
			}
		}
		before := len(srv.Results())
		start := time.Now()
		for i := 0; i < 2; i++ {
			srv.QueueTask("slow", testMachine)
			srv.QueueTask("slow", testMachine2)
		}
		rs := srv.WaitResults(before+4, 600*time.Second)
		d := time.Since(start)
		if len(rs) < before+4 {
			b.Fatalf("%d results, want %d", len(rs)-before, 4)
		}
		for _, r := range rs[before:] {
			if r.Request.Result.Status != "success" {
				b.Fatalf("%s: %s", r.Request.Result.Name, r.Request.Result.Status)
			}
		}
		return d
	}
	b.ResetTimer()
	var one, two []time.Duration
	for i := 0; i < runs; i++ {
		two = append(two, batch(2))
		one = append(one, batch(1))
	}
	b.StopTimer()
	median := func(ds []time.Duration) time.Duration {
		s := slices.Clone(ds)
		slices.Sort(s)
		return s[len(s)/2]
	}
	b.ReportMetric(median(one).Seconds(), "s/batch-slots1")
	b.ReportMetric(slices.Min(one).Seconds(), "s/batch-slots1-min")
	b.ReportMetric(slices.Max(one).Seconds(), "s/batch-slots1-max")
	b.ReportMetric(median(two).Seconds(), "s/batch-slots2")
	b.ReportMetric(slices.Min(two).Seconds(), "s/batch-slots2-min")
	b.ReportMetric(slices.Max(two).Seconds(), "s/batch-slots2-max")
	b.ReportMetric(median(one).Seconds()/median(two).Seconds(), "throughput-ratio")
}

// TestRecoverOtherInstances: after a crash with --slots 2, a restart with
// one slot kills the VM left in instance 2's run dir, sends instance 2's
// journal entry (from its own journal, so that instance 2 is free again at
// once) and removes its TFTP directories; the old one-slot layout's
// leftovers go too.
func TestRecoverOtherInstances(t *testing.T) {
	var posts atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		posts.Add(1)
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	root := t.TempDir()
	o := &Options{TFTP: filepath.Join(root, "tftp"), TFTPPort: 30000, ToolchainName: "tc", ToolchainNum: 1,
		StateDir: filepath.Join(root, "state"), RunDir: filepath.Join(root, "run"), Network: "user",
		PollInterval: time.Second, ResultTTL: time.Minute, Slots: 1}
	// Instance 2, as a crashed agent left it.
	j2, err := journal.Open(journal.Dir(o.StateDir, 2))
	if err != nil {
		t.Fatal(err)
	}
	e := &journal.Entry{URL: srv.URL + "/?build-result", Session: "s2", Package: "p", Status: "interrupt"}
	if err := j2.Receive(e, []byte("interrupt request")); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	sleeper := exec.Command("sleep", "300")
	sleeper.Start()
	done := make(chan error, 1)
	go func() { done <- sleeper.Wait() }()
	run2 := PlanSlot(o, 2).RunDir
	os.MkdirAll(run2, 0o700)
	writeVMRecord(run2, vmRecord{PID: sleeper.Process.Pid, StartTime: processStartTime(sleeper.Process.Pid), Mode: "build"})
	put2 := PlanSlot(o, 2).TFTPBuildPut
	os.MkdirAll(put2, 0o755)
	os.WriteFile(filepath.Join(put2, "stale"), []byte("x"), 0o644)
	legacy := filepath.Join(o.TFTP, "build", "tc", "get")
	os.MkdirAll(legacy, 0o755)
	os.WriteFile(filepath.Join(legacy, "manifest"), []byte("x"), 0o644)

	a, err := New(o, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Sender.Min, a.Sender.Max = 10*time.Millisecond, 50*time.Millisecond
	if err := a.open(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Instance 2 is free again at once: its journal can be claimed.
	if j, err := journal.Open(journal.Dir(o.StateDir, 2)); err != nil {
		t.Errorf("instance 2's journal still held: %v", err)
	} else {
		j.Close()
	}
	a.Close()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Error("VM left in instance 2's run dir not killed")
	}
	if n := posts.Load(); n != 1 {
		t.Errorf("instance 2's entry sent %d times, want 1", n)
	}
	for _, p := range []string{put2, legacy} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left", p)
		}
	}
}
