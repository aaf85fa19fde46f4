package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/build2/bbot-agent-go/manifest"
)

// interactivePrompt is what the worker prints on its console at the
// breakpoint (the agent's tests wait for it).
const interactivePrompt = "bbot-guest: interactive: at the breakpoint; type 'continue' to finish the build"

// interactive plays an interactive build stopping at its breakpoint: it
// tells the agent (a PUT of "interactive" naming the step), prompts on the
// serial console (stdin and stdout of /init) and, once a person types
// "continue" there, uploads a success result. Anything else typed is
// echoed and ignored; without input it waits until the agent ends it.
func (g *guest) interactive(task *manifest.Task, breakpoint string) error {
	logf("build: interactive: breakpoint %s reached in step update", breakpoint)
	if err := g.put("interactive", strings.NewReader("breakpoint "+breakpoint+" reached in step update\n")); err != nil {
		return fmt.Errorf("PUT interactive: %w", err)
	}
	fmt.Println(interactivePrompt)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "continue" {
			break
		}
		logf("interactive: %q ignored: type 'continue'", line)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the console: %w", err)
	}
	logf("build: interactive: continuing")
	res := manifest.Result{Name: task.Name(), Version: task.Version(), Status: "success",
		Operations: []manifest.OperationResult{{Operation: "update", Status: "success", Log: "continued from the console at breakpoint " + breakpoint + "\n"}}}
	if err := g.putManifest("manifest", res.Pairs()); err != nil {
		return fmt.Errorf("PUT manifest: %w", err)
	}
	logf("build: result %s uploaded", res.Status)
	return nil
}
