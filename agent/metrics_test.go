package agent

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
)

func TestValidateMetrics(t *testing.T) {
	for addr, ok := range map[string]bool{
		"": true, "127.0.0.1:9464": true, ":9464": true, "[::1]:9464": true, "localhost:0": true,
		"9464": false, "127.0.0.1": false, "::1:9464": false, "127.0.0.1:http": false, "127.0.0.1:65536": false,
		// No slot has a TCP port (VNC is a unix socket): the ports that
		// were VNC's are free for the metrics.
		"127.0.0.1:5901": true, "127.0.0.1:6002": true,
	} {
		o := validOptions()
		o.ToolchainNum, o.Instance, o.Slots = 2, 2, 3
		o.Metrics = addr
		err := o.Validate()
		if (err == nil) != ok {
			t.Errorf("--metrics %q: got %v, want ok=%v", addr, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--metrics ") {
			t.Errorf("--metrics %q: error does not name the option: %v", addr, err)
		}
	}
}

// scrapeMetrics GETs the agent's /metrics and parses the text format.
func scrapeMetrics(t testing.TB, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: HTTP %d", url, resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// sample is the series of name whose labels include labels (pairs), or
// nil.
func sample(fams map[string]*dto.MetricFamily, name string, labels ...string) *dto.Metric {
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				found = found || l.GetName() == labels[i] && l.GetValue() == labels[i+1]
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

// metricValue is a counter's or gauge's value, a histogram's count (-1: no
// such series).
func metricValue(fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	m := sample(fams, name, labels...)
	switch {
	case m == nil:
		return -1
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return -1
}

// TestMetricsDuringTask: the daemon's /metrics, scraped over HTTP while a
// real task builds in a real VM and after its result is delivered, shows
// the slot building and the task's journal entry, then the outcome, one
// sample per phase, the TFTP traffic and an empty journal.
func TestMetricsDuringTask(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("slow", testMachine) // the guest sleeps 5 s before its result
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	a, err := New(&e.opts, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	a.Client.Min, a.Client.Max = 10*time.Millisecond, 50*time.Millisecond
	a.Sender.Min, a.Sender.Max = 10*time.Millisecond, 100*time.Millisecond
	ms, err := a.EnableMetrics().Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ms.Close(context.Background())
	url := "http://" + ms.Addr() + "/metrics"
	e.agent = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	e.stop = func() { once.Do(func() { e.stopAgent(cancel, done, a, a.Close) }) }
	t.Cleanup(e.shutdown)

	// During the build (the machine bootstraps first).
	var during map[string]*dto.MetricFamily
	for deadline := time.Now().Add(240 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		during = scrapeMetrics(t, url)
		if metricValue(during, "bbot_agent_slots", "activity", "building") == 1 {
			break
		}
		if len(srv.Results()) > 0 || time.Now().After(deadline) {
			t.Fatal("no scrape saw the slot building")
		}
	}
	for _, c := range []struct {
		want   float64
		name   string
		labels []string
	}{
		{0, "bbot_agent_slots", []string{"activity", "idle"}},
		{1, "bbot_agent_journal_entries", []string{"state", "received"}},
		{0, "bbot_agent_tasks_total", []string{"outcome", "success"}},
		{1, "bbot_agent_polls_total", []string{"url", srv.TaskURL(), "answer", "task"}},
		{1, "bbot_agent_bootstraps_total", []string{"outcome", "success"}},
		{0, "bbot_agent_held_machines", nil},
		{0, "bbot_agent_backoff_active", nil},
	} {
		if got := metricValue(during, c.name, c.labels...); got != c.want {
			t.Errorf("during the build: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	rs := srv.WaitResults(1, 120*time.Second)
	if len(rs) != 1 || rs[0].Request.Result.Status != "success" {
		t.Fatalf("results %+v", rs)
	}
	// The POST's phase is recorded once the agent has the answer, just
	// after the controller has the result; the slot is idle once the
	// teardown (in parallel with the POST) is done.
	var after map[string]*dto.MetricFamily
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		after = scrapeMetrics(t, url)
		if metricValue(after, "bbot_agent_task_phase_seconds", "phase", "post") == 1 &&
			metricValue(after, "bbot_agent_slots", "activity", "idle") == 1 || time.Now().After(deadline) {
			break
		}
	}
	for _, c := range []struct {
		want   float64
		name   string
		labels []string
	}{
		{1, "bbot_agent_tasks_total", []string{"outcome", "success"}},
		{0, "bbot_agent_tasks_total", []string{"outcome", "interrupt"}},
		{1, "bbot_agent_slots", []string{"activity", "idle"}},
		{0, "bbot_agent_slots", []string{"activity", "building"}},
		{0, "bbot_agent_journal_entries", []string{"state", "received"}},
		{0, "bbot_agent_journal_entries", []string{"state", "held"}},
		{0, "bbot_agent_journal_entries", []string{"state", "sendable"}},
		{0, "bbot_agent_failed_results", nil},
		{0, "bbot_agent_controller_errors_total", []string{"url", srv.TaskURL(), "kind", "connect"}},
		{1, "bbot_agent_build_info", []string{"version", Version}},
	} {
		if got := metricValue(after, c.name, c.labels...); got != c.want {
			t.Errorf("after delivery: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	phases := map[string]float64{}
	for _, p := range []string{"start", "snapshot", "boot", "build", "persist", "post"} {
		m := sample(after, "bbot_agent_task_phase_seconds", "phase", p)
		if m == nil || m.Histogram.GetSampleCount() != 1 {
			t.Errorf("phase %s: %v, want one sample", p, m)
			continue
		}
		phases[p] = m.Histogram.GetSampleSum()
	}
	t.Logf("phases (s): %v", phases)
	// The guest sleeps 5 s between its task GET and its result PUT; the
	// snapshot is part of the start.
	if phases["build"] < 5 {
		t.Errorf("build phase %.3fs, want at least the guest's 5 s", phases["build"])
	}
	if phases["snapshot"] > phases["start"] {
		t.Errorf("snapshot %.3fs longer than the start %.3fs it is part of", phases["snapshot"], phases["start"])
	}
	for _, dir := range []string{"get", "put"} {
		if got := metricValue(after, "bbot_agent_tftp_bytes_total", "direction", dir); got <= 0 {
			t.Errorf("tftp_bytes_total{direction=%q} = %v, want > 0", dir, got)
		}
		if got := metricValue(after, "bbot_agent_tftp_transfers_total", "direction", dir, "result", "ok"); got < 1 {
			t.Errorf("tftp_transfers_total{direction=%q,result=\"ok\"} = %v, want >= 1", dir, got)
		}
	}
}
