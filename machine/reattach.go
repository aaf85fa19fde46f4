package machine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// consoleChardev is the id of the chardev behind QEMU's serial port
// (Args); consoleFDName names the descriptor ReattachConsole passes.
const (
	consoleChardev = "console"
	consoleFDName  = "bbot-console"
)

// HeldConsole serves the serial console of a QEMU this process did not
// start: a machine an earlier agent held for inspection and left running.
// That agent served the console from QEMU's stdio, which died with it.
// QMP chardev-change moves QEMU's console chardev to one end of a socket
// pair passed with getfd (a QEMU running as another user, -runas, needs no
// access to the run directory for it); this process keeps the other end
// and serves the console socket from it as for a machine it started,
// appending to the console log.
type HeldConsole struct {
	mux  *consoleMux
	log  *consoleLog
	conn net.Conn
	done chan struct{}
	path string
}

// ReattachConsole serves the console of the QEMU behind the QMP socket
// monitor (a free one: the dead agent's QMPSocketName) on runDir's console
// socket, appending its output to consoleLog (kept under logMax). A
// client is first sent the log's tail.
func ReattachConsole(ctx context.Context, monitor, runDir, consoleLog string, logMax int64, log *slog.Logger, name string) (*HeldConsole, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("console socket pair: %w", err)
	}
	ours, theirs := os.NewFile(uintptr(fds[0]), "console"), os.NewFile(uintptr(fds[1]), "console-qemu")
	defer theirs.Close() // QEMU has its own copy once getfd succeeded
	conn, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("console socket pair: %w", err)
	}
	// The log and the socket first: QEMU's console is switched only once
	// everything else is ready, so a failure here leaves it untouched.
	clog, err := appendConsoleLog(consoleLog, logMax)
	if err != nil {
		conn.Close()
		return nil, err
	}
	path := filepath.Join(runDir, ConsoleSocketName)
	ln, err := listenConsole(path, runDir)
	if err != nil {
		clog.Close()
		conn.Close()
		return nil, err
	}
	if err := switchConsole(ctx, monitor, theirs); err != nil {
		ln.Close()
		clog.Close()
		conn.Close()
		return nil, err
	}
	h := &HeldConsole{log: clog, conn: conn, done: make(chan struct{}), path: path}
	h.mux = newConsoleMux(clog, conn, ln, log, name, clog.tail(ConsoleReplayMax))
	go func() {
		io.Copy(h.mux, conn) // until QEMU goes or Close
		h.mux.Close()
		clog.Close()
		close(h.done)
	}()
	return h, nil
}

// switchConsole passes f to the QEMU behind qmpSocket and makes it the
// console chardev's backend.
func switchConsole(ctx context.Context, qmpSocket string, f *os.File) error {
	mon, err := qmp.NewSocketMonitor("unix", qmpSocket, 2*time.Second)
	if err != nil {
		return fmt.Errorf("console: QMP via %s: %w", qmpSocket, err)
	}
	defer mon.Disconnect()
	step := func(what string, run func() error) error {
		if err := withTimeout(ctx, CommandTimeout, run, func() { mon.Disconnect() }); err != nil {
			return fmt.Errorf("console: QMP %s via %s: %w", what, qmpSocket, err)
		}
		return nil
	}
	if err := step("connect", mon.Connect); err != nil {
		return err
	}
	if err := step("getfd", func() error {
		_, err := mon.RunWithFile([]byte(`{"execute":"getfd","arguments":{"fdname":"`+consoleFDName+`"}}`), f)
		return err
	}); err != nil {
		return err
	}
	return step("chardev-change", func() error {
		_, err := mon.Run([]byte(`{"execute":"chardev-change","arguments":{"id":"` + consoleChardev + `","backend":{"type":"socket","data":{"addr":{"type":"fd","data":{"str":"` + consoleFDName + `"}},"server":false}}}}`))
		return err
	})
}

// SocketPath is the console socket's path.
func (h *HeldConsole) SocketPath() string { return h.path }

// Done is closed once the console is no longer served: QEMU went, or Close.
func (h *HeldConsole) Done() <-chan struct{} { return h.done }

// Close stops serving the console: the socket goes, QEMU's end of the
// pair sees the hang-up (its console output is dropped until the next
// agent attaches again).
func (h *HeldConsole) Close() error {
	err := h.conn.Close()
	<-h.done
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}
