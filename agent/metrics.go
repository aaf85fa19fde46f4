package agent

import (
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/agent/metrics"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// EnableMetrics makes the agent record its metrics (--metrics, the daemon
// only) and returns them for the caller to serve. Call it before Run: it
// installs the hooks of the controller client, the enumerator and every
// slot's TFTP servers. The gauges computed from the agent's state are
// exported once Run has started (before, a scrape has the counters only).
func (a *Agent) EnableMetrics() *metrics.Metrics {
	urls := make([]string, 0, len(a.Opts.Controllers))
	for _, c := range a.Opts.Controllers {
		urls = append(urls, c.URL)
	}
	activities := make([]string, 0, len(Activities))
	for _, act := range Activities {
		activities = append(activities, string(act))
	}
	m := metrics.New(metrics.Config{
		Version: Version, Statuses: manifest.ResultStatuses,
		Controllers: urls, ControllerErrorKinds: controller.ErrorKinds,
		JournalStates: []string{string(journal.Received), string(journal.Held), string(journal.Sendable)},
		Activities:    activities,
	})
	a.Metrics = m
	a.Client.OnPoll, a.Client.OnError = m.Poll, m.ControllerError
	a.Enumerator.OnBootstrap = m.Bootstrap
	onTransfer := func(op tftp.Op, n int64, err error) {
		dir := "get"
		if op == tftp.Put {
			dir = "put"
		}
		m.TFTP(dir, n, err == nil)
	}
	for _, s := range a.slots {
		s.vms.onTransfer = onTransfer
	}
	// Run installs the state gauges' source once State may be read.
	return m
}

// metricsSnapshot is the state the scrape-time gauges show: the slots,
// backoffs and this process's journals, read from disk (entries adopted
// from other instances included).
func (a *Agent) metricsSnapshot() metrics.Snapshot {
	st := a.State()
	snap := metrics.Snapshot{Now: time.Now(), BackoffUntil: st.BackoffUntil, Draining: st.Draining,
		Withheld: len(st.Withheld), Journal: make(map[string]int, 3)}
	snap.Slots = make([]metrics.Slot, 0, len(st.Slots))
	for _, s := range st.Slots {
		snap.Slots = append(snap.Slots, metrics.Slot{Instance: s.Instance, Activity: string(s.Activity),
			Held: s.Activity == ActivityHeld, Since: s.Since})
	}
	for _, s := range a.slots {
		dir := journal.Dir(a.Opts.StateDir, s.plan.JournalInstance)
		counts, err := journal.CountStates(dir)
		if err != nil {
			// Said at debug level: scrapes come every few seconds.
			a.Log.Debug("metrics: reading the journal", "dir", dir, "error", err)
		}
		for state, n := range counts {
			snap.Journal[string(state)] += n
		}
	}
	failed := journal.FailedDir(a.Opts.StateDir)
	n, err := journal.CountFailed(failed)
	if err != nil {
		a.Log.Debug("metrics: reading failed results", "dir", failed, "error", err)
	}
	snap.Failed = n
	free, low := a.freeSpace()
	snap.FreeSpace, snap.LowSpace = free, low != ""
	return snap
}

// reportedStatus is the status a task's result tells the controller: the
// entry's, or interrupt when the journal failed (posted from memory).
func reportedStatus(e *journal.Entry) string {
	if e == nil {
		return "interrupt"
	}
	return e.Status
}

// observePhases records a task's phases up to its persisted result (the
// POST is recorded once answered).
func (a *Agent) observePhases(tt *taskTimings) {
	m := a.Metrics
	if m == nil {
		return
	}
	between := func(phase string, from, to time.Time) {
		if !from.IsZero() && !to.IsZero() {
			m.Phase(phase, to.Sub(from))
		}
	}
	between(metrics.PhaseStart, tt.Received, tt.QEMUStarted)
	if tt.Snapshot > 0 {
		m.Phase(metrics.PhaseSnapshot, tt.Snapshot)
	}
	between(metrics.PhaseBoot, tt.QEMUStarted, tt.FirstRequest)
	between(metrics.PhaseBuild, tt.FirstRequest, tt.Uploaded)
	between(metrics.PhasePersist, tt.Uploaded, tt.Persisted)
}
