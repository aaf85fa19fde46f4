package agent

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/build2/bbot-agent-go/agent/journal"
)

// takeResends sends the results --resend queued: they move into the
// first slot's journal (the queue is free again at once) and are sent
// from there like any other. At start-up and every poll round.
func (a *Agent) takeResends(ctx context.Context) {
	dir := journal.ResendDir(a.Opts.StateDir)
	if _, err := os.Stat(dir); err != nil {
		return // nothing was ever queued
	}
	q, err := journal.Open(dir)
	if errors.Is(err, journal.ErrBusy) {
		return // --resend is writing: next round
	}
	if err != nil {
		a.Log.Error("opening the resend queue", "dir", dir, "error", err)
		return
	}
	ids, err := a.Journal.Adopt(q)
	q.Close()
	if err != nil {
		a.Log.Error("taking results queued by --resend", "error", err)
	}
	if len(ids) == 0 {
		return
	}
	// A --resend that crashed before emptying failed/ left a copy there:
	// the result is queued now, so that copy goes.
	failed := journal.FailedDir(a.Opts.StateDir)
	for _, id := range ids {
		for _, suffix := range []string{".req", ".why", ".json"} {
			os.Remove(filepath.Join(failed, id+suffix))
		}
	}
	entries, err := a.Journal.Entries()
	if err != nil {
		a.Log.Error("reading the task journal", "error", err)
	}
	for _, e := range entries {
		if slices.Contains(ids, e.ID) {
			a.Log.Info("sending a result again (--resend)", "entry", e.ID, "package", e.Package, "status", e.Status)
			a.Sender.Async(ctx, a.Journal, e, func(bool) {})
		}
	}
}

// failedPurgeInterval is how often failed/ is checked for results past
// --failed-ttl.
const failedPurgeInterval = time.Hour

// purgeFailed removes the results kept in failed/ longer than --failed-ttl
// (0: never), at most once per failedPurgeInterval.
func (a *Agent) purgeFailed(now time.Time) {
	if a.Opts.FailedTTL <= 0 || now.Sub(a.lastPurge) < failedPurgeInterval {
		return
	}
	a.lastPurge = now
	ids, err := journal.PurgeFailed(journal.FailedDir(a.Opts.StateDir), a.Opts.FailedTTL, now)
	if err != nil {
		a.Log.Error("purging failed results", "error", err)
	}
	for _, id := range ids {
		a.Log.Info("purged a failed result past --failed-ttl", "entry", id, "failed-ttl", a.Opts.FailedTTL)
	}
}
