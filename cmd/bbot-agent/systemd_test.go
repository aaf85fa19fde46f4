package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
	"github.com/build2/bbot-agent-go/machine/machinetest"
)

// The shipped unit, tested with systemd's own tools and under a real
// systemd (PID 1 of a PID, mount, network and cgroup namespace made here).

const unitFile = "bbot-agent@.service"

// maxExposure is the highest `systemd-analyze security` score the unit may
// have (README quotes the measured one).
const maxExposure = 4.0

// needTool returns the path of a tool, skipping (failing under CI)
// when it is missing.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		prereq(t, name+" not found (apt-get install systemd)")
	}
	return p
}

// prereq skips the test, or fails it under CI=true.
func prereq(t *testing.T, why string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("prerequisite missing: %s", why)
	}
	t.Skip(why)
}

// shippedUnit returns the unit with ExecStart's binary replaced by bin.
func shippedUnit(t *testing.T, bin string) []byte {
	t.Helper()
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(data, []byte("/usr/local/bin/bbot-agent")) {
		t.Fatal("the unit's ExecStart no longer names /usr/local/bin/bbot-agent")
	}
	return bytes.ReplaceAll(data, []byte("/usr/local/bin/bbot-agent"), []byte(bin))
}

// buildAgent builds the real binary (the test binary is not one).
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "bbot-agent")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestUnitVerify(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	dir := t.TempDir()
	unit := filepath.Join(dir, unitFile)
	if err := os.WriteFile(unit, shippedUnit(t, buildAgent(t)), 0o644); err != nil {
		t.Fatal(err)
	}
	// Documentation=man:bbot-agent(1) is checked against the checked-in
	// page.
	man := filepath.Join(dir, "man", "man1")
	os.MkdirAll(man, 0o755)
	page, err := os.ReadFile("bbot-agent.1")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(man, "bbot-agent.1"), page, 0o644)
	args := []string{"verify", unit}
	if _, err := exec.LookPath("man"); err != nil {
		args = []string{"verify", "--man=no", unit}
	}
	cmd := exec.Command(analyze, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MANPATH="+filepath.Join(dir, "man"))
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

func TestUnitSecurity(t *testing.T) {
	analyze := needTool(t, "systemd-analyze")
	dir := t.TempDir()
	unit := filepath.Join(dir, unitFile)
	os.WriteFile(unit, shippedUnit(t, "/bin/true"), 0o644)
	cmd := exec.Command(analyze, "security", "--offline=yes", "--no-pager", unit)
	cmd.Dir = dir
	out, _ := cmd.CombinedOutput() // exits non-zero above its threshold
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security --offline=yes: %.1f %s", score, m[2])
	if score > maxExposure {
		t.Fatalf("exposure %.1f %s, above %.1f:\n%s", score, m[2], maxExposure, out)
	}
}

// nsSystemd is a systemd running as PID 1 of namespaces of its own. Its
// /run, /etc and /var/lib are private (tmpfs or overlays on a tmpfs), so
// that units, options and state stay out of the host's; its cgroup tree
// is a sub-cgroup of the host's, removed at the end.
type nsSystemd struct {
	t     *testing.T
	pid   int    // systemd's, in the host's PID namespace
	units string // host directory bound onto its /run/systemd/system
	etc   string // host directory holding its /etc's upper layer
	log   string // its console output
}

func startSystemd(t *testing.T, bin string) *nsSystemd {
	t.Helper()
	if os.Geteuid() != 0 {
		prereq(t, "needs root for namespaces")
	}
	for _, tool := range []string{"unshare", "nsenter", "mount"} {
		needTool(t, tool)
	}
	if _, err := os.Stat("/lib/systemd/systemd"); err != nil {
		prereq(t, "no /lib/systemd/systemd")
	}
	base := "/sys/fs/cgroup"
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.procs"); err == nil {
		base = "/sys/fs/cgroup/unified" // a hybrid host: cgroup2 is here
	} else if _, err := os.Stat("/sys/fs/cgroup/cgroup.procs"); err != nil {
		prereq(t, "no cgroup2 hierarchy")
	}
	cg := filepath.Join(base, fmt.Sprintf("bbot-agent-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		prereq(t, "cannot make a cgroup: "+err.Error())
	}
	dir := t.TempDir()
	s := &nsSystemd{t: t, units: filepath.Join(dir, "units"), etc: filepath.Join(dir, "etc-add")}
	os.MkdirAll(s.units, 0o755)
	os.MkdirAll(filepath.Join(s.etc, "bbot-agent"), 0o755)
	os.WriteFile(filepath.Join(s.units, "bbot-test.target"), []byte("[Unit]\nDescription=test target\n"), 0o644)
	// This systemd shares the host's file systems: the boot-time units
	// must never run (systemd-tmpfiles would empty the host's /tmp, timers
	// would run the host's jobs). Units under test get
	// DefaultDependencies=no, and these targets are masked so that
	// anything pulling them in fails instead.
	for _, u := range []string{"sysinit.target", "basic.target", "sockets.target", "timers.target", "paths.target",
		"local-fs.target", "systemd-tmpfiles-setup.service", "systemd-tmpfiles-clean.timer", "systemd-journald.service"} {
		os.Symlink("/dev/null", filepath.Join(s.units, u))
	}
	// Inside: cgroup2 at the namespace's root, a private /run with our
	// units, /etc, /var/lib and /usr/local/bin as overlays whose upper
	// layers are on a tmpfs (so StateDirectory= and the options files land
	// there, and bin is the unit's /usr/local/bin/bbot-agent).
	script := `set -e
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system
mount --bind "$1" /run/systemd/system
mkdir -p "$3"
mount -t tmpfs tmpfs "$3"
mkdir -p "$3/etc/u" "$3/etc/w" "$3/var/u" "$3/var/w"
cp -a "$2/." "$3/etc/u/"
mount -t overlay overlay -o lowerdir=/etc,upperdir="$3/etc/u",workdir="$3/etc/w" /etc
mount -t overlay overlay -o lowerdir=/var/lib,upperdir="$3/var/u",workdir="$3/var/w" /var/lib
mkdir -p "$3/bin/u" "$3/bin/w"
cp "$4" "$3/bin/u/bbot-agent"
mount -t overlay overlay -o lowerdir=/usr/local/bin,upperdir="$3/bin/u",workdir="$3/bin/w" /usr/local/bin
exec /lib/systemd/systemd --system --unit=bbot-test.target --log-target=console
`
	inner := []string{"unshare", "--cgroup", "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "--mount-proc", "--kill-child",
		"bash", "-c", script, "systemd-ns", s.units, s.etc, filepath.Join(dir, "ovl"), bin}
	// Join the sub-cgroup first: the new cgroup namespace is rooted there.
	cmd := exec.Command("bash", append([]string{"-c", `echo $$ > "$0/cgroup.procs" && exec "$@"`, cg}, inner...)...)
	s.log = filepath.Join(dir, "systemd.log")
	log, _ := os.Create(s.log)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s.pid > 0 {
			// SIGKILL to a PID namespace's init ends every process in it.
			exec.Command("kill", "-9", strconv.Itoa(s.pid)).Run()
		}
		cmd.Process.Kill()
		cmd.Wait()
		removeCgroup(t, cg)
		if t.Failed() {
			out, _ := os.ReadFile(filepath.Join(dir, "systemd.log"))
			t.Logf("systemd's console:\n%s", tail(string(out), 40))
		}
	})
	// systemd is unshare's child's child: find it by its parent.
	deadline := time.Now().Add(30 * time.Second)
	for s.pid == 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		out, _ := exec.Command("pgrep", "-f", "^/lib/systemd/systemd --system --unit=bbot-test.target").Output()
		for _, f := range strings.Fields(string(out)) {
			if pid, _ := strconv.Atoi(f); pid > 0 && inCgroup(pid, cg) {
				s.pid = pid
			}
		}
	}
	if s.pid == 0 {
		t.Fatal("systemd did not start")
	}
	for {
		out, _ := s.run("systemctl", "is-system-running")
		state := strings.TrimSpace(out)
		if state == "running" || state == "degraded" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd is %q after 30 s", state)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return s
}

func inCgroup(pid int, cg string) bool {
	data, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	return bytes.Contains(data, []byte(filepath.Base(cg)))
}

// removeCgroup removes the test's cgroup tree, deepest first, once its
// processes are gone.
func removeCgroup(t *testing.T, cg string) {
	for try := 0; try < 50; try++ {
		var dirs []string
		filepath.WalkDir(cg, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
		if _, err := os.Stat(cg); os.IsNotExist(err) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("cgroup %s left behind", cg)
}

// run runs a command inside the namespaces.
func (s *nsSystemd) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	full := append([]string{"-t", strconv.Itoa(s.pid), "-m", "-p", "-n", "-u", "-i", "--"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", full...).CombinedOutput()
	return string(out), err
}

// show returns a unit property.
func (s *nsSystemd) show(unit, prop string) string {
	out, _ := s.run("systemctl", "show", "-p", prop, "--value", unit)
	return strings.TrimSpace(out)
}

// waitProp waits until a unit property satisfies ok.
func (s *nsSystemd) waitProp(unit, prop string, within time.Duration, ok func(string) bool) string {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		v := s.show(unit, prop)
		if ok(v) {
			return v
		}
		if time.Now().After(deadline) {
			st, _ := s.run("systemctl", "status", "--no-pager", unit)
			s.t.Fatalf("%s %s = %q after %s\n%s", unit, prop, v, within, st)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func is(want string) func(string) bool { return func(v string) bool { return v == want } }

// TestUnitUnderSystemd runs the shipped unit, with the documented drop-in
// for other paths, under a real systemd: notify readiness and status,
// the watchdog kept fed, a stuck goroutine restarted by it, a clean stop,
// and no restart after a bad option.
func TestUnitUnderSystemd(t *testing.T) {
	s := startSystemd(t, buildAgent(t))
	dir := t.TempDir()
	// Not below /tmp (PrivateTmp=) or /home (ProtectHome=): inside the
	// namespace's private /var/lib.
	const bin = "/usr/local/bin/bbot-agent"
	const machines, tftpRoot = "/var/lib/bbot-test/machines", "/var/lib/bbot-test/tftp"
	if out, err := s.run("mkdir", "-p", machines, tftpRoot+"/toolchains/t1"); err != nil {
		t.Fatal(err, out)
	}
	shipped, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(s.units, unitFile), shipped, 0o644); err != nil {
		t.Fatal(err)
	}
	// The drop-in README documents for paths other than the defaults; a
	// short watchdog so that the test takes seconds.
	agentLog := filepath.Join(dir, "agent.log")
	dropIn := filepath.Join(s.units, "bbot-agent@t1.service.d")
	os.MkdirAll(dropIn, 0o755)
	writeDropIn := func(extra string) {
		// Test-only: no boot-time dependencies (see startSystemd), the
		// output in a file (no journald here).
		conf := fmt.Sprintf("[Unit]\nDefaultDependencies=no\nRequiresMountsFor=%s %s\n[Service]\nReadWritePaths=%s %s\nWatchdogSec=4\nRestartSec=1\nStandardOutput=append:%s\nStandardError=inherit\n%s",
			machines, tftpRoot, machines, tftpRoot, agentLog, extra)
		if err := os.WriteFile(filepath.Join(dropIn, "paths.conf"), []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := s.run("systemctl", "daemon-reload"); err != nil {
			t.Fatalf("daemon-reload: %v\n%s", err, out)
		}
	}
	writeOptions := func(opts string) {
		if out, err := s.run("sh", "-c", "cat > /etc/bbot-agent/t1.options <<'EOF'\n"+opts+"EOF\n"); err != nil {
			t.Fatalf("writing the options file: %v\n%s", err, out)
		}
	}
	writeOptions(fmt.Sprintf("# test toolchain\n--machines %s\n--tftp %s\n--network user\n--poll-interval 1\n--verbose 2\n", machines, tftpRoot))
	if out, err := s.run("sh", "-c", "echo 'BBOT_AGENT_URLS=http://127.0.0.1:9/?build-task' > /etc/bbot-agent/t1.env"); err != nil {
		t.Fatal(err, out)
	}
	writeDropIn("")
	const unit = "bbot-agent@t1.service"

	// Type=notify: `systemctl start` returns once READY=1 came.
	if out, err := s.run("systemctl", "start", unit); err != nil {
		st, _ := s.run("systemctl", "status", "--no-pager", unit)
		log, _ := os.ReadFile(agentLog)
		t.Fatalf("start: %v\n%s\n%s\n%s", err, out, st, log)
	}
	if v := s.show(unit, "ActiveState"); v != "active" {
		t.Fatalf("ActiveState %q right after start", v)
	}
	s.waitProp(unit, "StatusText", 10*time.Second, func(v string) bool { return v == "idle" })
	// The state and run directories are the unit's own, per instance.
	if out, err := s.run("test", "-d", "/var/lib/bbot-agent/t1/journal"); err != nil {
		t.Fatalf("no per-instance state directory: %v %s", err, out)
	}
	// Fed: three watchdog periods later it is still the same process.
	pid := s.show(unit, "MainPID")
	time.Sleep(13 * time.Second)
	if v := s.show(unit, "MainPID"); v != pid || s.show(unit, "NRestarts") != "0" {
		t.Fatalf("restarted with every goroutine answering: pid %s -> %s, NRestarts %s", pid, v, s.show(unit, "NRestarts"))
	}
	// --status beside it, binding nothing.
	if out, err := s.run(bin, "--status", "--toolchain-name", "t1", "--run-dir", "/run/bbot-agent/t1",
		"--state-dir", "/var/lib/bbot-agent/t1", "--machines", machines); err != nil || !strings.Contains(out, "idle") {
		t.Fatalf("--status beside the daemon: %v\n%s", err, out)
	}
	// SIGTERM: a clean stop, exit 0.
	if out, err := s.run("systemctl", "stop", unit); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
	if v := s.show(unit, "Result"); v != "success" {
		t.Fatalf("Result %q after stop", v)
	}

	// A goroutine stuck outside its loop: no WATCHDOG=1, SIGABRT, restart.
	writeDropIn("Environment=BBOT_AGENT_STALL=dispatch\n")
	if out, err := s.run("systemctl", "start", unit); err != nil {
		t.Fatalf("start: %v\n%s", err, out)
	}
	s.waitProp(unit, "NRestarts", 30*time.Second, func(v string) bool { n, _ := strconv.Atoi(v); return n >= 1 })
	// systemd's watchdog signal is SIGABRT: Go dumps the goroutines.
	log, _ := os.ReadFile(agentLog)
	if !bytes.Contains(log, []byte("SIGABRT")) {
		t.Fatalf("restarted, but not by the watchdog's SIGABRT:\n%s", tail(string(log), 30))
	}
	if !bytes.Contains(log, []byte("stuck")) || !bytes.Contains(log, []byte("dispatcher")) {
		t.Errorf("the agent did not name the stuck goroutine:\n%s", tail(string(log), 30))
	}
	s.run("systemctl", "stop", unit)
	s.run("systemctl", "reset-failed", unit)

	// A bad option: exit 64, and no restart loop.
	writeDropIn("")
	writeOptions("--cpu 0\n")
	s.run("systemctl", "start", unit)
	s.waitProp(unit, "ActiveState", 15*time.Second, is("failed"))
	if v := s.show(unit, "ExecMainStatus"); v != "64" {
		t.Fatalf("ExecMainStatus %q for a bad option, want 64", v)
	}
	time.Sleep(3 * time.Second) // RestartSec=1: a restart would show by now
	if v := s.show(unit, "NRestarts"); v != "0" {
		t.Fatalf("restarted %s times after exit 64", v)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// TestUnitRunsATask: the shipped unit's sandbox (capabilities, system
// call filter, device policy, read-only system) lets the agent bootstrap a
// real machine and run a real task in it under QEMU, with user and with
// bridge networking. The drop-in only
// swaps the daemon for a --fake-request run (no controller can be reached
// from the namespace) and names the test's paths.
func TestUnitRunsATask(t *testing.T) {
	machinetest.RequireQEMU(t)
	machinetest.LockVM(t)
	root := btrfstest.Mount(t, 1<<30)
	m := filepath.Join(root, "machines", "vol", "busybox")
	os.MkdirAll(m, 0o755)
	img := filepath.Join(m, "busybox-1.0")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	machinetest.CopyImage(t, img)
	btrfs.SetReadOnly(img, true)
	os.Symlink("busybox-1.0", filepath.Join(m, "busybox-1"))
	task, err := os.ReadFile("../../testdata/demo/hello.manifest")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "task.manifest"), task, 0o644)

	s := startSystemd(t, buildAgent(t)) // after the mount: the namespace sees it
	// PrivateTmp= hides the test's /tmp from the service: the btrfs is
	// bound below the namespace's /var/lib.
	const dir = "/var/lib/bbot-test/btrfs"
	if out, err := s.run("sh", "-c", "mkdir -p "+dir+" && mount --bind "+root+" "+dir); err != nil {
		t.Fatal(err, out)
	}
	shipped, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(s.units, unitFile), shipped, 0o644)
	// The namespace's own network: a bridge for --network bridge (taps,
	// netlink, /dev/net/tun under the sandbox).
	for _, args := range [][]string{{"link", "set", "lo", "up"}, {"link", "add", "bbbr0", "type", "bridge"},
		{"addr", "add", "192.168.213.1/24", "dev", "bbbr0"}, {"link", "set", "bbbr0", "up"}} {
		if o, err := s.run(append([]string{"ip"}, args...)...); err != nil {
			t.Fatal(err, o)
		}
	}
	for i, network := range []string{"--network user", "--network bridge --bridge bbbr0"} {
		tcName := fmt.Sprintf("t%d", i+2)
		tc := filepath.Join(root, "tftp", "toolchains", tcName)
		os.MkdirAll(tc, 0o755)
		os.WriteFile(filepath.Join(tc, "toolchain"), []byte(": 1\nbbot-version: "+agent.Version+"\n"), 0o644)
		out := filepath.Join(t.TempDir(), "out")
		dropIn := filepath.Join(s.units, "bbot-agent@"+tcName+".service.d")
		os.MkdirAll(dropIn, 0o755)
		conf := fmt.Sprintf(`[Unit]
DefaultDependencies=no
RequiresMountsFor=%[1]s
[Service]
Type=exec
WatchdogSec=0
Restart=no
ReadWritePaths=%[1]s
StandardOutput=file:%[2]s
StandardError=inherit
ExecStart=
ExecStart=/usr/local/bin/bbot-agent --verbose 2 --toolchain-name %%i --toolchain-id %%i-1 \
  --state-dir ${STATE_DIRECTORY} --run-dir ${RUNTIME_DIRECTORY} \
  --machines %[1]s/machines --tftp %[1]s/tftp --tftp-port 23600 \
  %[3]s --accel tcg --cpu 1 --ram 524288 --build-timeout 300 \
  --fake-request %[1]s/task.manifest
`, dir, out, network)
		os.WriteFile(filepath.Join(dropIn, "task.conf"), []byte(conf), 0o644)
		if o, err := s.run("systemctl", "daemon-reload"); err != nil {
			t.Fatal(err, o)
		}
		unit := "bbot-agent@" + tcName + ".service"
		if o, err := s.run("systemctl", "start", unit); err != nil {
			t.Fatal(err, o)
		}
		s.waitProp(unit, "ActiveState", 5*time.Minute, func(v string) bool { return v == "inactive" || v == "failed" })
		result, _ := os.ReadFile(out)
		if v := s.show(unit, "ExecMainStatus"); v != "0" || !bytes.Contains(result, []byte("\nstatus: success\n")) {
			t.Fatalf("%s under the unit's sandbox: exit %s, output:\n%s", network, v, tail(string(result), 40))
		}
	}
}
