package main

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/journal"
)

// TestExitStatus: each class of error has its exit status, and its one
// line of diagnostics names the option with two dashes. None of these
// cases reaches btrfs or QEMU: they fail in parsing, in agent.New, or in
// the agent's start before it scans machines.
func TestExitStatus(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badTask := write("bad-task.manifest", ": 1\nname: hello\nname: again\n")
	badOptions := write("bad.options", "--toolchain-id 'x\n")
	file := write("file", "")
	machines := filepath.Join(dir, "machines")
	if err := os.Mkdir(machines, 0o755); err != nil {
		t.Fatal(err)
	}
	task, err := filepath.Abs(filepath.Join("..", "..", "testdata", "dry-run", "task.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	// The daemon and task modes, on user networking and directories of
	// their own.
	agentArgs := func(name string, args ...string) []string {
		return append([]string{"--network", "user", "--machines", machines, "--tftp", filepath.Join(dir, name, "tftp"),
			"--state-dir", filepath.Join(dir, name, "state"), "--run-dir", filepath.Join(dir, name, "run")}, args...)
	}

	// Another process's claim on instance 1 (flocks are per open file, so
	// the agent's own open conflicts with this one).
	claimedRun := filepath.Join(dir, "claimed", "run")
	if err := os.MkdirAll(claimedRun, 0o700); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(claimedRun, "instance-1.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}

	type exitCase struct {
		name   string
		args   []string
		status int
		stderr string // a regexp the whole of stderr matches
	}
	cases := []exitCase{
		{"help", []string{"--help"}, 0, ``},
		{"admin command", []string{"--run-dir", filepath.Join(dir, "admin"), "--suspended"}, 0, ``},
		{"unknown option", []string{"--no-such-option", "http://localhost/"}, exitUsage,
			`^bbot-agent: error: flag provided but not defined: --no-such-option\n$`},
		{"unparsable value", []string{"--cpu", "x", "http://localhost/"}, exitUsage,
			`^bbot-agent: error: invalid value "x" for flag --cpu: integer expected\n$`},
		{"missing value", []string{"--cpu"}, exitUsage, `^bbot-agent: error: flag needs an argument: --cpu\n$`},
		{"bad boolean", []string{"--dump-task=maybe", "http://localhost/"}, exitUsage,
			`^bbot-agent: error: invalid boolean value "maybe" for --dump-task: parse error\n$`},
		{"two forms", []string{"--ram", "1048576", "--build-ram", "1048576", "http://localhost/"}, exitUsage,
			`^bbot-agent: error: --(ram|build-ram) and --(ram|build-ram) are the same option: give one\n$`},
		{"out of range", []string{"--cpu", "0", "http://localhost/"}, exitUsage,
			`^bbot-agent: error: invalid --cpu value '0': must be between 1 and 1024\n$`},
		{"bad URL", []string{"5=ftp://controller/"}, exitUsage, `invalid controller URL`},
		{"bad priority", []string{"123456=http://localhost/"}, exitUsage, `123456`},
		{"no URL", nil, exitUsage, `^bbot-agent: error: no controller URL specified\n$`},
		{"bad toolchain version", []string{"--toolchain-ver", "1.2", "http://localhost/"}, exitUsage, `--toolchain-ver`},
		{"options file syntax", []string{"--options-file", badOptions, "http://localhost/"}, exitUsage,
			`^` + regexp.QuoteMeta(badOptions) + `:1: error: unmatched quote in 'x\n$`},
		{"options file missing", []string{"--options-file", filepath.Join(dir, "none.options")}, exitUsage,
			`^bbot-agent: error: --options-file: open .*none\.options: no such file or directory\n$`},
		{"fake request missing", []string{"--fake-request", filepath.Join(dir, "none.manifest"), "--dump-task"}, exitUsage,
			`^bbot-agent: error: invalid --fake-request value '.*none\.manifest': open `},
		{"malformed fake request", []string{"--fake-request", badTask, "--dump-task"}, exitDataErr,
			`^` + regexp.QuoteMeta(badTask) + `:3:1: error: name redefinition\n$`},
		{"auth key missing", agentArgs("key", "--auth-key", filepath.Join(dir, "none.pem"), "http://localhost/"), exitConfig,
			`^bbot-agent: error: invalid --auth-key value '.*none\.pem': `},
		{"state dir not creatable", agentArgs("state", "--state-dir", filepath.Join(file, "state"), "http://localhost/"), exitConfig,
			`^bbot-agent: error: --state-dir: mkdir .*: not a directory\n$`},
		{"instance claimed", agentArgs("claimed", "http://localhost/"), exitConfig,
			`^bbot-agent: error: instance 1 \(.*instance-1\.lock\): claimed by another bbot-agent process; `},
		// No machine to run it on: a failure at run time.
		{"runtime failure", agentArgs("task", "--fake-request", task), exitFailure, `no usable machine`},
	}
	if os.Geteuid() == 0 {
		// Only root's QEMU switches user, so only then must it exist.
		cases = append(cases, exitCase{"unknown QEMU user", agentArgs("user", "--qemu-user", "no-such-bbot-user", "http://localhost/"), exitConfig,
			`^bbot-agent: error: invalid --qemu-user value 'no-such-bbot-user': user: unknown user no-such-bbot-user\n$`})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stderr bytes.Buffer
			status := run(append([]string{"bbot-agent"}, c.args...), io.Discard, &stderr)
			if status != c.status {
				t.Errorf("exit status %d, want %d; stderr:\n%s", status, c.status, stderr.String())
			}
			if !regexp.MustCompile(c.stderr).MatchString(stderr.String()) {
				t.Errorf("stderr does not match %q:\n%s", c.stderr, stderr.String())
			}
		})
	}
}

// TestExitBridgeMode: bridge mode needs nft(8) (only that it can be run
// is checked, first) and the bridge.
func TestExitBridgeMode(t *testing.T) {
	stub := t.TempDir()
	if err := os.WriteFile(filepath.Join(stub, "nft"), []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, path, stderr string }{
		{"nft missing", t.TempDir(), `^bbot-agent: error: nft \(nftables\) not found: `},
		{"bridge missing", stub, `^bbot-agent: error: --bridge bbnosuch0: `},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PATH", c.path)
			var stderr bytes.Buffer
			status := run([]string{"bbot-agent", "--network", "bridge", "--bridge", "bbnosuch0", "http://localhost/"}, io.Discard, &stderr)
			if status != exitConfig || !regexp.MustCompile(c.stderr).MatchString(stderr.String()) {
				t.Errorf("exit status %d, want %d; stderr does not match %q:\n%s", status, exitConfig, c.stderr, stderr.String())
			}
		})
	}
}

// TestResultsCommands: --results lists the journal and failed/ with why;
// --resend queues a failed result once, and exits 1 naming the option
// when failed/ does not hold the id.
func TestResultsCommands(t *testing.T) {
	state := t.TempDir()
	j, err := journal.Open(journal.Dir(state, 1))
	if err != nil {
		t.Fatal(err)
	}
	pending := &journal.Entry{URL: "http://x/?build-result", Package: "waiting", PackageVersion: "1.0.0", Status: "success"}
	failed := &journal.Entry{URL: "http://x/?build-result", Package: "lost", PackageVersion: "2.0.0", Status: "abort"}
	for _, e := range []*journal.Entry{pending, failed} {
		if err := j.Receive(e, []byte(": 1\n")); err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Fail(failed, journal.FailedDir(state), "result TTL passed: HTTP 503"); err != nil {
		t.Fatal(err)
	}
	j.Close()
	cmd := func(args ...string) (int, string, string) {
		var stdout, stderr bytes.Buffer
		status := run(append([]string{"bbot-agent", "--state-dir", state}, args...), &stdout, &stderr)
		return status, stdout.String(), stderr.String()
	}
	status, out, _ := cmd("--results")
	for _, want := range []string{pending.ID, "received", "waiting/1.0.0", failed.ID, "lost/2.0.0", "result TTL passed: HTTP 503", "--failed-ttl 2592000"} {
		if status != 0 || !strings.Contains(out, want) {
			t.Errorf("--results: status %d, output lacks %q:\n%s", status, want, out)
		}
	}
	if status, out, _ := cmd("--resend", failed.ID); status != 0 || !strings.Contains(out, "queued "+failed.ID) {
		t.Errorf("--resend: status %d:\n%s", status, out)
	}
	if status, _, stderr := cmd("--resend", failed.ID); status != exitFailure || !strings.Contains(stderr, "--resend: "+failed.ID+": no such result in failed/") {
		t.Errorf("second --resend: status %d, stderr %q", status, stderr)
	}
	if status, _, stderr := cmd("--resend", "../x"); status != exitFailure || !strings.Contains(stderr, "is not a result id") {
		t.Errorf("--resend ../x: status %d, stderr %q", status, stderr)
	}
	if _, out, _ := cmd("--results"); !regexp.MustCompile(`(?m)^resend +`+failed.ID+` +queued `).MatchString(out) ||
		strings.Contains(out[strings.Index(out, "failed (kept"):], failed.ID) {
		t.Errorf("--results does not list the result as queued, or still as failed:\n%s", out)
	}
}
