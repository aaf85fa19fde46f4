package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/build2/bbot-agent-go/agent"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/tftp"
)

// newAgent wires the agent from the options: TFTP server, accelerator
// choice, bootstrapper, controller client and result outbox.
func newAgent(o *agent.Options, log *slog.Logger) (*agent.Agent, func(), error) {
	for _, d := range []string{o.StateDir, o.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	a := &agent.Agent{Opts: o, Log: log, Version: mustAgentVersion()}
	a.Name, _ = os.Hostname()
	if o.AuthKey != "" {
		key, err := agent.LoadKey(o.AuthKey)
		if err != nil {
			return nil, nil, &agent.OptionError{Option: "auth-key", Value: o.AuthKey, Reason: err.Error()}
		}
		a.Key = key
		if a.Fingerprint, err = agent.Fingerprint(&key.PublicKey); err != nil {
			return nil, nil, err
		}
	}

	vms := &agent.VMs{Opts: o, Log: log, Accel: &machine.Accel{Requested: o.Accel, StateFile: filepath.Join(o.StateDir, "accel"), Log: log}}
	port := strconv.Itoa(o.TFTPPort + o.ToolchainNum)
	bind := o.TFTPAddress
	switch o.Network {
	case "user":
		if bind == "" {
			bind = "127.0.0.1"
		}
		vms.TFTPEndpoint = "10.0.2.2:" + port // QEMU user networking's host
	case "bridge":
		b, guest, gw, err := agent.BridgeAddresses(o.Bridge, o.ToolchainNum)
		if err != nil && !o.FakeBootstrap {
			return nil, nil, fmt.Errorf("--bridge %s: %w (use --network user without a bridge)", o.Bridge, err)
		}
		if bind == "" {
			bind = b
		}
		if bind == "" {
			bind = "127.0.0.1" // no bridge, and only fake bootstraps: nobody connects
		}
		vms.TFTPEndpoint, vms.GuestIP, vms.GatewayIP = net.JoinHostPort(bind, port), guest, gw
	}
	conn, err := tftp.Listen(net.JoinHostPort(bind, port))
	if err != nil {
		return nil, nil, fmt.Errorf("TFTP: %w", err)
	}
	srv := &tftp.Server{ErrorLog: log}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(conn) }()
	vms.TFTP = srv
	a.VMs = vms
	cleanup := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
	}

	var boot agent.Bootstrapper = vms
	if o.FakeBootstrap {
		boot = agent.FakeBootstrapper{}
	}
	a.Enumerator = &agent.Enumerator{Root: o.Machines, ToolchainName: o.ToolchainName, ToolchainID: o.ToolchainID,
		AgentVersion: a.Version, Bootstrapper: boot, Log: log}

	httpClient := &http.Client{
		Timeout: o.RequestTimeout,
		Transport: &http.Transport{
			Proxy:       http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{Timeout: o.ConnectTimeout}).DialContext,
		},
	}
	a.Client = &agent.Client{Controllers: o.Controllers, HTTP: httpClient, Retries: o.RequestRetries, Log: log,
		Min: time.Second, Max: 60 * time.Second, Rand: newRand()}
	a.Outbox = &agent.Outbox{Dir: o.StateDir, TTL: o.ResultTTL, Client: httpClient, Log: log, Min: time.Second, Max: 5 * time.Minute}
	return a, cleanup, nil
}

// realTask runs --fake-request in a real VM and prints the result.
func realTask(ctx context.Context, o *agent.Options, stdout io.Writer, log *slog.Logger) error {
	task, err := readTask(o)
	if err != nil {
		return &exitError{1, err}
	}
	a, cleanup, err := newAgent(o, log)
	if err != nil {
		return &exitError{1, err}
	}
	defer cleanup()
	res, err := a.RunTask(ctx, task)
	if err != nil {
		return &exitError{1, err}
	}
	return res.Serialize(stdout)
}

// daemon polls the controllers until SIGTERM/SIGINT; SIGHUP rescans.
func daemon(ctx context.Context, o *agent.Options, log *slog.Logger) error {
	a, cleanup, err := newAgent(o, log)
	if err != nil {
		return &exitError{1, err}
	}
	defer cleanup()
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
	notify := newNotifier(log)
	a.Ready = func() { notify.send("READY=1") }
	a.Status = func(s string) { notify.send("STATUS=" + s) }
	log.Info("bbot-agent started", "version", agent.Version, "toolchain", o.ToolchainName, "controllers", len(o.Controllers), "tftp", a.VMs.TFTPEndpoint)
	err = a.Run(ctx)
	notify.send("STOPPING=1")
	if err != nil && !errors.Is(err, context.Canceled) {
		return &exitError{1, err}
	}
	log.Info("bbot-agent stopped")
	return nil
}

func newRand() *mathrand.Rand {
	return mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
}
