package controllertest

import "github.com/build2/bbot-agent-go/manifest"

// InteractiveTask is a minimal task for package pkg on machine with the
// interactive breakpoint bp (as brep sends for an interactive CI tenant).
func InteractiveTask(pkg, machine, bp string) *manifest.Task {
	t := minimalTask(pkg, machine)
	t.Fields = append(t.Fields, manifest.NameValue{Name: "interactive", Value: bp})
	return t
}

// interactiveError is why a task request's interactive values are refused
// ("" if they are not): an agent asking for interactive builds must say
// how to log into its machines.
func interactiveError(tr manifest.TaskRequest) string {
	if (tr.InteractiveMode == "true" || tr.InteractiveMode == "both") && tr.InteractiveLogin == "" {
		return "interactive-mode " + tr.InteractiveMode + " without interactive-login"
	}
	return ""
}
