package main

import (
	"errors"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/agent/inventory"
)

// toolchainUse is what --toolchains shows of one toolchain.
type toolchainUse struct {
	name      string
	seen      time.Time // zero: never recorded
	snapshots []inventory.ToolchainSnapshot
}

func toolchainUses(o *agent.Options) ([]*toolchainUse, error) {
	snaps, err := inventory.ToolchainSnapshots(o.Machines)
	if err != nil {
		return nil, fmt.Errorf("--machines: %w", err)
	}
	seen, err := inventory.LastSeen(o.Machines)
	if err != nil {
		return nil, fmt.Errorf("--machines: %w", err)
	}
	by := map[string]*toolchainUse{}
	for tc, t := range seen {
		by[tc] = &toolchainUse{name: tc, seen: t}
	}
	for _, s := range snaps {
		u := by[s.Toolchain]
		if u == nil {
			u = &toolchainUse{name: s.Toolchain}
			by[s.Toolchain] = u
		}
		u.snapshots = append(u.snapshots, s)
	}
	var out []*toolchainUse
	for _, u := range by {
		out = append(out, u)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].name < out[b].name })
	return out, nil
}

// unused: no agent of it ran for --retire-after. A toolchain never
// recorded (snapshots made before the agent recorded use) is not: only
// the admin can say it is retired (--retire).
func unused(u *toolchainUse, o *agent.Options, now time.Time) bool {
	return !u.seen.IsZero() && now.Sub(u.seen) >= o.RetireAfter
}

// showToolchains lists every toolchain's bootstrapped snapshots and use.
func showToolchains(o *agent.Options, stdout io.Writer, now time.Time) error {
	uses, err := toolchainUses(o)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOOLCHAIN\tLAST RAN\tSNAPSHOTS\tUNUSED")
	for _, u := range uses {
		ran := "never recorded"
		if !u.seen.IsZero() {
			ran = u.seen.UTC().Format(time.RFC3339) + " (" + now.Sub(u.seen).Round(time.Minute).String() + " ago)"
		}
		state := "no"
		switch {
		case unused(u, o, now):
			state = "yes: --retire-unused removes its snapshots"
		case u.seen.IsZero():
			state = "unknown: --retire " + u.name + " if it is retired"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", u.name, ran, len(u.snapshots), state)
	}
	if len(uses) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	return tw.Flush()
}

// retire removes the snapshots of --retire's toolchain, or with
// --retire-unused of every unused one.
func retire(o *agent.Options, stdout io.Writer, now time.Time) error {
	uses, err := toolchainUses(o)
	if err != nil {
		return err
	}
	option := "--retire-unused"
	var chosen []*toolchainUse
	if o.Retire != "" {
		option = "--retire"
		if !inventory.IsToolchainName(o.Retire) {
			return &agent.OptionError{Option: "retire", Value: o.Retire, Reason: "not a toolchain name"}
		}
		if agent.InstancesRunning(agent.DefaultRunDir(o.Retire)) {
			return fmt.Errorf("--retire: an agent of toolchain %s runs (it holds an instance in %s): stop it first", o.Retire, agent.DefaultRunDir(o.Retire))
		}
		for _, u := range uses {
			if u.name == o.Retire {
				chosen = append(chosen, u)
			}
		}
		if len(chosen) == 0 {
			return fmt.Errorf("--retire: toolchain %s has no bootstrapped snapshot below %s", o.Retire, o.Machines)
		}
	} else {
		for _, u := range uses {
			if unused(u, o, now) && !agent.InstancesRunning(agent.DefaultRunDir(u.name)) {
				chosen = append(chosen, u)
			}
		}
	}
	var busy []error
	for _, u := range chosen {
		left := 0
		for _, s := range u.snapshots {
			err := inventory.RemoveToolchainSnapshot(s)
			switch {
			case err == nil:
				fmt.Fprintf(stdout, "removed %s\n", s.Path)
			case errors.Is(err, inventory.ErrMachineBusy):
				fmt.Fprintf(stdout, "left %s: the machine is busy (a task or bootstrap runs in it); try again later\n", s.Path)
				busy = append(busy, err)
				left++
			default:
				return fmt.Errorf("%s: %w", option, err)
			}
		}
		if left == 0 {
			if err := inventory.ForgetToolchain(o.Machines, u.name); err != nil {
				return fmt.Errorf("%s: %w", option, err)
			}
			fmt.Fprintf(stdout, "toolchain %s retired\n", u.name)
		}
	}
	if len(chosen) == 0 {
		fmt.Fprintf(stdout, "no toolchain unused for --retire-after %d s\n", int64(o.RetireAfter/time.Second))
	}
	if len(busy) > 0 {
		return fmt.Errorf("%s: %d snapshots left on busy machines", option, len(busy))
	}
	return nil
}
