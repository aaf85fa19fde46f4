package controllertest_test

import (
	"bytes"
	"net/http"
	"testing"

	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/manifest"
)

// TestInteractiveRequestStrict: the strict controller refuses (400) a task
// request asking for interactive builds without saying how to log in, and
// hands an interactive task, breakpoint included, to one that does.
func TestInteractiveRequestStrict(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.Queue(controllertest.InteractiveTask("libhello", "m", "error"))
	for _, c := range []struct {
		mode, login string
		status      int
	}{
		{"true", "", http.StatusBadRequest},
		{"both", "", http.StatusBadRequest},
		{"true", "socat - UNIX-CONNECT:/run/x/1/console.sock", http.StatusOK},
	} {
		req := manifest.TaskRequest{Agent: "a", ToolchainName: "default", ToolchainVersion: mustVersion(t, "0.17.0"),
			InteractiveMode: c.mode, InteractiveLogin: c.login, Machines: []manifest.MachineHeader{{ID: "1", Name: "m", Summary: "s"}}}
		var b bytes.Buffer
		if err := req.Serialize(&b); err != nil {
			t.Fatal(err)
		}
		resp, err := http.Post(srv.TaskURL(), "text/manifest", &b)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != c.status {
			t.Errorf("mode %s, login %q: status %d, want %d", c.mode, c.login, resp.StatusCode, c.status)
			continue
		}
		if c.status != http.StatusOK {
			continue
		}
		tr, err := manifest.ParseTaskResponse(resp.Body, "response")
		if err != nil || tr.Task == nil || tr.Task.Interactive() != "error" {
			t.Errorf("response %+v, %v: want the interactive task", tr, err)
		}
	}
}
