package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/build2/bbot-agent-go/agent"
)

// realTask runs --fake-request in a real VM (with --fake-machine, in
// none: served over TFTP for whoever plays the worker) and prints the
// result.
func realTask(ctx context.Context, o *agent.Options, stdout io.Writer, log *slog.Logger) error {
	task, err := readTask(o)
	if err != nil {
		return err
	}
	a, err := newAgent(o, log)
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.RunTask(ctx, task)
	if err != nil {
		return err
	}
	return res.Serialize(stdout)
}

// serveMetrics serves the daemon's metrics on addr (--metrics) until stop.
// An address that cannot be bound is a configuration error, said at once.
func serveMetrics(a *agent.Agent, addr string, log *slog.Logger) (stop func(), err error) {
	srv, err := a.EnableMetrics().Listen(addr)
	if err != nil {
		return nil, &agent.OptionError{Option: "metrics", Value: addr, Reason: err.Error()}
	}
	log.Info("serving metrics", "url", "http://"+srv.Addr()+"/metrics")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Close(ctx)
	}, nil
}

// daemon polls the controllers until SIGTERM/SIGINT; SIGHUP rescans.
// With --dump-task or --dump-result it handles one task, prints it and
// exits. With --fake-machine it offers that machine alone and serves its
// tasks over TFTP with no VM (bbot's worker-development mode).
func daemon(ctx context.Context, o *agent.Options, stdout io.Writer, log *slog.Logger) error {
	a, err := newAgent(o, log)
	if err != nil {
		return err
	}
	defer a.Close()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	rescan := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case rescan <- struct{}{}:
			default:
			}
		}
	}()
	a.Rescan = rescan
	// SIGUSR1: drain (finish running tasks, take no new ones, exit 0).
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	defer signal.Stop(usr1)
	go func() {
		for range usr1 {
			a.Drain()
		}
	}()
	notify := newNotifier(log)
	a.Ready = func() { notify.send("READY=1") }
	a.Status = func(s string) { notify.send("STATUS=" + s) }
	if d := watchdogInterval(); d > 0 {
		a.WatchdogInterval = d
		a.Watchdog = func() { notify.send("WATCHDOG=1") }
	}
	if o.DumpTask || o.DumpResult {
		resp, machines, err := a.Next(ctx)
		if err != nil {
			return err
		}
		if o.DumpTask {
			return a.WorkerTaskFor(resp, machines).Serialize(stdout)
		}
		res, err := a.Handle(ctx, resp, machines)
		if err != nil {
			return err
		}
		return res.Serialize(stdout)
	}
	if o.Metrics != "" {
		stop, err := serveMetrics(a, o.Metrics, log)
		if err != nil {
			return &agent.ConfigError{Err: err} // the address is taken or not ours
		}
		defer stop()
	}
	err = a.Run(ctx)
	notify.send("STOPPING=1")
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	log.Log(context.Background(), agent.LevelNotice, "bbot-agent stopped")
	return nil
}
