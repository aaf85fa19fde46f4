package bbotagent

import (
	"os/exec"
	"strings"
	"testing"
)

// TestPackageBoundaries enforces the layout rules: manifest stays a pure
// text package, btrfs and tftp know nothing of the agent, the agent's
// sub-packages know nothing of the daemon (nor controller of inventory, or
// the other way), only agent/metrics imports Prometheus, and only
// cmd/bbot-agent wires everything together.
func TestPackageBoundaries(t *testing.T) {
	const mod = "github.com/build2/bbot-agent-go/"
	banned := map[string][]string{
		"manifest": {"os", "os/exec", "net", "net/http", mod + "agent", mod + "machine", mod + "tftp", mod + "btrfs"},
		"btrfs":    {mod + "agent", mod + "machine", mod + "tftp", mod + "manifest"},
		"tftp":     {mod + "agent", mod + "machine", mod + "btrfs", mod + "manifest"},
		"machine":  {mod + "agent"},
		"agent":    {mod + "cmd/bbot-agent"},

		"agent/controller":   {mod + "agent", mod + "agent/inventory", mod + "cmd/bbot-agent"},
		"agent/inventory":    {mod + "agent", mod + "agent/controller", mod + "cmd/bbot-agent"},
		"agent/internal/fsx": {mod + "agent", mod + "cmd/bbot-agent"},
		// Splitting upload.tar knows nothing of the journal or the agent.
		"agent/artifact": {mod + "agent", mod + "agent/journal", mod + "agent/controller", mod + "tftp", mod + "manifest", mod + "cmd/bbot-agent"},
		// The metrics know nothing of the agent: it calls them. Only they
		// import Prometheus (prom, below; the others not even directly).
		"agent/metrics": {mod + "agent", mod + "agent/controller", mod + "agent/inventory", mod + "agent/journal", mod + "tftp", mod + "cmd/bbot-agent"},
	}
	const prom = "github.com/prometheus/client_golang/prometheus"
	for _, pkg := range []string{"tftp", "btrfs", "manifest", "machine", "agent", "agent/controller", "agent/inventory", "agent/journal", "agent/artifact"} {
		banned[pkg] = append(banned[pkg], prom)
	}
	for pkg, bans := range banned {
		// Direct imports plus every dependency: "os" may come in through
		// fmt, but manifest must not import it itself.
		out, err := exec.Command("go", "list", "-f", "{{join .Imports \"\\n\"}}\n--\n{{join .Deps \"\\n\"}}", "./"+pkg).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "no Go files") || strings.Contains(string(out), "cannot find") || strings.Contains(string(out), "directory not found") {
				continue // package not written yet
			}
			t.Fatalf("go list %s: %v\n%s", pkg, err, out)
		}
		imports, all, _ := strings.Cut(string(out), "\n--\n")
		direct, deps := map[string]bool{}, map[string]bool{}
		for _, d := range strings.Fields(imports) {
			direct[d] = true
		}
		for _, d := range strings.Fields(all) {
			deps[d] = true
		}
		for _, b := range bans {
			if direct[b] || (strings.HasPrefix(b, mod) && deps[b]) {
				t.Errorf("package %s must not depend on %s", pkg, b)
			}
		}
	}
}
