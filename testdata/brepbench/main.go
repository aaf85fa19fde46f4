// Command brepbench runs the strict test controller (agent/controllertest)
// as a process of its own, for testdata/bench.sh: it queues one task per
// -task for -machine, prints its task URL, and exits once that many
// results were accepted (printing "<package> <status>" for each), or after
// -timeout.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/build2/bbot-agent-go/agent/controllertest"
)

func main() {
	machine := flag.String("machine", "x86_64-linux_test-busybox", "machine the tasks name")
	tasks := flag.Int("tasks", 1, "tasks to queue")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after")
	urlFile := flag.String("url-file", "", "write the task URL here")
	flag.Parse()
	srv := controllertest.New()
	defer srv.Close()
	for i := range *tasks {
		srv.QueueTask(fmt.Sprintf("bench%d", i), *machine)
	}
	if *urlFile != "" {
		if err := os.WriteFile(*urlFile, []byte(srv.TaskURL()+"\n"), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	rs := srv.WaitResults(*tasks, *timeout)
	for _, r := range rs {
		fmt.Println(r.Request.Result.Name, r.Request.Result.Status)
	}
	if len(rs) < *tasks {
		fmt.Fprintf(os.Stderr, "brepbench: %d of %d results within %s; errors: %v\n", len(rs), *tasks, *timeout, srv.Errors())
		os.Exit(1)
	}
}
