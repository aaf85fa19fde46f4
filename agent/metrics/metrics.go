// Package metrics is the agent's Prometheus metrics (--metrics): counters and
// histograms the agent records as things happen, and gauges computed at
// scrape time from a snapshot the agent supplies. Everything lives on a
// private registry, so that nothing else in the process (a library using
// the default registry) leaks into /metrics.
//
// A nil *Metrics is valid and records nothing: the agent calls it
// unconditionally and --metrics off costs a nil check.
//
// Labels take values from fixed sets only (or the configured controllers'
// URLs): a value outside them is counted as "other", so that a worker or a
// controller cannot grow the series without bound.
package metrics

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "bbot_agent"

// Phases are the task phases timed (bbot_agent_task_phase_seconds).
var Phases = []string{
	PhaseStart, PhaseSnapshot, PhaseBoot, PhaseBuild, PhasePersist, PhasePost,
}

const (
	PhaseStart    = "start"    // task received -> QEMU started (lock, snapshot, TFTP, tap, exec)
	PhaseSnapshot = "snapshot" // taking the btrfs snapshot (part of start)
	PhaseBoot     = "boot"     // QEMU started -> the guest's first TFTP request
	PhaseBuild    = "build"    // first TFTP request -> result uploaded
	PhasePersist  = "persist"  // result uploaded -> result request in the journal
	PhasePost     = "post"     // result in the journal -> POST answered by the controller
)

// PhaseBuckets span a btrfs snapshot (milliseconds) to a build near the
// default --build-timeout (1.5 h) and beyond, in roughly 1-3-10 steps.
var PhaseBuckets = []float64{0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 5400, 7200, 10800}

// Bootstrap outcomes (bbot_agent_bootstraps_total).
var BootstrapOutcomes = []string{"success", "failure", "held", "host-fault", "interrupted"}

// Poll answers (bbot_agent_polls_total).
var PollAnswers = []string{"task", "none", "error"}

const other = "other"

// Config is what the metrics are made for.
type Config struct {
	Version string // bbot_agent_build_info{version}
	// Statuses are the task statuses a controller may be told; their
	// series exist from the start (at 0).
	Statuses []string
	// Controllers are the controllers' URLs, the url label's values, and
	// ControllerErrorKinds the kind label's.
	Controllers          []string
	ControllerErrorKinds []string
	// JournalStates are the journal entry states, exported even at 0.
	JournalStates []string
	// Activities are the slot activities, exported even at 0.
	Activities []string
}

// Metrics records the agent's metrics. Its methods are safe for concurrent
// use and do nothing on a nil *Metrics.
type Metrics struct {
	reg *prometheus.Registry

	tasks            *prometheus.CounterVec
	phases           *prometheus.HistogramVec
	controllerErrors *prometheus.CounterVec
	polls            *prometheus.CounterVec
	bootstraps       *prometheus.CounterVec
	tftpBytes        *prometheus.CounterVec
	tftpTransfers    *prometheus.CounterVec

	statuses, urls, kinds, outcomes, answers, phaseSet map[string]bool

	state *stateCollector
}

func set(values []string) map[string]bool {
	m := make(map[string]bool, len(values))
	for _, v := range values {
		m[v] = true
	}
	return m
}

// bounded returns v if it is one of known, else "other".
func bounded(known map[string]bool, v string) string {
	if known[v] {
		return v
	}
	return other
}

// New makes the metrics and registers them, with Go runtime and process
// collectors, on a registry of their own.
func New(c Config) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		tasks: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tasks_total",
			Help: "Tasks performed, by the status reported to the controller."}, []string{"outcome"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: namespace, Name: "task_phase_seconds",
			Help: "Duration of each phase of the tasks whose worker uploaded a result.", Buckets: PhaseBuckets}, []string{"phase"}),
		controllerErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "controller_errors_total",
			Help: "Failed task requests, by controller URL and kind of failure."}, []string{"url", "kind"}),
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "polls_total",
			Help: "Task requests sent, by controller URL and answer."}, []string{"url", "answer"}),
		bootstraps: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "bootstraps_total",
			Help: "Machine bootstraps, by outcome."}, []string{"outcome"}),
		tftpBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tftp_bytes_total",
			Help: "Bytes moved over TFTP, by direction (get: to the guest, put: from it)."}, []string{"direction"}),
		tftpTransfers: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: namespace, Name: "tftp_transfers_total",
			Help: "TFTP requests, by direction and result."}, []string{"direction", "result"}),
		statuses: set(c.Statuses),
		urls:     set(c.Controllers),
		kinds:    set(c.ControllerErrorKinds),
		outcomes: set(BootstrapOutcomes),
		answers:  set(PollAnswers),
		phaseSet: set(Phases),
	}
	m.state = newStateCollector(c)
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: namespace, Name: "build_info",
		Help: "Always 1; the version label is the bbot release the agent implements."}, []string{"version"})
	buildInfo.WithLabelValues(c.Version).Set(1)
	m.reg.MustRegister(m.tasks, m.phases, m.controllerErrors, m.polls, m.bootstraps, m.tftpBytes, m.tftpTransfers,
		buildInfo, m.state, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Every known series from the start, at 0: rate() and alerts then see
	// the first event as an increase, not as a series appearing.
	for _, s := range c.Statuses {
		m.tasks.WithLabelValues(s)
	}
	for _, p := range Phases {
		m.phases.WithLabelValues(p)
	}
	for _, u := range c.Controllers {
		for _, a := range PollAnswers {
			m.polls.WithLabelValues(u, a)
		}
		for _, k := range c.ControllerErrorKinds {
			m.controllerErrors.WithLabelValues(u, k)
		}
	}
	for _, o := range BootstrapOutcomes {
		m.bootstraps.WithLabelValues(o)
	}
	for _, d := range []string{"get", "put"} {
		m.tftpBytes.WithLabelValues(d)
		m.tftpTransfers.WithLabelValues(d, "ok")
		m.tftpTransfers.WithLabelValues(d, "failed")
	}
	return m
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		// Scrapes read the journals: a burst of them waits its turn
		// rather than piling up.
		MaxRequestsInFlight: 2,
		Timeout:             10 * time.Second,
	})
}

// Registry is the private registry (tests gather from it).
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// TaskOutcome counts a task by the status reported for it.
func (m *Metrics) TaskOutcome(status string) {
	if m == nil {
		return
	}
	m.tasks.WithLabelValues(bounded(m.statuses, status)).Inc()
}

// Phase records how long a task phase took (one of Phases). A negative
// duration (a clock step, or a phase that did not happen) is dropped.
func (m *Metrics) Phase(phase string, d time.Duration) {
	if m == nil || d < 0 || !m.phaseSet[phase] {
		return
	}
	m.phases.WithLabelValues(phase).Observe(d.Seconds())
}

// ControllerError counts a failed task request to a controller.
func (m *Metrics) ControllerError(url, kind string) {
	if m == nil {
		return
	}
	m.controllerErrors.WithLabelValues(bounded(m.urls, url), bounded(m.kinds, kind)).Inc()
}

// Poll counts a task request to a controller by its answer (PollAnswers).
func (m *Metrics) Poll(url, answer string) {
	if m == nil {
		return
	}
	m.polls.WithLabelValues(bounded(m.urls, url), bounded(m.answers, answer)).Inc()
}

// Bootstrap counts a bootstrap by its outcome (BootstrapOutcomes).
func (m *Metrics) Bootstrap(outcome string) {
	if m == nil {
		return
	}
	m.bootstraps.WithLabelValues(bounded(m.outcomes, outcome)).Inc()
}

// TFTP counts one TFTP request: direction "get" or "put", the bytes it
// moved (a failed one may have moved some), whether it completed.
func (m *Metrics) TFTP(direction string, bytes int64, ok bool) {
	if m == nil {
		return
	}
	if direction != "get" && direction != "put" {
		direction = other
	}
	result := "ok"
	if !ok {
		result = "failed"
	}
	if bytes > 0 {
		m.tftpBytes.WithLabelValues(direction).Add(float64(bytes))
	}
	m.tftpTransfers.WithLabelValues(direction, result).Inc()
}

// SetState installs the function that the scrape-time gauges read; until
// then (or with nil) they are not exported.
func (m *Metrics) SetState(f func() Snapshot) {
	if m == nil {
		return
	}
	if f == nil {
		m.state.f.Store(nil)
		return
	}
	m.state.f.Store(&f)
}

// Snapshot is the agent's state at a scrape.
type Snapshot struct {
	Now   time.Time
	Slots []Slot
	// BackoffUntil is the end of the host-wide backoff (zero: none).
	BackoffUntil time.Time
	Draining     bool
	Withheld     int // machines waiting out a machine-fault backoff
	// Journal counts this process's journal entries by state.
	Journal map[string]int
	Failed  int // results in <state-dir>/failed/
	// FreeSpace is the free space of the filesystems the agent writes
	// (machines, TFTP root, state dir) as last checked; LowSpace is set
	// while one is below the floor (--min-free).
	FreeSpace []FreeSpace
	LowSpace  bool
}

// FreeSpace is one filesystem's free space, named by a directory on it.
type FreeSpace struct {
	Path  string
	Bytes uint64
}

// Slot is one slot at a scrape.
type Slot struct {
	Instance int
	Activity string
	Held     bool      // holds a machine for inspection
	Since    time.Time // when the activity began
}

// stateCollector exports the gauges computed from a Snapshot.
type stateCollector struct {
	f             atomic.Pointer[func() Snapshot]
	activities    []string
	journalStates []string

	slots, held, heldSeconds, backoffActive, backoffRemaining, draining, withheld, journal, failed, freeSpace, lowSpace *prometheus.Desc
}

func newStateCollector(c Config) *stateCollector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &stateCollector{
		activities:       c.Activities,
		journalStates:    c.JournalStates,
		slots:            d("slots", "Slots by activity.", "activity"),
		held:             d("held_machines", "Machines held for inspection."),
		heldSeconds:      d("held_seconds", "How long each slot that holds a machine for inspection has held it.", "instance"),
		backoffActive:    d("backoff_active", "1 while the host-wide backoff after a host fault is in force, else 0."),
		backoffRemaining: d("backoff_remaining_seconds", "Time left of the host-wide backoff (0: none)."),
		draining:         d("draining", "1 while the agent drains (takes no new task), else 0."),
		withheld:         d("withheld_machines", "Machines withheld after a machine fault, waiting out their backoff."),
		journal:          d("journal_entries", "This process's task journal entries (results not yet delivered), by state.", "state"),
		failed:           d("failed_results", "Results that could not be delivered, kept in <state-dir>/failed/."),
		freeSpace:        d("free_space_bytes", "Free space of each filesystem the agent writes (machines, TFTP root, state dir), as last checked.", "path"),
		lowSpace:         d("low_space", "1 while a filesystem the agent writes has less free space than --min-free (no bootstrap or task starts), else 0."),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.slots, c.held, c.heldSeconds, c.backoffActive, c.backoffRemaining,
		c.draining, c.withheld, c.journal, c.failed, c.freeSpace, c.lowSpace} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	f := c.f.Load()
	if f == nil {
		return
	}
	s := (*f)()
	if s.Now.IsZero() {
		s.Now = time.Now()
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	flag := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, a := range c.activities {
		n := 0
		for _, sl := range s.Slots {
			if sl.Activity == a {
				n++
			}
		}
		gauge(c.slots, float64(n), a)
	}
	held := 0
	for _, sl := range s.Slots {
		if sl.Held {
			held++
			gauge(c.heldSeconds, max(s.Now.Sub(sl.Since).Seconds(), 0), strconv.Itoa(sl.Instance))
		}
	}
	gauge(c.held, float64(held))
	remaining := s.BackoffUntil.Sub(s.Now)
	gauge(c.backoffActive, flag(remaining > 0))
	gauge(c.backoffRemaining, max(remaining.Seconds(), 0))
	gauge(c.draining, flag(s.Draining))
	gauge(c.withheld, float64(s.Withheld))
	for _, st := range c.journalStates {
		gauge(c.journal, float64(s.Journal[st]), st)
	}
	gauge(c.failed, float64(s.Failed))
	for _, fs := range s.FreeSpace {
		gauge(c.freeSpace, float64(fs.Bytes), fs.Path)
	}
	gauge(c.lowSpace, flag(s.LowSpace))
}

// Server serves /metrics over HTTP (see Listen).
type Server struct {
	srv  *http.Server
	addr string
	done chan struct{}
}

// Listen binds addr (HOST:PORT) at once, so that a bad or busy address
// fails at start-up, and serves the metrics at /metrics until Close.
func (m *Metrics) Listen(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	s := &Server{
		srv: &http.Server{Handler: mux,
			// A scraper is a program on a short timer: a slow or idle
			// client must not hold a connection open.
			ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second,
			IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 16 << 10},
		addr: ln.Addr().String(),
		done: make(chan struct{}),
	}
	go func() {
		defer close(s.done)
		s.srv.Serve(ln) // returns at Close
	}()
	return s, nil
}

// Addr is the address served (the port chosen for port 0).
func (s *Server) Addr() string { return s.addr }

// Close stops serving: scrapes in progress get until ctx ends.
func (s *Server) Close(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	<-s.done
	return err
}
