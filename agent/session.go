package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/machine"
	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// session is one machine session, for a bootstrap or a build: named steps
// (snapshot, bind TFTP, dirs and mapping, tap, QEMU start, wait alive, wait
// result), each registering its undo. A mis-boot retry undoes everything
// and runs the steps again: a new snapshot, mapping and event queue. The
// session only reports what happened (an event); decideOutcome says what
// becomes of it.
type session struct {
	v     *VMs
	mode  string // "bootstrap" or "build"
	mc    manifest.Machine
	heart *heart // of the goroutine that runs it (teardown covers itself)

	// source is snapshotted to snapshot (a fresh name per attempt unless
	// fixed is set: the bootstrap's work snapshot keeps its name).
	source, snapshot string
	fixed            bool
	// get is served, put receives; getFiles, if set, are written into get,
	// which the session then owns (build); otherwise get is the admin's
	// toolchain directory, only read.
	get, put string
	getFiles map[string][]byte
	names    []string // result names in put
	// extras are other files the worker may upload (upload.tar); what
	// became of each is recorded (transfers), and those still coming when
	// the result is in are waited for a while (finishTransfers).
	extras    []string
	transfers map[string]tftp.Event
	inFlight  []string         // uploads still in progress after that wait
	maxSizes  map[string]int64 // per-name upload caps (upload.tar's)
	startup   time.Duration
	timeout   time.Duration
	retries   int
	maxFile   int64
	maxTotal  int64
	entry     string // journal entry id, for the VM record
	cpus      int    // virtual CPUs: --cpu, or all threads for a boosted task
	// noVM: a --fake-machine session: no snapshot, tap or QEMU, no
	// session prefix (a person or a worker under development plays the
	// guest with any TFTP client); the wait is for the result only.
	noVM bool
	// bind, if set, overrides where TFTP is bound (--fake-machine: the
	// loopback unless --tftp-address says otherwise).
	bind string
	// announceBound: the guest is told the address TFTP was bound to (an
	// ephemeral port: auxiliary machines). tweak, if set, amends each
	// attempt's QEMU configuration (auxiliary NICs and MACs).
	announceBound bool
	tweak         func(*machine.Config)
	// interactive, for an interactive build, waits at its breakpoint
	// (interactive.go).
	interactive *interactiveWait

	undo        []func()
	attempts    int
	accel       string // of the current attempt
	m           *machine.Machine
	q           *eventQueue
	mp          *tftp.Mapping // this attempt's
	qemuStarted time.Time
	uploaded    time.Time
	prefix      string // this attempt's TFTP session prefix
	// redirectTo is this attempt's redirect listener (bridge mode).
	redirectTo netip.AddrPort
	// canDetach: a hold the agent stops during is left running for the
	// next agent to take over (a build without auxiliary machines);
	// detached says that happened: teardown then leaves the VM, its
	// snapshot, tap and records alone.
	canDetach, detached bool

	// snapshotTook is what the last attempt's btrfs snapshot took.
	snapshotTook time.Duration
}

// sessionReport is what a session ended with. The machine, if still
// running, is s.m; nothing is torn down until s.teardown.
type sessionReport struct {
	ev   event
	why  string
	name string // the uploaded result's name in put (evResult)
}

func (s *session) push(f func()) { s.undo = append(s.undo, f) }

// teardown undoes every step in reverse: force the VM down, close the
// mapping (aborting transfers in flight), unbind TFTP, remove the dirs,
// delete the snapshot.
func (s *session) teardown() {
	// QEMU forced down (QMP quit, then SIGKILL), snapshot deleted: bounded.
	defer s.heart.busy(sessionStepBound)()
	for i := len(s.undo) - 1; i >= 0; i-- {
		s.undo[i]()
	}
	s.undo = nil
	s.m = nil
}

// run performs the steps and waits for the result (or the first fault).
func (s *session) run(ctx context.Context) sessionReport {
	s.heart = heartOf(ctx)
	if s.noVM {
		if rep, ok := s.start(ctx); !ok {
			s.teardown()
			return rep
		}
		return s.waitResult(ctx)
	}
	for attempt := 0; ; attempt++ {
		if rep, ok := s.start(ctx); !ok {
			s.teardown()
			return rep
		}
		// QEMU ending before the first request: a QEMU failure (non-zero
		// exit, a signal: the host's), or a guest that powered off at once
		// (a mis-boot, retried).
		wctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-s.m.Exited():
				cancel()
			case <-wctx.Done():
			}
		}()
		err := waitAlive(wctx, s.q, s.startup)
		cancel()
		if err == nil {
			s.v.Accel.Booted(s.accel)
			break
		}
		if ctx.Err() != nil {
			return sessionReport{ev: evInterrupted, why: "interrupted while the machine was starting"}
		}
		if isClosed(s.m.Exited()) {
			if werr := s.m.Wait(context.Background()); werr != nil {
				return sessionReport{ev: evHostFault, why: "QEMU ended abnormally while the machine was starting: " + werr.Error() + s.consoleNote()}
			}
		}
		s.v.Accel.MisBooted(s.accel)
		s.v.Log.Warn("machine mis-booted", "machine", s.mc.Name, "attempt", attempt+1, "console", s.m.Info().ConsoleLog)
		if attempt >= s.retries {
			// Still running: the caller holds it for inspection.
			return sessionReport{ev: evStartupExhausted, why: fmt.Sprintf("%v (%d attempts)", errStartupTimeout, attempt+1)}
		}
		s.teardown()
	}
	return s.waitResult(ctx)
}

// start runs the steps up to a started QEMU.
func (s *session) start(ctx context.Context) (sessionReport, bool) {
	// Snapshot, TFTP, tap and QEMU's start (its QMP calls have timeouts).
	defer heartOf(ctx).busy(sessionStepBound)()
	v := s.v
	host := func(step string, err error) (sessionReport, bool) {
		return sessionReport{ev: evHostFault, why: step + ": " + err.Error()}, false
	}
	// A fixed snapshot (the bootstrap's work snapshot, taken and owned by
	// enumeration) is used as it is the first time and taken afresh for
	// each retry; other snapshots are the session's own.
	s.attempts++
	if s.noVM {
		return s.serve()
	}
	if !s.fixed {
		s.snapshot = inventory.TempName(s.source)
	}
	if !s.fixed || s.attempts > 1 {
		if ok, _ := btrfs.IsSubvolume(s.snapshot); ok {
			if err := btrfs.Delete(s.snapshot); err != nil {
				return sessionReport{ev: evMachineFault, why: "deleting the mis-booted snapshot: " + err.Error()}, false
			}
		}
		took := time.Now()
		if err := btrfs.Snapshot(s.source, s.snapshot, false); err != nil {
			return sessionReport{ev: evMachineFault, why: "snapshot: " + err.Error()}, false
		}
		s.snapshotTook = time.Since(took)
	}
	if !s.fixed {
		snap := s.snapshot
		s.push(func() {
			if s.detached {
				return
			}
			if err := btrfs.Delete(snap); err != nil {
				v.Log.Error("deleting snapshot", "path", snap, "error", err)
			}
		})
	}
	if s.mode == "build" {
		crash.Point("after-task-snapshot")
	}

	if rep, ok := s.serve(); !ok {
		return rep, false
	}
	prefix := s.prefix
	cfg := v.machineConfig(s.mc, s.snapshot, s.mode, s.cpus)
	if s.tweak != nil {
		s.tweak(&cfg)
	}
	// The prefix reaches the guest through a file in the 0700 run dir,
	// never on QEMU's command line (world-readable in /proc).
	prefixFile := filepath.Join(v.runDir, "oem-prefix")
	if err := os.MkdirAll(v.runDir, 0o700); err != nil {
		return host("run directory", err)
	}
	if err := fsx.WriteFileAtomic(prefixFile, []byte("bbot.tftp-prefix="+prefix), 0o600); err != nil {
		return host("writing the TFTP prefix", err)
	}
	s.push(func() { os.Remove(prefixFile) })
	cfg.OEMFiles = append(cfg.OEMFiles, prefixFile)
	s.accel = cfg.Accel
	if v.Opts.Network == "bridge" {
		if err := machine.CreateTap(cfg.Tap, v.Opts.Bridge); err != nil {
			return host("tap", err)
		}
		s.push(func() {
			if !s.detached {
				v.dropTap()
			}
		})
		if s.redirectTo.IsValid() {
			r := machine.Redirect{Table: v.redirectTable(), Tap: cfg.Tap, MAC: cfg.MAC, Mark: v.redirectMark(), To: s.redirectTo}
			if err := machine.InstallRedirect(r); err != nil {
				return host("installing the worker redirect (nftables)", err)
			}
			s.push(func() {
				if !s.detached {
					v.dropRedirect()
				}
			})
		}
	}
	if v.onBoot != nil {
		v.onBoot(s.snapshot, s.attempts)
	}
	m, err := machine.Start(ctx, cfg, v.Log)
	if err != nil {
		if ctx.Err() != nil {
			return sessionReport{ev: evInterrupted, why: "interrupted while starting QEMU"}, false
		}
		return host("starting QEMU", err)
	}
	s.m = m
	info := m.Info()
	s.qemuStarted = info.Started
	if err := writeVMRecord(v.runDir, vmRecord{PID: info.PID, StartTime: processStartTime(info.PID),
		Snapshot: s.snapshot, Entry: s.entry, Mode: s.mode}); err != nil {
		m.ForceDown()
		return host("recording the VM", err)
	}
	s.push(func() {
		if s.detached {
			return
		}
		m.ForceDown()
		removeVMRecord(v.runDir)
		if s.mode == "build" {
			crash.Point("during-teardown") // VM down, snapshot not yet deleted
		}
	})
	if s.mode == "build" {
		crash.Point("after-qemu-start")
	}
	return sessionReport{}, true
}

// serve binds TFTP and installs the session's directories and mapping. In
// bridge mode a second server, the target of the slot's redirect of
// unmodified bbot workers (see machine.Redirect), serves the same mapping
// to requests without the prefix.
func (s *session) serve() (sessionReport, bool) {
	v := s.v
	host := func(step string, err error) (sessionReport, bool) {
		return sessionReport{ev: evHostFault, why: step + ": " + err.Error()}, false
	}
	bind := v.bind
	if s.bind != "" {
		bind = s.bind
	}
	srv, bound, err := s.listen(bind)
	if err != nil {
		return host("binding TFTP", err)
	}
	if s.announceBound {
		v.TFTPEndpoint = bound.String()
	}
	var redirect *tftp.Server
	s.redirectTo = netip.AddrPort{}
	if v.redirects() && !s.noVM && !s.announceBound { // auxiliary machines: no redirect (README)
		// On the bridge's own address (the DNAT target), whatever
		// --tftp-address says; a port of its own per attempt.
		gw, err := netip.ParseAddr(v.GatewayIP)
		if err != nil {
			return host("the redirect listener", err)
		}
		var addr *net.UDPAddr
		if redirect, addr, err = s.listen(netip.AddrPortFrom(gw, 0).String()); err != nil {
			return host("binding the redirect TFTP listener", err)
		}
		s.redirectTo = addr.AddrPort()
	}

	if err := s.makeDirs(); err != nil {
		return host("TFTP directories", err)
	}
	mp, err := tftp.NewMapping(s.get, s.put)
	if err != nil {
		return host("TFTP mapping", err)
	}
	mp.MaxFileSize, mp.MaxTotal, mp.MaxSizes = s.maxFile, s.maxTotal, s.maxSizes
	// Only this attempt's guest may talk to this mapping: it alone learns
	// the secret prefix (SMBIOS); in bridge mode it must also come from
	// its own address.
	if !s.noVM {
		s.prefix = randomHex(16)
		mp.Prefix = s.prefix
		if v.GuestIP != "" {
			if p, err := netip.ParsePrefix(v.GuestIP); err == nil {
				mp.Source = p.Addr()
			}
		}
	}
	s.q, s.mp, s.transfers = newEventQueue(), mp, nil
	mp.Notify, mp.Log = s.q.Notify, v.Log
	srv.SetHandler(mp)
	if redirect != nil {
		redirect.SetHandler(mp.Redirected())
	}
	s.push(func() {
		srv.SetHandler(nil)
		if redirect != nil {
			redirect.SetHandler(nil)
		}
		mp.Close()
	})

	return sessionReport{}, true
}

// listen binds a TFTP server to addr and serves it until teardown.
func (s *session) listen(addr string) (*tftp.Server, *net.UDPAddr, error) {
	conn, err := tftp.Listen(addr)
	if err != nil {
		return nil, nil, err
	}
	srv := &tftp.Server{ErrorLog: s.v.Log, OnTransfer: s.v.onTransfer}
	served := make(chan struct{})
	go func() {
		srv.Serve(conn) // returns only after Shutdown
		close(served)
	}()
	s.push(func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		<-served
	})
	return srv, conn.LocalAddr().(*net.UDPAddr), nil
}

// makeDirs creates empty TFTP directories (leftovers of a crash are
// removed) and registers their removal. Only directories the agent owns
// are removed: the put dir always, the get dir when the session wrote it.
func (s *session) makeDirs() error {
	dirs := []string{s.put}
	if s.getFiles != nil {
		dirs = append(dirs, s.get)
	}
	for _, d := range dirs {
		if err := fsx.RemoveOwned(s.v.Opts.TFTP, d); err != nil {
			return err
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		s.push(func() {
			if err := fsx.RemoveOwned(s.v.Opts.TFTP, d); err != nil {
				s.v.Log.Error("removing TFTP directory", "path", d, "error", err)
			}
		})
	}
	if s.getFiles == nil {
		return os.MkdirAll(s.get, 0o755)
	}
	for name, data := range s.getFiles {
		if err := fsx.WriteFileAtomic(filepath.Join(s.get, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// waitResult waits for one of the result names to be uploaded completely,
// the machine to power off, a refused or failed upload, or the timeout.
func (s *session) waitResult(ctx context.Context) sessionReport {
	// The timeout cancels wctx; an interactive build's breakpoint resets it.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	timeout := time.AfterFunc(s.timeout, cancel)
	defer timeout.Stop()
	var exited <-chan struct{} // never closes without a machine
	if s.m != nil {
		exited = s.m.Exited()
	}
	for {
		e, err := s.q.nextOrExit(wctx, exited)
		switch {
		case errors.Is(err, errExited):
			if n, ok := s.q.completed(s.names); ok { // uploaded just before the power-off
				s.uploaded = s.q.uploadTime()
				return sessionReport{ev: evResult, name: n}
			}
			if werr := s.m.Wait(context.Background()); werr != nil {
				// QEMU itself died (OOM killer, a crash, a signal): the
				// guest powering off makes QEMU exit 0.
				return sessionReport{ev: evHostFault, why: "QEMU ended abnormally: " + werr.Error()}
			}
			if s.interactive.waiting() {
				return s.interactiveEnd(false)
			}
			return sessionReport{ev: evNoResult, why: errMachineExited.Error()}
		case err != nil && ctx.Err() != nil:
			if n, ok := s.q.completed(s.names); ok { // uploaded just as SIGTERM came
				s.uploaded = s.q.uploadTime()
				return sessionReport{ev: evResult, name: n}
			}
			return sessionReport{ev: evInterrupted, why: "interrupted while waiting for the result"}
		case err != nil && s.interactive.waiting():
			return s.interactiveEnd(true)
		case err != nil:
			return sessionReport{ev: evTimeout, why: fmt.Sprintf("%s timeout (%s) passed without a result", s.mode, s.timeout)}
		}
		s.noteEvent(e)
		name, nerr := tftp.CleanName(e.Name)
		wanted := nerr == nil && containsString(s.names, name)
		switch {
		case e.Kind == tftp.UploadCompleted && wanted:
			s.uploaded = e.Time
			return sessionReport{ev: evResult, name: name}
		case e.Kind == tftp.UploadCompleted && name == interactiveName && s.interactive != nil && !s.interactive.waiting():
			// At the breakpoint: --interactive-timeout from now on.
			timeout.Reset(s.interactive.timeout)
			s.reachBreakpoint(ctx)
		case e.Kind == tftp.TransferFailed && e.Op == tftp.Put && e.Fault == tftp.FaultHost:
			// The host could not store what the guest sent (ENOSPC, EIO):
			// not the guest's fault.
			return sessionReport{ev: evHostFault, why: fmt.Sprintf("storing the upload of %s failed on the host: %v", e.Name, e.Cause)}
		case e.Kind == tftp.TransferFailed && e.Op == tftp.Put && wanted && e.Fault == tftp.FaultRefused:
			return sessionReport{ev: evBadResult, why: fmt.Sprintf("result upload %s refused: %v", e.Name, e.Cause)}
		}
	}
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var errExited = errors.New("machine exited")

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// nextOrExit returns the next event, or errExited once exited is closed
// and no event is queued.
func (q *eventQueue) nextOrExit(ctx context.Context, exited <-chan struct{}) (tftp.Event, error) {
	for {
		q.mu.Lock()
		if len(q.events) > 0 {
			e := q.events[0]
			q.events = q.events[1:]
			q.mu.Unlock()
			return e, nil
		}
		q.mu.Unlock()
		select {
		case <-heartOf(ctx).beat():
		case <-q.signal:
		case <-exited:
			q.mu.Lock()
			n := len(q.events)
			q.mu.Unlock()
			if n == 0 {
				return tftp.Event{}, errExited
			}
		case <-ctx.Done():
			return tftp.Event{}, ctx.Err()
		}
	}
}

// hold is the soft failure: pause the machine, tell the admin how to reach
// it, and hold until QEMU exits, the suspend timeout passes (0 = forever)
// or ctx ends. The caller then tears the session down.
func (s *session) hold(ctx context.Context, why string) {
	v, m := s.v, s.m
	if m == nil {
		return
	}
	info := m.Info()
	// Paused even when the agent is stopping: the hold then outlives it.
	if err := m.Suspend(context.WithoutCancel(ctx)); err != nil && !errors.Is(err, machine.ErrExited) {
		v.Log.Error("suspending machine failed", "error", err)
	}
	select {
	case <-m.Exited():
		return
	default:
	}
	v.Log.Warn("machine suspended for inspection: "+why,
		"snapshot", s.snapshot, "console", info.ConsoleLog,
		"attach", ConsoleAttach(info.ConsoleSocket), "vnc", info.VNC, "vnc-attach", VNCAttach(info.VNC),
		"qmp", info.AdminSocket, "pid", info.PID,
		"release", fmt.Sprintf("bbot-agent --run-dir %s --instance %d --release (or kill %d)", v.Opts.RunDir, v.instance, info.PID))
	rec := Suspended{PID: info.PID, StartTime: processStartTime(info.PID), Snapshot: s.snapshot, ConsoleLog: info.ConsoleLog,
		ConsoleSocket: info.ConsoleSocket, VNC: info.VNC, AdminSocket: info.AdminSocket, Since: time.Now().UTC(), Reason: why}
	if err := writeSuspended(v.runDir, rec); err != nil {
		v.Log.Error("recording the suspended machine", "error", err)
	}
	defer func() {
		if !s.detached {
			os.Remove(filepath.Join(v.runDir, suspendedFile))
		}
	}()
	if v.onSuspend != nil {
		v.onSuspend(m)
	}
	crash.Point("while-held")
	var timeout <-chan time.Time
	if v.Opts.SuspendTimeout > 0 {
		t := time.NewTimer(v.Opts.SuspendTimeout)
		defer t.Stop()
		timeout = t.C
	}
	h := heartOf(ctx)
	select {
	case <-v.evict: // meant for an earlier hold
	default:
	}
held:
	for {
		select {
		case <-m.Exited():
			v.Log.Info("suspended machine released", "snapshot", s.snapshot)
			break held
		case <-timeout:
			v.Log.Warn("suspend timeout passed, releasing machine", "snapshot", s.snapshot)
			break held
		case <-v.evict:
			v.Log.Warn("releasing the oldest held machine: more are held than --suspend-max allows", "snapshot", s.snapshot, "suspend-max", v.Opts.SuspendMax)
			break held
		case <-ctx.Done():
			if s.canDetach {
				// SIGTERM, an upgrade, a drain's end: the evidence stays.
				s.detached = true
				v.Log.Warn("the agent stops: the held machine stays suspended for the next agent to take over",
					"snapshot", s.snapshot, "pid", info.PID)
				return
			}
			break held
		case <-h.beat():
		}
	}
	defer h.busy(sessionStepBound)()
	m.ForceDown()
}

// consoleTail of the session's machine, for diagnostics.
func (s *session) consoleNote() string {
	if s.m == nil {
		return ""
	}
	p := s.m.Info().ConsoleLog
	return "\nconsole log (" + p + "), last lines:\n" + consoleTail(p, 20)
}

// tftpBind is where sessions bind the TFTP server and what the guest is
// told, from the options.
func tftpBind(o *Options, plan SlotPlan) (bind, endpoint, guest, gw string, err error) {
	port := strconv.Itoa(plan.TFTPPort)
	bind = o.TFTPAddress
	switch o.Network {
	case "user":
		if bind == "" {
			bind = "127.0.0.1"
		}
		return net.JoinHostPort(bind, port), "10.0.2.2:" + port, "", "", nil // QEMU user networking's host
	default:
		b, guest, gw, err := bridgeAddresses(o, plan)
		if err != nil && !o.FakeBootstrap && !o.FakeBuild && o.FakeMachine == "" {
			return "", "", "", "", fmt.Errorf("--bridge %s: %w (use --network user without a bridge)", o.Bridge, err)
		}
		if bind == "" {
			bind = b
		}
		if bind == "" {
			bind = "127.0.0.1" // no bridge, and only fake sessions: nobody connects
		}
		return net.JoinHostPort(bind, port), net.JoinHostPort(bind, port), guest, gw, nil
	}
}
