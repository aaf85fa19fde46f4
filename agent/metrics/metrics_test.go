package metrics

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

const ctlURL = "https://ci.example.org/?build-task"

func testConfig() Config {
	return Config{
		Version:              "0.17.0",
		Statuses:             []string{"success", "warning", "error", "abort", "abnormal", "skip", "interrupt"},
		Controllers:          []string{ctlURL},
		ControllerErrorKinds: []string{"connect", "timeout", "http_5xx"},
		JournalStates:        []string{"received", "held", "sendable"},
		Activities:           []string{"idle", "bootstrapping", "building", "held", "stopping"},
	}
}

// scrape GETs /metrics from h, as Prometheus would, and parses the text.
func scrape(t testing.TB, h http.Handler) map[string]*dto.MetricFamily {
	t.Helper()
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("HTTP %d: %s", resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// value returns the sample of family name whose labels include want
// (label=value pairs): a counter's or gauge's value, a histogram's count.
func value(fams map[string]*dto.MetricFamily, name string, want ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
next:
	for _, m := range f.Metric {
		have := map[string]string{}
		for _, l := range m.Label {
			have[l.GetName()] = l.GetValue()
		}
		for i := 0; i+1 < len(want); i += 2 {
			if have[want[i]] != want[i+1] {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

func expect(t *testing.T, fams map[string]*dto.MetricFamily, want float64, name string, labels ...string) {
	t.Helper()
	got, ok := value(fams, name, labels...)
	if !ok {
		t.Errorf("%s%v: no such series", name, labels)
	} else if got != want {
		t.Errorf("%s%v = %v, want %v", name, labels, got, want)
	}
}

// TestRecordAndScrape: what is recorded is served, labels outside the
// known sets fold into "other", and the scrape-time gauges follow the
// snapshot.
func TestRecordAndScrape(t *testing.T) {
	m := New(testConfig())
	m.TaskOutcome("success")
	m.TaskOutcome("success")
	m.TaskOutcome("abnormal")
	m.TaskOutcome("made-up-by-a-worker")
	m.Phase(PhaseBuild, 90*time.Second)
	m.Phase(PhaseSnapshot, 20*time.Millisecond)
	m.Phase(PhaseBoot, -time.Second) // not a duration: dropped
	m.Phase("no-such-phase", time.Second)
	m.ControllerError(ctlURL, "timeout")
	m.ControllerError("https://not-configured.example.org/", "weird")
	m.Poll(ctlURL, "none")
	m.Poll(ctlURL, "task")
	m.Bootstrap("success")
	m.Bootstrap("held")
	m.TFTP("get", 3000, true)
	m.TFTP("put", 16, true)
	m.TFTP("put", 100, false)
	m.TFTP("get", 0, false)

	now := time.Now()
	m.SetState(func() Snapshot {
		return Snapshot{
			Now: now,
			Slots: []Slot{{Instance: 1, Activity: "building", Since: now.Add(-time.Minute)},
				{Instance: 2, Activity: "held", Held: true, Since: now.Add(-90 * time.Second)},
				{Instance: 3, Activity: "idle", Since: now}},
			BackoffUntil: now.Add(30 * time.Second),
			Withheld:     2,
			Journal:      map[string]int{"held": 1, "sendable": 3},
			Failed:       4,
		}
	})
	f := scrape(t, m.Handler())

	expect(t, f, 2, "bbot_agent_tasks_total", "outcome", "success")
	expect(t, f, 1, "bbot_agent_tasks_total", "outcome", "abnormal")
	expect(t, f, 1, "bbot_agent_tasks_total", "outcome", "other")
	expect(t, f, 0, "bbot_agent_tasks_total", "outcome", "interrupt")
	expect(t, f, 1, "bbot_agent_task_phase_seconds", "phase", "build")
	expect(t, f, 1, "bbot_agent_task_phase_seconds", "phase", "snapshot")
	expect(t, f, 0, "bbot_agent_task_phase_seconds", "phase", "boot")
	expect(t, f, 1, "bbot_agent_controller_errors_total", "url", ctlURL, "kind", "timeout")
	expect(t, f, 1, "bbot_agent_controller_errors_total", "url", "other", "kind", "other")
	expect(t, f, 1, "bbot_agent_polls_total", "url", ctlURL, "answer", "none")
	expect(t, f, 1, "bbot_agent_polls_total", "url", ctlURL, "answer", "task")
	expect(t, f, 0, "bbot_agent_polls_total", "url", ctlURL, "answer", "error")
	expect(t, f, 1, "bbot_agent_bootstraps_total", "outcome", "success")
	expect(t, f, 1, "bbot_agent_bootstraps_total", "outcome", "held")
	expect(t, f, 0, "bbot_agent_bootstraps_total", "outcome", "failure")
	expect(t, f, 3000, "bbot_agent_tftp_bytes_total", "direction", "get")
	expect(t, f, 116, "bbot_agent_tftp_bytes_total", "direction", "put")
	expect(t, f, 1, "bbot_agent_tftp_transfers_total", "direction", "get", "result", "ok")
	expect(t, f, 1, "bbot_agent_tftp_transfers_total", "direction", "get", "result", "failed")
	expect(t, f, 1, "bbot_agent_tftp_transfers_total", "direction", "put", "result", "failed")
	expect(t, f, 1, "bbot_agent_build_info", "version", "0.17.0")

	expect(t, f, 1, "bbot_agent_slots", "activity", "building")
	expect(t, f, 1, "bbot_agent_slots", "activity", "held")
	expect(t, f, 1, "bbot_agent_slots", "activity", "idle")
	expect(t, f, 0, "bbot_agent_slots", "activity", "bootstrapping")
	expect(t, f, 1, "bbot_agent_held_machines")
	expect(t, f, 90, "bbot_agent_held_seconds", "instance", "2")
	if _, ok := value(f, "bbot_agent_held_seconds", "instance", "1"); ok {
		t.Error("held_seconds for a slot that holds nothing")
	}
	expect(t, f, 1, "bbot_agent_backoff_active")
	expect(t, f, 30, "bbot_agent_backoff_remaining_seconds")
	expect(t, f, 0, "bbot_agent_draining")
	expect(t, f, 2, "bbot_agent_withheld_machines")
	expect(t, f, 0, "bbot_agent_journal_entries", "state", "received")
	expect(t, f, 1, "bbot_agent_journal_entries", "state", "held")
	expect(t, f, 3, "bbot_agent_journal_entries", "state", "sendable")
	expect(t, f, 4, "bbot_agent_failed_results")

	// The 90 s build lands in the 120 s bucket, not the 60 s one.
	for _, b := range f["bbot_agent_task_phase_seconds"].Metric {
		if b.Label[0].GetValue() != "build" {
			continue
		}
		for _, bk := range b.Histogram.Bucket {
			want := uint64(0)
			if bk.GetUpperBound() >= 90 {
				want = 1
			}
			if bk.GetCumulativeCount() != want {
				t.Errorf("build bucket le=%v: %d, want %d", bk.GetUpperBound(), bk.GetCumulativeCount(), want)
			}
		}
	}
	// The runtime and process collectors are on the private registry.
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes"} {
		if f[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
}

// TestPrivateRegistry: what others put on the default registry stays off
// the agent's /metrics.
func TestPrivateRegistry(t *testing.T) {
	leak := prometheus.NewCounter(prometheus.CounterOpts{Name: "leak_test_total", Help: "h"})
	prometheus.MustRegister(leak)
	defer prometheus.Unregister(leak)
	leak.Inc()
	if f := scrape(t, New(testConfig()).Handler()); f["leak_test_total"] != nil {
		t.Error("a metric of the default registry is served")
	}
}

// TestBeforeState: the known counter series exist at 0 from the start;
// the scrape-time gauges wait for a state function.
func TestBeforeState(t *testing.T) {
	m := New(testConfig())
	f := scrape(t, m.Handler())
	expect(t, f, 0, "bbot_agent_tasks_total", "outcome", "success")
	expect(t, f, 0, "bbot_agent_tftp_bytes_total", "direction", "put")
	expect(t, f, 0, "bbot_agent_controller_errors_total", "url", ctlURL, "kind", "http_5xx")
	expect(t, f, 0, "bbot_agent_polls_total", "url", ctlURL, "answer", "none")
	if f["bbot_agent_slots"] != nil || f["bbot_agent_journal_entries"] != nil {
		t.Error("state gauges exported without a state function")
	}
	m.SetState(func() Snapshot { return Snapshot{} })
	f = scrape(t, m.Handler())
	expect(t, f, 0, "bbot_agent_slots", "activity", "idle")
	expect(t, f, 0, "bbot_agent_backoff_active")
	expect(t, f, 0, "bbot_agent_backoff_remaining_seconds")
	expect(t, f, 0, "bbot_agent_held_machines")
	m.SetState(nil)
	if f = scrape(t, m.Handler()); f["bbot_agent_slots"] != nil {
		t.Error("state gauges exported after SetState(nil)")
	}
}

// TestNil: a nil *Metrics (--metrics off) records nothing and does not
// panic.
func TestNil(t *testing.T) {
	var m *Metrics
	m.TaskOutcome("success")
	m.Phase(PhaseBuild, time.Second)
	m.ControllerError(ctlURL, "connect")
	m.Poll(ctlURL, "none")
	m.Bootstrap("success")
	m.TFTP("get", 1, true)
	m.SetState(func() Snapshot { return Snapshot{} })
}

// BenchmarkScrape is one scrape of a daemon's metrics with a few slots, so
// that a change that makes scrapes costly shows (see -benchmem).
func BenchmarkScrape(b *testing.B) {
	m := New(testConfig())
	m.SetState(func() Snapshot {
		return Snapshot{Slots: []Slot{{Instance: 1, Activity: "building"}, {Instance: 2, Activity: "idle"}}}
	})
	h := m.Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code)
		}
	}
}

// TestListen: the listener serves /metrics only, and a busy address fails
// at once.
func TestListen(t *testing.T) {
	m := New(testConfig())
	s, err := m.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "bbot_agent_build_info") {
		t.Errorf("/metrics: HTTP %d\n%s", resp.StatusCode, body)
	}
	if resp, err := http.Get("http://" + s.Addr() + "/"); err != nil || resp.StatusCode != 404 {
		t.Errorf("/: %v, %v; want 404", resp, err)
	} else {
		resp.Body.Close()
	}
	if _, err := m.Listen(s.Addr()); err == nil {
		t.Error("a second Listen on the same address succeeded")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + s.Addr() + "/metrics"); err == nil {
		t.Error("still serving after Close")
	}
}
