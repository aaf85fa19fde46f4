package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent"
)

// TestStatusShowsInteractiveSlot: --status shows a slot whose interactive
// build waits at its breakpoint, with the command that attaches to its
// console (the same the task request's interactive-login named).
func TestStatusShowsInteractiveSlot(t *testing.T) {
	run := t.TempDir()
	since := time.Date(2026, 12, 2, 14, 0, 0, 0, time.UTC)
	console := filepath.Join(run, "1", "console.sock")
	st := agent.State{PID: os.Getpid(), StartTime: selfStartTime(t), Started: since, Updated: since, Toolchain: "ci",
		Slots: []agent.SlotState{{Instance: 1, Activity: agent.ActivityInteractive, Machine: "m", Task: "libfoo/1.0.0", Console: console, Since: since}}}
	data, _ := json.Marshal(st)
	if err := os.WriteFile(filepath.Join(run, "status-1.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	o := &agent.Options{RunDir: run, StateDir: t.TempDir(), Machines: t.TempDir(), ToolchainName: "ci"}
	var out bytes.Buffer
	if err := showStatus(o, &out, since.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	want := "  slot 1: interactive libfoo/1.0.0 on m since 2026-12-02T14:00:00Z (1m0s)\n" +
		"    at its breakpoint; attach: " + agent.InteractiveLogin(filepath.Join(run, "1")) + " (Ctrl-] detaches)\n"
	if !strings.Contains(out.String(), want) {
		t.Errorf("--status lacks %q:\n%s", want, out.String())
	}
	if line := st.Line(since); line != "interactive libfoo/1.0.0 on m at its breakpoint" {
		t.Errorf("STATUS= %q", line)
	}
}
