// Command tftpbench serves a directory read-only with the project's tftp
// package, for testdata/bench.sh and testdata/tftp-bench.sh.
package main

import (
	"flag"
	"log"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"

	"github.com/build2/bbot-agent-go/tftp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:16969", "listen address")
	root := flag.String("root", ".", "directory to serve")
	window := flag.Uint("window", 1, "sender anticipation window (1 = lock-step, 0 = auto)")
	pin := flag.Bool("pin-sender", false, "lock-step GETs with pin/tftp's sender (the agent's own loop otherwise)")
	profile := flag.String("cpuprofile", "", "write a CPU profile here until SIGTERM")
	flag.Parse()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			log.Fatal(err)
		}
		pprof.StartCPUProfile(f)
	}

	m, err := tftp.NewMapping(*root, "")
	if err != nil {
		log.Fatal(err)
	}
	srv := &tftp.Server{Anticipate: *window, PinSender: *pin}
	srv.SetHandler(m)
	conn, err := tftp.Listen(*addr)
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		pprof.StopCPUProfile()
		os.Exit(0)
	}()
	log.Fatal(srv.Serve(conn))
}
