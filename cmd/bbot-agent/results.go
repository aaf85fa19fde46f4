package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/agent/journal"
)

// showResults lists the results not yet delivered (every instance's
// journal) and those kept in failed/, read-only: no journal is taken, so
// it runs beside the agent.
func showResults(o *agent.Options, stdout io.Writer) error {
	dirs, _ := filepath.Glob(filepath.Join(o.StateDir, "journal", "[0-9]*"))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "journal (not yet delivered) in %s:\n", filepath.Join(o.StateDir, "journal"))
	fmt.Fprintln(tw, "INSTANCE\tID\tSTATE\tPACKAGE\tSTATUS\tCREATED\tREASON")
	pending := 0
	for _, dir := range dirs {
		n, err := strconv.Atoi(filepath.Base(dir))
		if err != nil {
			continue
		}
		entries, err := journal.ReadEntries(dir)
		if err != nil {
			fmt.Fprintf(tw, "%d\t(unreadable: %v)\n", n, err)
		}
		for _, e := range entries {
			pending++
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", n, e.ID, e.State, e.Package, e.PackageVersion, e.Status,
				e.Created.Format(time.RFC3339), firstLine(e.Reason))
		}
	}
	if queued, _ := journal.ReadEntries(journal.ResendDir(o.StateDir)); len(queued) > 0 {
		for _, e := range queued {
			pending++
			fmt.Fprintf(tw, "resend\t%s\t%s\t%s/%s\t%s\t%s\t%s\n", e.ID, "queued", e.Package, e.PackageVersion, e.Status,
				e.Created.Format(time.RFC3339), "--resend: the agent sends it at its next poll round or start")
		}
	}
	if pending == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	failedDir := journal.FailedDir(o.StateDir)
	failed, err := journal.ListFailed(failedDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(tw, "\nfailed (kept in %s; --resend ID sends one again):\n", failedDir)
	fmt.Fprintln(tw, "ID\tPACKAGE\tSTATUS\tFAILED\tWHY")
	for _, f := range failed {
		if f.Entry == nil {
			fmt.Fprintf(tw, "%s\t(unreadable: %v)\t\t%s\t%s\n", f.ID, f.Err, f.FailedAt.UTC().Format(time.RFC3339), firstLine(f.Why))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s/%s\t%s\t%s\t%s\n", f.ID, f.Entry.Package, f.Entry.PackageVersion, f.Entry.Status,
			f.FailedAt.UTC().Format(time.RFC3339), firstLine(f.Why))
	}
	if len(failed) == 0 {
		fmt.Fprintln(tw, "(none)")
	} else if o.FailedTTL > 0 {
		fmt.Fprintf(tw, "(purged %s after they failed: --failed-ttl %d)\n", o.FailedTTL, int64(o.FailedTTL/time.Second))
	}
	return tw.Flush()
}

// resend queues the failed result o.Resend for the agent to send.
func resend(o *agent.Options, stdout io.Writer) error {
	if _, err := os.Stat(o.StateDir); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	e, err := journal.Resend(journal.FailedDir(o.StateDir), journal.ResendDir(o.StateDir), o.Resend)
	if err != nil {
		return fmt.Errorf("--resend: %w", err)
	}
	fmt.Fprintf(stdout, "queued %s (%s/%s, %s) for sending to %s: a running agent sends it within --poll-interval, otherwise the next one at start-up\n",
		e.ID, e.Package, e.PackageVersion, e.Status, e.URL)
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}
