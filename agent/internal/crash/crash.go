// Package crash holds the agent's named crash points: when the environment
// variable BBOT_AGENT_CRASH names a point, the agent SIGKILLs itself there.
// Tests use them to prove that no moment of a task loses or mis-reports it;
// in production the variable is unset and a point costs one lookup.
package crash

import (
	"os"
	"syscall"
)

// Env is the variable naming the crash point.
const Env = "BBOT_AGENT_CRASH"

// Points are the crash points, in the order a task passes them.
var Points = []string{
	"after-journal", "after-task-snapshot", "after-qemu-start", "after-result-upload",
	"before-persist", "after-persist", "after-upload-post", "after-post", "while-held", "during-teardown",
	"before-publish", "after-exchange",
}

// StallEnv names a point where the goroutine that reaches it blocks
// forever instead: a goroutine stuck outside its loop (a hung ioctl, say),
// which the watchdog must notice.
const StallEnv = "BBOT_AGENT_STALL"

// StallPoints are points only stalled at (not crash points a task
// passes): "dispatch" is the top of the dispatcher's loop.
var StallPoints = []string{"dispatch"}

// Point kills the process if name is the configured crash point, or
// blocks the calling goroutine if it is the stall point.
func Point(name string) {
	if os.Getenv(StallEnv) == name {
		os.Stderr.WriteString("bbot-agent: stalled at " + name + "\n")
		select {}
	}
	if os.Getenv(Env) != name {
		return
	}
	os.Stderr.WriteString("bbot-agent: crash point " + name + "\n")
	syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // the signal is on its way
}
