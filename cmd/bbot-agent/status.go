package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// showStatus prints what the agents running with --run-dir do, the
// machines' bootstrap state, held machines and the journal. It only reads:
// no lock, socket or port is taken, so it is safe beside the daemon.
func showStatus(o *agent.Options, w io.Writer, now time.Time) error {
	procs, err := agent.ReadStates(o.RunDir)
	if err != nil {
		return err
	}
	if len(procs) == 0 {
		fmt.Fprintf(w, "agent: none has run with --run-dir %s\n", o.RunDir)
	}
	withheld := map[string]agent.Withheld{}
	for _, p := range procs {
		st := p.State
		if p.Running {
			fmt.Fprintf(w, "agent: pid %d, toolchain %s, running since %s (%s)\n", st.PID, st.Toolchain, stamp(st.Started), ago(now, st.Started))
		} else {
			fmt.Fprintf(w, "agent: pid %d, toolchain %s, not running (last state %s)\n", st.PID, st.Toolchain, stamp(st.Updated))
		}
		switch {
		case !p.Running:
		case st.BackingOff(now):
			fmt.Fprintf(w, "  backing off after a host fault until %s (%s left): %s\n", stamp(st.BackoffUntil), st.BackoffUntil.Sub(now).Round(time.Second), st.BackoffWhy)
		default:
			fmt.Fprintln(w, "  backoff: none")
		}
		if st.Draining {
			fmt.Fprintln(w, "  draining: finishing running tasks, taking no new ones")
		}
		for _, s := range st.Slots {
			what := string(s.Activity)
			switch s.Activity {
			case agent.ActivityBootstrapping, agent.ActivityHeld:
				what += " " + s.Machine
			case agent.ActivityBuilding, agent.ActivityInteractive:
				what += " " + s.Task + " on " + s.Machine
			}
			fmt.Fprintf(w, "  slot %d: %s since %s (%s)\n", s.Instance, what, stamp(s.Since), ago(now, s.Since))
			if s.Activity == agent.ActivityInteractive && s.Console != "" {
				fmt.Fprintf(w, "    at its breakpoint; attach: %s (Ctrl-] detaches)\n", agent.ConsoleAttach(s.Console))
			}
		}
		if p.Running {
			for _, m := range st.Withheld {
				withheld[m.Machine] = m
			}
		}
	}

	held, err := agent.ListSuspended(o.RunDir)
	if err != nil {
		return err
	}
	if len(held) == 0 {
		fmt.Fprintln(w, "held machines: none")
	} else {
		fmt.Fprintln(w, "held machines:")
		for _, h := range held {
			s := h.Suspended
			fmt.Fprintf(w, "  instance %d: %s since %s (%s): %s\n    console %s, qmp %s, pid %d\n",
				h.Instance, s.Snapshot, stamp(s.Since), ago(now, s.Since), s.Reason, s.ConsoleLog, s.AdminSocket, s.PID)
			if s.ConsoleSocket != "" {
				fmt.Fprintf(w, "    attach: %s (Ctrl-] detaches)\n", agent.ConsoleAttach(s.ConsoleSocket))
			}
			if s.VNC != "" {
				fmt.Fprintf(w, "    vnc: %s (%s)\n", s.VNC, agent.VNCAttach(s.VNC))
			}
		}
	}

	machines, err := inventory.Describe(o.Machines, o.ToolchainName)
	if err != nil {
		fmt.Fprintf(w, "machines: %v\n", err)
	} else {
		fmt.Fprintf(w, "machines (%s, toolchain %s): %d\n", o.Machines, o.ToolchainName, len(machines))
		for _, m := range machines {
			var state string
			switch {
			case !m.Linked:
				state = "withdrawn (no " + m.Name + "-" + inventory.BootstrapProtocol + " link)"
			case m.Bootstrapped:
				state = fmt.Sprintf("bootstrapped %s (%s ago), toolchain id %q, bbot %s", stamp(m.Since), ago(now, m.Since), m.ToolchainID, m.BbotVersion)
			case m.Problem != "":
				state = "bootstrapped snapshot unreadable: " + m.Problem
			default:
				state = "not bootstrapped"
			}
			if wh, ok := withheld[m.Dir]; ok {
				state += fmt.Sprintf("; withheld until %s: %s", stamp(wh.Until), wh.Why)
			}
			fmt.Fprintf(w, "  %s: %s\n", m.Name, state)
		}
	}

	c, err := journal.Count(o.StateDir)
	if err != nil {
		return err
	}
	var parts []string
	total := 0
	for _, s := range slices.Sorted(maps.Keys(c.ByState)) {
		parts = append(parts, fmt.Sprintf("%d %s", c.ByState[s], s))
		total += c.ByState[s]
	}
	line := fmt.Sprintf("journal: %d entries", total)
	if len(parts) > 0 {
		line += " (" + strings.Join(parts, ", ") + ")"
	}
	fmt.Fprintf(w, "%s; failed: %d (%s/failed)\n", line, c.Failed, strings.TrimSuffix(o.StateDir, "/"))
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// ago is a rounded age, as an admin reads it.
func ago(now, t time.Time) string {
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return d.Round(time.Second).String()
	case d < time.Hour:
		return d.Round(time.Minute).String()
	default:
		return d.Round(time.Hour).String()
	}
}
