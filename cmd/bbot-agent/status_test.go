package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent"
)

// selfStartTime is this process's start time from /proc (stat field 22),
// which a suspended record must carry to count as live.
func selfStartTime(t *testing.T) uint64 {
	data, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which ends with the last ')'.
	fields := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+2:]))
	v, err := strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestStatusShowsHeldMachine: --status and --suspended print how to reach
// a held machine: its console socket (with the command to attach) and
// VNC. The record names this test process, so it counts as live.
func TestStatusShowsHeldMachine(t *testing.T) {
	run := t.TempDir()
	os.Mkdir(filepath.Join(run, "2"), 0o700)
	since := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	rec := agent.Suspended{PID: os.Getpid(), StartTime: selfStartTime(t), Snapshot: "/m/v/m/m-ci~1a2b",
		ConsoleLog: filepath.Join(run, "2", "console.log"), ConsoleSocket: filepath.Join(run, "2", "console.sock"),
		VNC: filepath.Join(run, "2", "vnc.sock"), AdminSocket: filepath.Join(run, "2", "admin.sock"), Since: since, Reason: "build timeout"}
	data, _ := json.Marshal(rec)
	if err := os.WriteFile(filepath.Join(run, "2", "suspended.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	o := &agent.Options{RunDir: run, StateDir: t.TempDir(), Machines: t.TempDir(), ToolchainName: "ci"}
	var out bytes.Buffer
	if err := showStatus(o, &out, since.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"held machines:\n  instance 2: /m/v/m/m-ci~1a2b since 2026-12-02T14:00:00Z (1h0m0s): build timeout\n",
		"    attach: socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:" + rec.ConsoleSocket + " (Ctrl-] detaches)\n",
		"    vnc: " + rec.VNC + " (local: socat TCP-LISTEN:5901,bind=127.0.0.1,reuseaddr UNIX-CONNECT:" + rec.VNC +
			" & vncviewer 127.0.0.1::5901; remote: ssh -L 5901:" + rec.VNC + " <host>)\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--status lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	held, err := agent.ListSuspended(run)
	if err != nil || len(held) != 1 {
		t.Fatalf("ListSuspended: %+v, %v", held, err)
	}
	printSuspended(&out, held[0].Instance, held[0].Suspended)
	for _, want := range []string{"\nconsole-socket: " + rec.ConsoleSocket + "\n",
		"\nattach: socat -,raw,echo=0,escape=0x1d UNIX-CONNECT:" + rec.ConsoleSocket + "\n",
		"\nvnc: " + rec.VNC + "\n", "\nvnc-attach: local: socat TCP-LISTEN:5901,bind=127.0.0.1,reuseaddr UNIX-CONNECT:" + rec.VNC} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--suspended lacks %q:\n%s", want, out.String())
		}
	}
}
