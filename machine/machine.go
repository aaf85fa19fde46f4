package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// State is a machine's life-cycle state.
type State int

const (
	StateCreated State = iota
	StateBooting       // process started, QMP not yet connected
	StateRunning
	StatePaused
	StateStopping // power-off requested
	StateExited
)

func (s State) String() string {
	return [...]string{"created", "booting", "running", "paused", "stopping", "exited"}[s]
}

// Info tells an administrator how to reach a machine.
type Info struct {
	PID         int
	QMPSocket   string
	AdminSocket string // a free QMP socket for administrators
	ConsoleLog  string
	// ConsoleSocket serves the serial console (socat
	// -,raw,echo=0,escape=0x1d UNIX-CONNECT:<it>); VNC is the VNC
	// server's unix socket, "" if none.
	ConsoleSocket string
	VNC           string
	PIDFile       string
	Started       time.Time // when the QEMU process was started
}

// Machine is a running QEMU process. One goroutine owns the process: it
// waits for it and is the only one to set StateExited. Every method is
// safe to call more than once and after the machine has exited.
type Machine struct {
	cfg  Config
	log  *slog.Logger
	cmd  *exec.Cmd
	argv []string

	console *consoleLog
	mux     *consoleMux // the console's output fan-out and input
	exited  chan struct{}
	waitErr error // set before exited is closed

	started time.Time

	mu    sync.Mutex
	state State
	mon   *qmp.SocketMonitor
}

// CommandTimeout bounds every QMP command: go-qemu's Run has no deadline.
var CommandTimeout = 5 * time.Second

// ErrExited is returned by operations on a machine that has exited.
var ErrExited = errors.New("machine has exited")

// Start starts QEMU and connects to its QMP socket. ctx bounds the startup
// only; the machine lives until it exits or is shut down.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Machine, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	argv, err := cfg.Args()
	if err != nil {
		return nil, err
	}
	m := &Machine{cfg: cfg, log: log, argv: argv, exited: make(chan struct{})}

	// Each step registers its undo; a failed start undoes in reverse.
	var undo []func()
	fail := func(err error) (*Machine, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	if err := os.MkdirAll(cfg.RunDir, 0o700); err != nil {
		return fail(err)
	}
	for _, p := range []string{cfg.QMPSocket(), cfg.AdminSocket(), cfg.PIDFile()} {
		os.Remove(p) // leftovers of an earlier machine
	}
	undo = append(undo, func() { os.Remove(cfg.QMPSocket()); os.Remove(cfg.AdminSocket()); os.Remove(cfg.PIDFile()) })

	m.console, err = openConsoleLog(cfg.ConsolePath(), cfg.ConsoleLogMax)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, func() { m.console.Close() })

	// The console socket exists from the start, so that a person can
	// watch the boot. QEMU's stdin is a pipe: its clients' input.
	ln, err := listenConsole(cfg.ConsoleSocketPath(), cfg.RunDir)
	if err != nil {
		return fail(err)
	}
	// QEMU would unlink whatever is at the VNC socket's path: only a
	// stale socket goes.
	if p := cfg.VNCSocketPath(); p != "" {
		if err := RemoveSocket(p); err != nil {
			ln.Close()
			return fail(fmt.Errorf("VNC socket: %w", err))
		}
	}
	stdin, input, err := os.Pipe()
	if err != nil {
		ln.Close()
		return fail(err)
	}
	m.mux = newConsoleMux(m.console, input, ln, log, cfg.Name, nil)
	undo = append(undo, func() { m.mux.Close() })

	m.cmd = exec.Command(cfg.binary(), argv...)
	m.cmd.Dir = cfg.Dir
	m.cmd.Stdin = stdin
	m.cmd.Stdout = m.mux
	m.cmd.Stderr = m.mux
	// No parent-death signal: a machine held for inspection outlives the
	// agent, and the next one takes it over; any other is killed by the
	// next agent's recovery (the VM record and the pid file name it).
	// -runas would clear the signal anyway.
	log.Info("starting machine", "name", cfg.Name, "dir", cfg.Dir, "argv", CommandLine(append([]string{cfg.binary()}, argv...)))
	m.setState(StateBooting)
	err = m.cmd.Start()
	stdin.Close() // QEMU's now (or nobody's)
	if err != nil {
		return fail(fmt.Errorf("starting QEMU: %w", err))
	}
	m.started = time.Now()
	go m.run()
	undo = append(undo, func() { m.kill() })

	if err := m.connect(ctx); err != nil {
		return fail(err)
	}
	m.setState(StateRunning)
	return m, nil
}

// run is the owner goroutine: it reaps the process.
func (m *Machine) run() {
	err := m.cmd.Wait()
	m.mu.Lock()
	m.state = StateExited
	mon := m.mon
	m.mon = nil
	m.mu.Unlock()
	if mon != nil {
		mon.Disconnect()
	}
	// The output has ended (Wait waited for it): the clients get the rest,
	// then the socket goes.
	m.mux.Close()
	m.console.Close()
	os.Remove(m.cfg.QMPSocket())
	os.Remove(m.cfg.AdminSocket())
	if p := m.cfg.VNCSocketPath(); p != "" {
		RemoveSocket(p) // QEMU leaves it
	}
	os.Remove(m.cfg.PIDFile())
	m.waitErr = err
	close(m.exited)
	m.log.Info("machine exited", "name", m.cfg.Name, "status", m.cmd.ProcessState.String())
}

// connect dials the QMP socket until it answers, the process exits or ctx
// ends.
func (m *Machine) connect(ctx context.Context) error {
	for {
		mon, err := qmp.NewSocketMonitor("unix", m.cfg.QMPSocket(), time.Second)
		if err == nil {
			err = withTimeout(ctx, CommandTimeout, mon.Connect, func() { mon.Disconnect() })
			if err == nil {
				events, _ := mon.Events(context.Background())
				go m.drain(events)
				m.mu.Lock()
				m.mon = mon
				m.mu.Unlock()
				return nil
			}
		}
		select {
		case <-m.exited:
			return fmt.Errorf("QEMU exited during startup (%v); console log: %s", m.waitErr, m.consoleTail())
		case <-ctx.Done():
			return fmt.Errorf("QMP connect: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// drain reads QMP events: go-qemu blocks command replies behind unread
// events.
func (m *Machine) drain(events <-chan qmp.Event) {
	for e := range events {
		m.log.Debug("QMP event", "name", m.cfg.Name, "event", e.Event, "data", e.Data)
	}
}

// withTimeout runs f, giving up after d (or when ctx ends) and calling
// abandon so that f returns.
func withTimeout(ctx context.Context, d time.Duration, f func() error, abandon func()) error {
	done := make(chan error, 1)
	go func() { done <- f() }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
	case <-ctx.Done():
	}
	abandon()
	<-done
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("QMP: no answer within %s", d)
}

func (m *Machine) consoleTail() string {
	data, _ := os.ReadFile(m.cfg.ConsolePath())
	if len(data) > 512 {
		data = data[len(data)-512:]
	}
	return strings.TrimSpace(string(data))
}

func (m *Machine) setState(s State) {
	m.mu.Lock()
	if m.state != StateExited {
		m.state = s
	}
	m.mu.Unlock()
}

// State returns the machine's current state.
func (m *Machine) State() State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// Info returns where to find the machine.
func (m *Machine) Info() Info {
	pid := 0
	if m.cmd.Process != nil {
		pid = m.cmd.Process.Pid
	}
	return Info{PID: pid, QMPSocket: m.cfg.QMPSocket(), AdminSocket: m.cfg.AdminSocket(), ConsoleLog: m.cfg.ConsolePath(),
		ConsoleSocket: m.cfg.ConsoleSocketPath(), VNC: m.cfg.VNCSocketPath(), PIDFile: m.cfg.PIDFile(), Started: m.started}
}

// Exited is closed when the process has exited.
func (m *Machine) Exited() <-chan struct{} { return m.exited }

// Wait waits for the process to exit and returns its exit error (the same
// one to every caller), or ctx's error.
func (m *Machine) Wait(ctx context.Context) error {
	select {
	case <-m.exited:
		return m.waitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

// command runs one QMP command with a timeout and returns its "return".
func (m *Machine) command(ctx context.Context, execute string) (json.RawMessage, error) {
	m.mu.Lock()
	mon, state := m.mon, m.state
	m.mu.Unlock()
	if state == StateExited || mon == nil {
		return nil, ErrExited
	}
	var out []byte
	err := withTimeout(ctx, CommandTimeout, func() error {
		var err error
		out, err = mon.Run([]byte(`{"execute":"` + execute + `"}`))
		return err
	}, func() { mon.Disconnect() })
	if err != nil {
		select {
		case <-m.exited:
			return nil, ErrExited
		default:
		}
		return nil, fmt.Errorf("QMP %s: %w", execute, err)
	}
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("QMP %s: bad reply %q", execute, out)
	}
	return reply.Return, nil
}

// Status returns QEMU's run state ("running", "paused", "shutdown", ...).
func (m *Machine) Status(ctx context.Context) (string, error) {
	out, err := m.command(ctx, "query-status")
	if err != nil {
		return "", err
	}
	var st struct {
		Status string `json:"status"`
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// Suspend pauses the virtual CPUs (QMP stop); the machine stays for
// inspection.
func (m *Machine) Suspend(ctx context.Context) error {
	if _, err := m.command(ctx, "stop"); err != nil {
		return err
	}
	m.setState(StatePaused)
	return nil
}

// Resume continues a suspended machine (QMP cont).
func (m *Machine) Resume(ctx context.Context) error {
	if _, err := m.command(ctx, "cont"); err != nil {
		return err
	}
	m.setState(StateRunning)
	return nil
}

// ErrForcedDown is returned by Shutdown when the guest did not power off
// on the button and had to be forced down (a bootstrap is then not
// published: the guest may not have finished writing its disk).
var ErrForcedDown = errors.New("machine had to be forced down")

// Shutdown presses the ACPI power button and waits up to grace for the
// guest to power off, then forces the machine down (ErrForcedDown).
func (m *Machine) Shutdown(ctx context.Context, grace time.Duration) error {
	select {
	case <-m.exited:
		return nil
	default:
	}
	if _, err := m.command(ctx, "system_powerdown"); err == nil {
		m.setState(StateStopping)
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-m.exited:
			return nil
		case <-t.C:
			m.log.Warn("machine ignored the power button, forcing it down", "name", m.cfg.Name, "grace", grace)
		case <-ctx.Done():
		}
	} else if errors.Is(err, ErrExited) {
		return nil
	} else {
		m.log.Warn("power button press failed", "name", m.cfg.Name, "error", err)
	}
	m.ForceDown()
	return ErrForcedDown
}

// ForceDown ends QEMU: QMP quit, then SIGKILL, and always reaps it.
func (m *Machine) ForceDown() error {
	select {
	case <-m.exited:
		return nil
	default:
	}
	m.setState(StateStopping)
	if _, err := m.command(context.Background(), "quit"); err == nil {
		select {
		case <-m.exited:
			return nil
		case <-time.After(5 * time.Second):
		}
	}
	m.kill()
	return nil
}

// kill sends SIGKILL and waits for the owner goroutine to reap.
func (m *Machine) kill() {
	if m.cmd.Process != nil {
		if err := m.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			m.log.Warn("killing QEMU", "pid", m.cmd.Process.Pid, "error", err)
		}
	}
	<-m.exited
}

// PID returns the QEMU process id.
func (m *Machine) PID() int { return m.Info().PID }

// ReadPIDFile reads a QEMU pid file (for crash recovery).
func ReadPIDFile(path string) (int, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// AdminCommand runs one QMP command through a machine's admin socket (for
// the admin commands; the agent holds the main socket).
func AdminCommand(socket, execute string) (json.RawMessage, error) {
	mon, err := qmp.NewSocketMonitor("unix", socket, 2*time.Second)
	if err != nil {
		return nil, fmt.Errorf("QMP %s via %s: %w (is the machine still running?)", execute, socket, err)
	}
	var out []byte
	err = withTimeout(context.Background(), CommandTimeout, func() error {
		if err := mon.Connect(); err != nil {
			return err
		}
		var err error
		out, err = mon.Run([]byte(`{"execute":"` + execute + `"}`))
		return err
	}, func() { mon.Disconnect() })
	if err != nil {
		return nil, fmt.Errorf("QMP %s via %s: %w", execute, socket, err)
	}
	mon.Disconnect()
	var reply struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal(out, &reply); err != nil {
		return nil, fmt.Errorf("QMP %s: bad reply %q", execute, out)
	}
	return reply.Return, nil
}
