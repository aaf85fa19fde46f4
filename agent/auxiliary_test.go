package agent

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/machine/machinetest"
	"github.com/build2/bbot-agent-go/manifest"
)

const (
	testAuxMachine = testMachine + "-aux"
	testAuxRAMMin  = 262144 // KiB
)

// addAuxiliaryMachine adds the test machine again as the auxiliary machine
// testAuxMachine (dir busybox-aux: role auxiliary, a ram-minimum), its
// guest told behaviour (bbot.test-aux) through an OEM string in its options
// when it is not "".
func (e *e2e) addAuxiliaryMachine(behaviour string) string {
	t := e.t
	dir := filepath.Join(e.opts.Machines, "vol", "busybox-aux")
	os.MkdirAll(dir, 0o755)
	img := filepath.Join(dir, "busybox-aux-1.0")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	machinetest.CopyImage(t, img)
	data, err := os.ReadFile(filepath.Join(img, "manifest"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
		switch {
		case strings.HasPrefix(line, "name: "):
			line = "name: " + testAuxMachine
		case strings.HasPrefix(line, "summary: "):
			line += "\nrole: auxiliary\nram-minimum: " + strconv.Itoa(testAuxRAMMin)
		case strings.HasPrefix(line, "options: ") && behaviour != "":
			line += " -smbios type=11,value=bbot.test-aux=" + behaviour
		}
		out = append(out, line)
	}
	os.WriteFile(filepath.Join(img, "manifest"), []byte(strings.Join(out, "\n")+"\n"), 0o644)
	btrfs.SetReadOnly(img, true)
	os.Symlink("busybox-aux-1.0", filepath.Join(dir, "busybox-aux-1"))
	e.opts.AuxiliaryRAM = testAuxRAMMin + 65536
	return dir
}

// checkNoAuxInterfaces fails t for any interface of slot 1's private
// network left behind.
func (e *e2e) checkNoAuxInterfaces(t *testing.T) {
	t.Helper()
	n := auxNet{offset: PlanSlot(&e.opts, 1).Offset}
	for _, name := range n.interfaces() {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("interface %s left behind", name)
		}
	}
}

func resultOf(rs []controllertest.Result, pkg string) *manifest.Result {
	for _, r := range rs {
		if r.Request.Result.Name == pkg {
			return &r.Request.Result
		}
	}
	return nil
}

func operationLog(r *manifest.Result, op string) string {
	for _, o := range r.Operations {
		if o.Operation == op {
			return o.Log
		}
	}
	return ""
}

// TestAuxiliaryEnvironment: a build machine and an auxiliary machine are
// bootstrapped and offered (the auxiliary one with its role and
// ram-minimum, the request with auxiliary-ram); a task naming it as
// auxiliary-machine-pgsql boots it on the slot's private bridge first; its
// environment reaches the build prefixed (PGSQL_DATABASE_HOST), and the
// build machine reaches its service over its second NIC. Afterwards no
// QEMU, snapshot, TFTP file, bridge or tap is left.
func TestAuxiliaryEnvironment(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTaskWith("hello", testMachine, manifest.NameValue{Name: "auxiliary-machine-pgsql", Value: testAuxMachine})
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addAuxiliaryMachine("")
	e.start()
	results := srv.WaitResults(1, 300*time.Second)
	e.shutdown()
	r := resultOf(results, "hello")
	if r == nil {
		t.Fatalf("no hello result: %+v", results)
	}
	log := operationLog(r, "auxiliary")
	n, _ := planAuxNet(&e.opts, PlanSlot(&e.opts, 1))
	aux := n.Aux(1).String()
	if r.Status != "success" || !strings.Contains(log, "PGSQL_DATABASE_HOST="+aux) || !strings.Contains(log, "PGSQL_DATABASE_PORT=5432") ||
		!strings.Contains(log, "aux-ok "+aux) {
		t.Errorf("status %s, auxiliary log:\n%s\noperations %+v", r.Status, log, r.Operations)
	}
	var sawAux, sawRAM bool
	for _, req := range srv.Requests() {
		sawRAM = sawRAM || req.AuxiliaryRAM == e.opts.AuxiliaryRAM
		for _, m := range req.Machines {
			sawAux = sawAux || m.Name == testAuxMachine && m.Role == "auxiliary" && m.RAMMinimum == testAuxRAMMin
		}
	}
	if !sawAux || !sawRAM {
		t.Errorf("requests: auxiliary machine offered %v, auxiliary-ram sent %v: %+v", sawAux, sawRAM, srv.Requests())
	}
	e.checkHost(t)
	e.checkNoAuxInterfaces(t)
}

// TestAuxiliaryUnknown: a task naming an auxiliary machine that was not
// offered is aborted with a note saying so; no machine is booted for it.
func TestAuxiliaryUnknown(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTaskWith("hello", testMachine, manifest.NameValue{Name: "auxiliary-machine", Value: "x86_64-linux_not-here"})
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.AuxiliaryRAM = 1 << 20
	e.start()
	results := srv.WaitResults(1, 240*time.Second)
	e.shutdown()
	r := resultOf(results, "hello")
	if r == nil || r.Status != "abort" || len(r.Operations) == 0 ||
		!strings.Contains(r.Operations[0].Log, "auxiliary machine x86_64-linux_not-here (auxiliary-machine), which this agent did not offer") {
		t.Fatalf("result %+v", r)
	}
	console, _ := os.ReadFile(filepath.Join(e.slotRun(1), machine.ConsoleLogName))
	if bytes.Contains(console, []byte("build: fetching task")) {
		t.Errorf("the build machine was booted:\n%s", console)
	}
	e.checkNoAuxInterfaces(t)
}

// TestAuxiliaryNoEnvironment: an auxiliary machine that never uploads its
// environment within --bootstrap-auxiliary aborts the task without booting
// the build machine; the auxiliary machine waits out a backoff, and
// everything is torn down. One that uploads a malformed environment is
// aborted with the file:line reason.
func TestAuxiliaryNoEnvironment(t *testing.T) {
	if !inNetns(t) {
		return
	}
	for _, c := range []struct{ behaviour, note string }{
		{"silent", "did not upload its environment within --bootstrap-auxiliary (10s)"},
		{"bad", "uploaded a bad environment: environment:2: expected NAME=value"},
	} {
		t.Run(c.behaviour, func(t *testing.T) {
			srv := controllertest.New()
			defer srv.Close()
			srv.QueueTaskWith("hello", testMachine, manifest.NameValue{Name: "auxiliary-machine-db", Value: testAuxMachine})
			e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
			dir := e.addAuxiliaryMachine(c.behaviour)
			e.opts.BootstrapAuxiliary = 10 * time.Second
			e.start()
			results := srv.WaitResults(1, 300*time.Second)
			withheld := e.agent.Enumerator.Withheld(dir)
			e.shutdown()
			r := resultOf(results, "hello")
			if r == nil || r.Status != "abort" || len(r.Operations) == 0 || !strings.Contains(r.Operations[0].Log, c.note) {
				t.Fatalf("result %+v", r)
			}
			if !withheld {
				t.Errorf("the auxiliary machine is not backing off")
			}
			console, _ := os.ReadFile(filepath.Join(e.slotRun(1), machine.ConsoleLogName))
			if bytes.Contains(console, []byte("build: fetching task")) {
				t.Errorf("the build machine was booted:\n%s", console)
			}
			e.checkHost(t)
			e.checkNoAuxInterfaces(t)
		})
	}
}

// TestAuxiliaryRecovery: what a crashed agent's auxiliary machines left in
// a slot (a recorded QEMU, run and TFTP directories, the private bridge and
// taps) is removed at start-up; other interfaces stay.
func TestAuxiliaryRecovery(t *testing.T) {
	if !inNetns(t) {
		return
	}
	root := t.TempDir()
	o := &Options{RunDir: filepath.Join(root, "run"), TFTP: filepath.Join(root, "tftp"), ToolchainName: "e2e", ToolchainNum: 1, Network: "bridge"}
	plan := PlanSlot(o, 1)
	n := auxNet{offset: plan.Offset}
	if err := machine.CreateBridge(n.Bridge(), "10.254.0.1/28"); err != nil {
		t.Fatal(err)
	}
	for _, tap := range []string{n.BuildTap(), n.Tap(3)} {
		if err := machine.CreateTap(tap, n.Bridge()); err != nil {
			t.Fatal(err)
		}
	}
	netnsIP(t, "", "link", "add", "bbx1other", "type", "bridge") // not ours
	run := auxRunDir(plan.RunDir, 2)
	os.MkdirAll(run, 0o700)
	cmd := exec.Command("sleep", "300")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	writeVMRecord(run, vmRecord{PID: cmd.Process.Pid, StartTime: processStartTime(cmd.Process.Pid), Mode: "auxiliary"})
	get, put := auxTFTPDirs(plan, 2)
	for _, d := range []string{get, put} {
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "environment"), []byte("A=1\n"), 0o644)
	}

	a := &Agent{Opts: o, Log: testLog(t)}
	a.killLeftovers(&slot{plan: plan, log: a.Log})
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the auxiliary machine's QEMU was not killed")
	}
	for _, p := range []string{run, get, put} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left: %v", p, err)
		}
	}
	for _, name := range n.interfaces() {
		if _, err := net.InterfaceByName(name); err == nil {
			t.Errorf("interface %s left", name)
		}
	}
	if _, err := net.InterfaceByName("bbx1other"); err != nil {
		t.Errorf("an interface not of this slot was removed: %v", err)
	}
	if err := cmd.Process.Signal(syscall.Signal(0)); err == nil {
		t.Error("process still alive")
	}
}

func TestEnvPrefix(t *testing.T) {
	for env, want := range map[string]string{"": "", "pgsql": "PGSQL_", "pg-sql": "PG_SQL_", "Db.2": "DB_2_", "ü": "__"} {
		if got := envPrefix(env); got != want {
			t.Errorf("envPrefix(%q) = %q, want %q", env, got, want)
		}
	}
}

func TestParseEnvironment(t *testing.T) {
	vars, err := parseEnvironment([]byte("# comment\n\nDATABASE_HOST=10.0.0.3\nDATABASE_PORT=5432\r\nEMPTY=\nX=a=b c\n"), "environment")
	want := []string{"DATABASE_HOST=10.0.0.3", "DATABASE_PORT=5432", "EMPTY=", "X=a=b c"}
	if err != nil || strings.Join(vars, "|") != strings.Join(want, "|") {
		t.Errorf("got %q, %v; want %q", vars, err, want)
	}
	for data, reason := range map[string]string{
		"A=1\nnot a variable\n":           "environment:2: expected NAME=value",
		"pg-sql=1\n":                      `environment:1: invalid variable name "pg-sql"`,
		"1A=1\n":                          `environment:1: invalid variable name "1A"`,
		"A=1\nB=2\nA=3\n":                 "environment:3: A redefinition",
		"A=\x01\n":                        "environment:1: A: the value has control characters",
		"A=\xff\n":                        "environment:1: A: the value has control characters or invalid UTF-8",
		strings.Repeat("A", 17<<10):       "environment: larger than 16384 bytes",
		strings.Repeat("V\n", 1) + "=1\n": `environment:1: expected NAME=value`,
	} {
		if _, err := parseEnvironment([]byte(data), "environment"); err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("%.40q: %v, want %q", data, err, reason)
		}
	}
	var many strings.Builder
	for i := range maxEnvironmentVars + 1 {
		many.WriteString("V" + strconv.Itoa(i) + "=1\n")
	}
	if _, err := parseEnvironment([]byte(many.String()), "environment"); err == nil || !strings.Contains(err.Error(), "more than 256 variables") {
		t.Errorf("too many variables: %v", err)
	}
}

func TestAuxiliaryRAM(t *testing.T) {
	h := func(minimum, maximum uint64) manifest.MachineHeader {
		return manifest.MachineHeader{RAMMinimum: minimum, RAMMaximum: maximum}
	}
	got, err := auxRAM(4<<20, []manifest.MachineHeader{h(1<<20, 0), h(1<<20, 1<<20+100), h(0, 0)})
	// 2 GiB left, a third each; the second capped at its maximum.
	third := uint64(2<<20) / 3
	if err != nil || got[0] != 1<<20+third || got[1] != 1<<20+100 || got[2] != third {
		t.Errorf("auxRAM: %v, %v", got, err)
	}
	if got, _ := auxRAM(1<<20, []manifest.MachineHeader{h(1<<20, 0)}); got[0] != 1<<20 {
		t.Errorf("exact fit: %v", got)
	}
	if got, _ := auxRAM(1<<20, []manifest.MachineHeader{h(1<<20, 0), h(0, 1024)}); got[1] != 65536 {
		t.Errorf("below QEMU's floor: %v", got)
	}
	if _, err := auxRAM(1<<20, []manifest.MachineHeader{h(1<<20, 0), h(1, 0)}); err == nil || !strings.Contains(err.Error(), "more than --auxiliary-ram 1048576 KiB") {
		t.Errorf("minimums over the total: %v", err)
	}
}

func TestAuxiliaryBlock(t *testing.T) {
	o := validOptions()
	o.Network, o.AuxiliaryRAM = "bridge", 1<<20
	for _, c := range []struct {
		rng       string
		tc, inst  int
		want, err string
	}{
		{"", 1, 1, "10.254.0.0/28", ""},
		{"", 1, 2, "10.254.0.16/28", ""},
		{"", 2, 1, "10.254.6.64/28", ""},      // offset 101: block 100
		{"", 41, 96, "10.254.255.240/28", ""}, // offset 4096: the last block
		{"", 41, 97, "", "invalid --auxiliary-range value '10.254.0.0/16': instance 97 of toolchain 41 needs /28 block number 4096, but the range holds 4096"},
		{"172.30.0.0/20", 1, 99, "172.30.6.32/28", ""},
		{"172.30.0.0/28", 1, 2, "", "needs /28 block number 1, but the range holds 1"},
		{"172.30.0.1/20", 1, 1, "", "host bits are set; did you mean 172.30.0.0/20?"},
		{"172.30.0.0/29", 1, 1, "", "must be /28 or shorter"},
		{"fd00::/64", 1, 1, "", "--auxiliary-range value 'fd00::/64': expected an IPv4 ADDR/LEN"},
	} {
		o.AuxiliaryRange, o.ToolchainNum = c.rng, c.tc
		b, err := AuxiliaryBlock(&o, c.inst)
		if c.err == "" && (err != nil || b.String() != c.want) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%q toolchain %d instance %d: %v, %v; want %q %q", c.rng, c.tc, c.inst, b, err, c.want, c.err)
		}
	}
	// Validate checks every slot's block, and the run directory's room for
	// the auxiliary machines' sockets.
	o.AuxiliaryRange, o.ToolchainNum, o.Instance, o.Slots = "172.30.0.0/28", 1, 1, 2
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--auxiliary-range") {
		t.Errorf("two slots in a /28: %v", err)
	}
	o.AuxiliaryRange, o.Slots = "", 1
	o.RunDir = "/" + strings.Repeat("r", machine.MaxRunDir-6)
	if err := o.Validate(); err == nil || !strings.Contains(err.Error(), "--run-dir") {
		t.Errorf("long run dir: %v", err)
	}
	// The private network must not overlap a route of the host (the
	// loopback's 127.0.0.0/8 is in every routing table).
	o.RunDir, o.AuxiliaryRange = "", "127.0.0.0/16"
	err := checkAuxiliaryHost(&o, []SlotPlan{PlanSlot(&o, 1)})
	if routes, _ := hostRoutes(); hasRoute(routes, "127.0.0.0/8") && (err == nil || !strings.Contains(err.Error(), "--auxiliary-range")) {
		t.Errorf("overlap with the loopback route: %v", err)
	}
}

func hasRoute(rs []hostRoute, p string) bool {
	for _, r := range rs {
		if r.prefix.String() == p {
			return true
		}
	}
	return false
}

// TestAuxiliaryOffer: auxiliary machines are offered only with
// --auxiliary-ram (and then with their role and ram-minimum, filtered by
// it), build machines by --build-ram as before; a task naming an auxiliary
// machine as its machine does not find it.
func TestAuxiliaryOffer(t *testing.T) {
	mk := func(name, role string, minimum uint64) *inventory.Machine {
		return inventory.FakeMachine(manifest.MachineHeader{ID: name, Name: name, Summary: "s", Role: role, RAMMinimum: minimum})
	}
	ms := []*inventory.Machine{mk("x86_64-linux_b", "", 0), mk("x86_64-linux_big", "build", 4<<20), mk("x86_64-linux_pg", "auxiliary", 1<<20),
		mk("x86_64-linux_pgbig", "auxiliary", 3<<20), mk("postgresql", "auxiliary", 0), mk("x86_64--pg", "auxiliary", 0)}
	names := func(req manifest.TaskRequest) string {
		var ns []string
		for _, h := range req.Machines {
			ns = append(ns, h.Name)
		}
		return strings.Join(ns, " ")
	}
	o := validOptions()
	o.RAM, o.Network = 2<<20, "bridge"
	a := &Agent{Opts: &o, Log: testLog(t)}
	if req := a.taskRequest(ms); names(req) != "x86_64-linux_b" || req.AuxiliaryRAM != 0 {
		t.Errorf("--auxiliary-ram 0: %q, auxiliary-ram %d", names(req), req.AuxiliaryRAM)
	}
	o.AuxiliaryRAM = 2 << 20
	req := a.taskRequest(ms)
	if names(req) != "x86_64-linux_b x86_64-linux_pg" || req.AuxiliaryRAM != 2<<20 {
		t.Errorf("--auxiliary-ram 2 GiB: %q, auxiliary-ram %d", names(req), req.AuxiliaryRAM)
	}
	var b bytes.Buffer
	req.Serialize(&b)
	if !strings.Contains(b.String(), "auxiliary-ram: 2097152\n") || !strings.Contains(b.String(), "name: x86_64-linux_pg\nsummary: s\nrole: auxiliary\nram-minimum: 1048576\n") {
		t.Errorf("request:\n%s", b.String())
	}
	if findMachine(ms, "x86_64-linux_pg") != nil || findMachine(ms, "x86_64-linux_b") == nil {
		t.Error("findMachine takes an auxiliary machine for a build machine")
	}
	task, _ := manifest.ParseTask(strings.NewReader(": 1\nname: p\nversion: 1\nrepository-url: u\nmachine: x86_64-linux_b\n"+
		"auxiliary-machine: x86_64-linux_pg\nauxiliary-machine-pg-sql: x86_64-linux_pg\nauxiliary-machine-: x\ntarget: t\n"), "task")
	if got := auxiliaryRequests(task); len(got) != 2 || got[0] != (auxRequest{"", "x86_64-linux_pg"}) || got[1] != (auxRequest{"pg-sql", "x86_64-linux_pg"}) {
		t.Errorf("auxiliaryRequests: %+v", got)
	}
	// auxiliary-environment goes where brep's order puts it.
	w := WorkerTask(task, nil, "", "")
	w.Fields.Set("auxiliary-environment", "PG_SQL_A=1\nB=2", manifest.TaskOrder)
	b.Reset()
	w.Serialize(&b)
	if !strings.Contains(b.String(), "target: t\nauxiliary-environment:\n\\\nPG_SQL_A=1\nB=2\n\\\n") {
		t.Errorf("worker task:\n%s", b.String())
	}
}

func TestAuxiliaryQEMUArgs(t *testing.T) {
	cfg := machine.Config{Dir: "/m", RunDir: "/r", Accel: "tcg", CPUs: 1, RAM: 65536, Network: "bridge", Tap: "bb1", AuxTap: "bby1", AuxMAC: "02:00:00:00:00:01"}
	args, err := cfg.Args()
	if err != nil || !strings.Contains(strings.Join(args, " "), "-netdev tap,id=net1,ifname=bby1,script=no,downscript=no -device virtio-net-pci,netdev=net1,mac=02:00:00:00:00:01") {
		t.Errorf("%v, %v", args, err)
	}
	cfg.AuxMAC = ""
	if _, err := cfg.Args(); err == nil {
		t.Error("a second NIC without a MAC accepted")
	}
}

// auxQEMURunning reports whether a QEMU of slot 1's auxiliary machine 1 runs.
func (e *e2e) auxQEMURunning() bool {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	dir := auxRunDir(e.slotRun(1), 1) + "/"
	for _, p := range procs {
		if data, err := os.ReadFile(p); err == nil && strings.Contains(string(data), dir) {
			return true
		}
	}
	return false
}

// TestAuxiliaryHeld: a build held for inspection keeps its auxiliary
// machine and private network up; both go down together when the hold
// ends.
func TestAuxiliaryHeld(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTaskWith("hang", testMachine, manifest.NameValue{Name: "auxiliary-machine", Value: testAuxMachine})
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addAuxiliaryMachine("")
	e.opts.BuildTimeout, e.opts.SuspendTimeout = 15*time.Second, 0
	held := make(chan *machine.Machine, 1)
	e.onSuspend = func(m *machine.Machine) { held <- m }
	e.start()
	select {
	case <-held:
	case <-time.After(240 * time.Second):
		t.Fatal("the build machine was never held")
	}
	n := auxNet{offset: PlanSlot(&e.opts, 1).Offset}
	if _, err := net.InterfaceByName(n.Bridge()); err != nil || !e.auxQEMURunning() {
		t.Errorf("while the build is held: bridge %v, auxiliary QEMU running %v", err, e.auxQEMURunning())
	}
	if _, err := ReleaseSuspended(e.slotRun(1)); err != nil {
		t.Fatal(err)
	}
	results := srv.WaitResults(1, 60*time.Second)
	if r := resultOf(results, "hang"); r == nil || r.Status != "abort" {
		t.Fatalf("results %+v", results)
	}
	// The result is sent in parallel with the teardown.
	for deadline := time.Now().Add(30 * time.Second); e.auxQEMURunning() && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
	}
	e.shutdown()
	e.checkHost(t)
	e.checkNoAuxInterfaces(t)
}

// TestAuxiliaryCrash: the agent is SIGKILLed once the build machine
// started beside its auxiliary machine (crash point after-qemu-start); the
// restarted agent kills both QEMUs by their records, deletes their
// snapshots, removes the private bridge and taps, and reports interrupt.
func TestAuxiliaryCrash(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTaskWith("hello", testMachine, manifest.NameValue{Name: "auxiliary-machine-pgsql", Value: testAuxMachine})
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addAuxiliaryMachine("")
	runCrashChild(t, e, "after-qemu-start", 0)
	n := auxNet{offset: PlanSlot(&e.opts, 1).Offset}
	if _, err := net.InterfaceByName(n.Bridge()); err != nil || !e.auxQEMURunning() {
		t.Fatalf("after the crash: bridge %v, auxiliary QEMU running %v", err, e.auxQEMURunning())
	}
	runRecovered(t, e, srv, 0)
	if rs := srv.Results(); len(rs) != 1 || rs[0].Request.Result.Status != "interrupt" {
		t.Errorf("results %+v, want one interrupt", rs)
	}
	if e.auxQEMURunning() {
		t.Error("the auxiliary machine's QEMU survived the restart")
	}
	checkNothingLeft(t, e)
	e.checkNoAuxInterfaces(t)
}

// TestAuxiliaryInUse: a running task's auxiliary machines are not offered
// again, even before its locks are taken.
func TestAuxiliaryInUse(t *testing.T) {
	task, _ := manifest.ParseTask(strings.NewReader(": 1\nname: p\nversion: 1\nrepository-url: u\nmachine: b\nauxiliary-machine-db: x86_64-linux_pg\ntarget: t\n"), "task")
	pg := &inventory.Machine{Dir: "/m/pg", Manifest: manifest.BootstrappedMachine{Machine: manifest.Machine{MachineHeader: manifest.MachineHeader{Name: "x86_64-linux_pg", Role: "auxiliary"}}}}
	other := &inventory.Machine{Dir: "/m/other", Manifest: manifest.BootstrappedMachine{Machine: manifest.Machine{MachineHeader: manifest.MachineHeader{Name: "x86_64-linux_other", Role: "auxiliary"}}}}
	build := &inventory.Machine{Dir: "/m/b"}
	a := &Agent{slots: []*slot{{job: &job{dir: "/m/b", auxDirs: auxiliaryDirs(task, []*inventory.Machine{pg, other})}}}}
	_, _, free := a.slotState([]*inventory.Machine{build, pg, other})
	if len(free) != 1 || free[0] != other {
		t.Errorf("free machines %+v, want only %s", free, other.Dir)
	}
}

// TestAuxiliaryInterrupt: SIGINT while an auxiliary machine is up and the
// build machine not yet booted reports interrupt and tears everything
// down.
func TestAuxiliaryInterrupt(t *testing.T) {
	if !inNetns(t) {
		return
	}
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTaskWith("hello", testMachine, manifest.NameValue{Name: "auxiliary-machine", Value: testAuxMachine})
	e := bridgeE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.addAuxiliaryMachine("silent")
	e.opts.BootstrapAuxiliary = 600 * time.Second
	e.start()
	for deadline := time.Now().Add(240 * time.Second); !e.auxQEMURunning() && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
	}
	if !e.auxQEMURunning() {
		t.Fatal("the auxiliary machine never started")
	}
	e.shutdown()
	if rs := srv.Results(); len(rs) != 1 || rs[0].Request.Result.Status != "interrupt" {
		t.Fatalf("results %+v, want one interrupt", rs)
	}
	e.checkHost(t)
	e.checkNoAuxInterfaces(t)
}
