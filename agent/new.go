package agent

import (
	"context"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// New builds the agent from the options: TFTP server, accelerator choice,
// bootstrapper, controller client and result outbox. The returned function
// stops the TFTP server.
func New(o *Options, log *slog.Logger) (*Agent, func(), error) {
	for _, d := range []string{o.StateDir, o.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, nil, err
		}
	}
	a := &Agent{Opts: o, Log: log, Version: agentVersion()}
	a.Name, _ = os.Hostname()
	if o.AuthKey != "" {
		key, err := LoadKey(o.AuthKey)
		if err != nil {
			return nil, nil, &OptionError{Option: "auth-key", Value: o.AuthKey, Reason: err.Error()}
		}
		a.Key = key
		if a.Fingerprint, err = Fingerprint(&key.PublicKey); err != nil {
			return nil, nil, err
		}
	}

	vms := &VMs{Opts: o, Log: log, Accel: &machine.Accel{Requested: o.Accel, StateFile: filepath.Join(o.StateDir, "accel"), Log: log}}
	port := strconv.Itoa(o.TFTPPort + o.ToolchainNum)
	bind := o.TFTPAddress
	switch o.Network {
	case "user":
		if bind == "" {
			bind = "127.0.0.1"
		}
		vms.TFTPEndpoint = "10.0.2.2:" + port // QEMU user networking's host
	case "bridge":
		b, guest, gw, err := BridgeAddresses(o.Bridge, o.ToolchainNum)
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

	var boot Bootstrapper = vms
	if o.FakeBootstrap {
		boot = FakeBootstrapper{}
	}
	a.Enumerator = &Enumerator{Root: o.Machines, ToolchainName: o.ToolchainName, ToolchainID: o.ToolchainID,
		AgentVersion: a.Version, Bootstrapper: boot, Log: log}

	httpClient := &http.Client{
		Timeout: o.RequestTimeout,
		Transport: &http.Transport{
			Proxy:       http.ProxyFromEnvironment,
			DialContext: (&net.Dialer{Timeout: o.ConnectTimeout}).DialContext,
		},
	}
	a.Client = &Client{Controllers: o.Controllers, HTTP: httpClient, Retries: o.RequestRetries, Log: log,
		Min: time.Second, Max: 60 * time.Second, Rand: newRand()}
	a.Outbox = &Outbox{Dir: o.StateDir, TTL: o.ResultTTL, Client: httpClient, Log: log, Min: time.Second, Max: 5 * time.Minute}
	return a, cleanup, nil
}

func agentVersion() manifest.StandardVersion {
	v, err := manifest.ParseStandardVersion(Version)
	if err != nil {
		panic(err)
	}
	return v
}

func newRand() *mathrand.Rand {
	return mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), uint64(os.Getpid())))
}
