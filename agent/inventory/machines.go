// Package inventory finds the machines under the machines directory, decides
// which need a (re-)bootstrap, bootstraps and publishes them, and locks a
// machine for the slot that uses it.
package inventory

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/internal/crash"
	"github.com/build2/bbot-agent-go/agent/internal/fsx"

	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/manifest"
)

// BootstrapProtocol is the machine bootstrap protocol version: the P in the
// <machine>-<P> link.
const BootstrapProtocol = "1"

// Machine is a usable machine: bootstrapped for our toolchain and ready to
// be snapshotted for a task.
type Machine struct {
	Dir          string // <machines>/<volume>/<machine>
	Bootstrapped string // <Dir>/<machine>-<toolchain>, the read-only snapshot
	Manifest     manifest.BootstrappedMachine
	// NoVM marks the --fake-machine: nothing on disk and no VM; its tasks
	// are served over TFTP for whoever plays the worker.
	NoVM bool
}

// FakeMachine is the --fake-machine with header h.
func FakeMachine(h manifest.MachineHeader) *Machine {
	return &Machine{NoVM: true, Manifest: manifest.BootstrappedMachine{Machine: manifest.Machine{MachineHeader: h}}}
}

// Header is what a task request offers for this machine.
func (m *Machine) Header() manifest.MachineHeader { return m.Manifest.Machine.MachineHeader }

// BootstrapRequest is one machine to bootstrap: a writable snapshot of the
// machine image that the bootstrap step may boot and change.
type BootstrapRequest struct {
	Machine  manifest.Machine
	Image    string // <machine>-<P>.<R>: a mis-boot retry snapshots it afresh
	Snapshot string // the work snapshot <machine>-<toolchain>~<xxx>
}

// Bootstrapper performs the bootstrap step and returns what the worker
// reported. The real one boots the VM; FakeBootstrapper does not.
type Bootstrapper interface {
	Bootstrap(ctx context.Context, req BootstrapRequest) (manifest.Bootstrap, error)
}

// FakeBootstrapper records the agent's own versions without booting
// anything (--fake-bootstrap).
type FakeBootstrapper struct {
	Version manifest.StandardVersion // the bbot version recorded (the agent's)
}

func (f FakeBootstrapper) Bootstrap(context.Context, BootstrapRequest) (manifest.Bootstrap, error) {
	return manifest.Bootstrap{Versions: []manifest.PackageVersion{{Package: "bbot", Version: f.Version}}}, nil
}

// HeldError is a bootstrap guest fault: the machine is kept for
// inspection; enumeration runs Hold, then withholds the machine.
type HeldError struct {
	Why  string
	Hold func(ctx context.Context)
}

func (e *HeldError) Error() string { return e.Why + " (machine held for inspection)" }

// BootstrapError is a failed bootstrap that holds nothing.
type BootstrapError struct {
	Event string // what happened (the session event's name)
	Why   string
	Host  bool // a host-wide fault: the agent backs off
}

func (e *BootstrapError) Error() string { return "bootstrap " + e.Event + ": " + e.Why }

// decision is what enumeration does with a machine.
type decision int

const (
	useMachine       decision = iota // bootstrapped and current
	bootstrapMachine                 // (re-)bootstrap it
	skipMachine                      // leave it alone this round
)

func (d decision) String() string {
	return [...]string{"use", "bootstrap", "skip"}[d]
}

// decide is the re-bootstrap rule of SPEC §3: bootstrap when there is no
// usable bootstrapped manifest, or the machine id, the toolchain id changed,
// or the recorded bbot version is older than ours (missing counts as older);
// skip when it is newer (this agent is outdated).
func decide(m manifest.Machine, bm *manifest.BootstrappedMachine, toolchainID string, agentVersion manifest.StandardVersion) (decision, string) {
	switch {
	case bm == nil:
		return bootstrapMachine, "no usable bootstrapped snapshot"
	case bm.Machine.ID != m.ID:
		return bootstrapMachine, "machine id changed"
	case bm.Toolchain.ID != toolchainID:
		return bootstrapMachine, "toolchain id changed"
	}
	v, ok := bm.Bootstrap.Version("bbot")
	if !ok {
		return bootstrapMachine, "no recorded bbot version"
	}
	switch c := v.Compare(agentVersion); {
	case c < 0:
		return bootstrapMachine, "bootstrapped with older bbot " + v.String()
	case c > 0:
		return skipMachine, "bootstrapped with newer bbot " + v.String() + " than this agent's " + agentVersion.String()
	}
	return useMachine, ""
}

// Enumerator finds the usable machines under the machines directory and
// (re-)bootstraps those that need it.
type Enumerator struct {
	Root          string // --machines
	ToolchainName string
	ToolchainID   string
	// AgentVersion is the bbot version a bootstrapped machine must report
	// (--toolchain-ver, default the agent's version).
	AgentVersion manifest.StandardVersion
	Bootstrapper Bootstrapper
	Log          *slog.Logger
	// Fake, if set, is the only machine (--fake-machine): enumeration
	// returns it and reads no directory.
	Fake *Machine

	// snapshots counts the snapshots taken (Snapshots; for tests and
	// benchmarks). Slots bootstrap in parallel.
	snapshots atomic.Int64

	// cache keeps what scans read while it is unchanged on disk.
	cache scanCache

	// OnHostFault, if set, learns of a host-wide fault met while
	// bootstrapping (the whole agent backs off, not just the machine).
	OnHostFault func(why string)
	// OnBootstrap, if set, learns each bootstrap's outcome: "success",
	// "held", "host-fault", "interrupted" or "failure" (metrics).
	OnBootstrap func(outcome string)

	// Machines that failed (bootstrap, snapshot, lock) wait out their own
	// backoff.
	mu      sync.Mutex
	waiting map[string]*machineWait
	logOnce sync.Once // defaults Log once: slots enumerate and bootstrap in parallel
}

// machineWait is one machine's backoff.
type machineWait struct {
	until time.Time
	delay time.Duration
	why   string
}

// Machine backoff bounds: the first failure withholds a machine about
// machineBackoffMin, doubling up to machineBackoffMax.
var machineBackoffMin, machineBackoffMax = 30 * time.Second, 10 * time.Minute

// Withhold keeps a machine out of enumeration for its next backoff step.
func (e *Enumerator) Withhold(dir, why string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.waiting == nil {
		e.waiting = map[string]*machineWait{}
	}
	w := e.waiting[dir]
	if w == nil {
		w = &machineWait{delay: machineBackoffMin}
		e.waiting[dir] = w
	} else if w.delay *= 2; w.delay > machineBackoffMax {
		w.delay = machineBackoffMax
	}
	w.until, w.why = time.Now().Add(w.delay), why
	e.log().Warn("machine withheld", "machine", dir, "for", w.delay, "why", why)
}

// Wait is a machine withheld after a fault.
type Wait struct {
	Dir   string
	Until time.Time
	Why   string
}

// Waiting lists the machines withheld now, by directory.
func (e *Enumerator) Waiting() []Wait {
	e.mu.Lock()
	defer e.mu.Unlock()
	var ws []Wait
	now := time.Now()
	for dir, w := range e.waiting {
		if now.Before(w.until) {
			ws = append(ws, Wait{Dir: dir, Until: w.until, Why: w.why})
		}
	}
	slices.SortFunc(ws, func(a, b Wait) int { return strings.Compare(a.Dir, b.Dir) })
	return ws
}

// Withheld reports whether dir is waiting out a backoff.
func (e *Enumerator) Withheld(dir string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.waiting[dir]
	return w != nil && time.Now().Before(w.until)
}

// Succeeded resets a machine's backoff (a bootstrap or a task went well).
func (e *Enumerator) Succeeded(dir string) {
	e.mu.Lock()
	delete(e.waiting, dir)
	e.mu.Unlock()
}

// Snapshots is the number of snapshots taken so far.
func (e *Enumerator) Snapshots() int { return int(e.snapshots.Load()) }

func (e *Enumerator) log() *slog.Logger {
	e.logOnce.Do(func() {
		if e.Log == nil {
			e.Log = slog.New(slog.DiscardHandler)
		}
	})
	return e.Log
}

// Enumerate returns the usable machines in directory order, bootstrapping
// (with e.Bootstrapper, one after another) those that need it.
func (e *Enumerator) Enumerate(ctx context.Context) ([]*Machine, error) {
	if e.Fake != nil {
		return []*Machine{e.Fake}, nil
	}
	machines, pending, err := e.scan(ctx)
	if err != nil || e.Bootstrapper == nil {
		return machines, err
	}
	for _, dir := range pending {
		if err := ctx.Err(); err != nil {
			return machines, err
		}
		m, err := e.BootstrapDir(ctx, dir, e.Bootstrapper)
		if err != nil {
			e.Log.Warn("skipping machine", "machine", dir, "error", err)
			continue
		}
		if m != nil {
			machines = append(machines, m)
		}
	}
	slices.SortFunc(machines, func(a, b *Machine) int { return strings.Compare(a.Dir, b.Dir) })
	return machines, nil
}

// Scan returns the usable machines in directory order and, without
// bootstrapping them, the directories of machines that need a bootstrap
// (BootstrapDir does it): slots bootstrap different machines in parallel.
// Machines another slot or process holds are skipped.
func (e *Enumerator) Scan(ctx context.Context) (usable []*Machine, pending []string, err error) {
	if e.Fake != nil {
		return []*Machine{e.Fake}, nil, nil
	}
	return e.scan(ctx)
}

// BootstrapDir (re-)bootstraps one machine that Scan reported, with b (the
// slot's machine sessions). It decides again under the machine's lock: the
// machine may have changed, or another process bootstrapped it meanwhile.
// It returns nil, nil when the machine is busy or not to be used.
func (e *Enumerator) BootstrapDir(ctx context.Context, dir string, b Bootstrapper) (*Machine, error) {
	e.log()
	return e.machine(ctx, dir, b, nil)
}

// scanWorkers look at machines in parallel: a scan is system calls (a
// lock, a few stats and reads per machine), which the kernel serves on
// every CPU.
var scanWorkers = runtime.GOMAXPROCS(0)

func (e *Enumerator) scan(ctx context.Context) ([]*Machine, []string, error) {
	e.log()
	volumes, err := os.ReadDir(e.Root)
	if err != nil {
		return nil, nil, fmt.Errorf("reading machines directory: %w", err)
	}
	var dirs []string
	for _, vol := range volumes {
		if hidden(vol.Name()) || !isDir(e.Root, vol) {
			continue
		}
		volDir := filepath.Join(e.Root, vol.Name())
		entries, err := os.ReadDir(volDir)
		if err != nil {
			e.Log.Warn("skipping volume", "volume", volDir, "error", err)
			continue
		}
		for _, ent := range entries {
			if hidden(ent.Name()) || !isDir(volDir, ent) {
				continue
			}
			if dir := filepath.Join(volDir, ent.Name()); !e.Withheld(dir) {
				dirs = append(dirs, dir)
			}
		}
	}
	type look struct {
		m     *Machine
		needs bool
	}
	looks := make([]look, len(dirs))
	next := atomic.Int64{}
	var wg sync.WaitGroup
	for range min(scanWorkers, len(dirs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < len(dirs) && ctx.Err() == nil; i = int(next.Add(1) - 1) {
				m, err := e.machine(ctx, dirs[i], nil, &looks[i].needs)
				if err != nil {
					e.Log.Warn("skipping machine", "machine", dirs[i], "error", err)
					continue
				}
				looks[i].m = m
			}
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	var machines []*Machine
	var pending []string
	for i, l := range looks { // directory order
		if l.needs {
			pending = append(pending, dirs[i])
		}
		if l.m != nil {
			machines = append(machines, l.m)
		}
	}
	return machines, pending, nil
}

func hidden(name string) bool { return strings.HasPrefix(name, ".") }

func isDir(parent string, ent fs.DirEntry) bool {
	if ent.IsDir() {
		return true
	}
	if ent.Type()&fs.ModeSymlink != 0 {
		fi, err := os.Stat(filepath.Join(parent, ent.Name()))
		return err == nil && fi.IsDir()
	}
	return false
}

// Lock is a held machine flock.
type Lock struct{ fd int }

// LockMachine takes the machine directory's flock without waiting. It
// returns (nil, nil) when another process or slot holds it. A plain file
// descriptor: every scan takes every machine's lock, and an *os.File costs
// system calls of its own (the poller's registration).
func LockMachine(dir string) (*Lock, error) {
	path := filepath.Join(dir, ".lock")
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return &Lock{fd: fd}, nil
}

// LockMachineWait retries LockMachine for up to wait: a busy lock is
// usually a short clean-up by enumeration.
func LockMachineWait(ctx context.Context, dir string, wait time.Duration) (*Lock, error) {
	deadline := time.Now().Add(wait)
	for {
		l, err := LockMachine(dir)
		if err != nil || l != nil {
			return l, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("machine %s is busy (locked for more than %s)", dir, wait)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close releases the flock.
func (l *Lock) Close() error { return unix.Close(l.fd) }

// machine examines one machine directory; nil means nothing usable. A
// machine that needs a bootstrap is bootstrapped with boot; with a nil boot,
// *needsBootstrap is set instead.
func (e *Enumerator) machine(ctx context.Context, dir string, boot Bootstrapper, needsBootstrap *bool) (*Machine, error) {
	name := filepath.Base(dir)
	lock, err := LockMachine(dir)
	if err != nil {
		return nil, err
	}
	if lock == nil {
		// Another slot or process runs or bootstraps it.
		e.Log.Debug("machine is busy, skipping", "machine", dir)
		return nil, nil
	}
	defer lock.Close() // releases the flock

	if err := e.removeTemporariesOnce(dir, name); err != nil {
		return nil, err
	}

	bootstrapped := filepath.Join(dir, name+"-"+e.ToolchainName)
	link := filepath.Join(dir, name+"-"+BootstrapProtocol)
	if _, err := os.Lstat(link); errors.Is(err, fs.ErrNotExist) {
		// The admin withdrew the machine: its bootstrapped snapshot is stale.
		if ok, _ := btrfs.IsSubvolume(bootstrapped); ok {
			e.Log.Info("machine has no link, deleting its bootstrapped snapshot", "machine", dir)
			if err := btrfs.Delete(bootstrapped); err != nil {
				return nil, err
			}
		}
		e.Log.Debug("no machine link, skipping", "link", link)
		return nil, nil
	}
	image, err := resolveLink(link)
	if err != nil {
		e.Log.Warn("dangling machine link, skipping", "link", link, "error", err)
		return nil, nil
	}
	mc, err := e.cache.machine(filepath.Join(image, "manifest"))
	if err != nil {
		return nil, err
	}

	var current *manifest.BootstrappedMachine
	if bm, err := e.cache.bootstrapped(filepath.Join(bootstrapped, "manifest")); err == nil {
		current = &bm
	} else if !errors.Is(err, fs.ErrNotExist) {
		e.Log.Warn("unreadable bootstrapped manifest, re-bootstrapping", "machine", dir, "error", err)
	}
	d, reason := decide(mc, current, e.ToolchainID, e.AgentVersion)
	switch d {
	case useMachine:
		return &Machine{Dir: dir, Bootstrapped: bootstrapped, Manifest: *current}, nil
	case skipMachine:
		e.Log.Warn("skipping machine", "machine", dir, "reason", reason)
		return nil, nil
	}
	if boot == nil {
		*needsBootstrap = true
		return nil, nil
	}
	e.Log.Log(ctx, logx.LevelNotice, "bootstrapping machine", "machine", dir, "reason", reason)
	bm, err := e.bootstrap(ctx, boot, dir, image, bootstrapped, mc)
	if err != nil {
		if ctx.Err() == nil {
			e.Withhold(dir, "bootstrap failed: "+err.Error())
		}
		return nil, fmt.Errorf("bootstrap failed: %w", err)
	}
	e.Succeeded(dir)
	return &Machine{Dir: dir, Bootstrapped: bootstrapped, Manifest: bm}, nil
}

// removeTemporaries deletes this toolchain's leftover temporary snapshots
// <machine>-<toolchain>~* in dir. The caller holds the machine's lock; other
// toolchains' names (<machine>-<toolchain>-x~...) never match.
func removeTemporaries(dir, machine, toolchain string, log *slog.Logger) error {
	prefix := machine + "-" + toolchain + "~"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, ent := range entries {
		if !strings.HasPrefix(ent.Name(), prefix) {
			continue
		}
		p := filepath.Join(dir, ent.Name())
		log.Info("deleting stale temporary snapshot", "path", p)
		if ok, _ := btrfs.IsSubvolume(p); ok {
			err = btrfs.Delete(p)
		} else {
			err = fsx.RemoveOwned(dir, p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// TempName returns a fresh temporary snapshot path <base>~<random>.
func TempName(base string) string {
	var b [4]byte
	rand.Read(b[:])
	return base + "~" + hex.EncodeToString(b[:])
}

// bootstrap snapshots the image, runs the bootstrap step and publishes the
// result as the new bootstrapped snapshot. A held bootstrap takes over the
// machine's lock and work snapshot until the hold ends.
func (e *Enumerator) bootstrap(ctx context.Context, boot Bootstrapper, dir, image, bootstrapped string, mc manifest.Machine) (bm manifest.BootstrappedMachine, err error) {
	reported := false
	defer func() {
		if !reported && e.OnBootstrap != nil {
			e.OnBootstrap(bootstrapOutcome(ctx, err))
		}
	}()
	work := TempName(bootstrapped)
	if err := btrfs.Snapshot(image, work, false); err != nil {
		return bm, err
	}
	e.snapshots.Add(1)
	deleteWork := func() {
		if ok, _ := btrfs.IsSubvolume(work); !ok {
			return
		}
		if err := btrfs.Delete(work); err != nil {
			e.Log.Error("deleting work snapshot", "path", work, "error", err)
		}
	}
	published := false
	defer func() {
		if !published {
			deleteWork()
		}
	}()

	b, err := boot.Bootstrap(ctx, BootstrapRequest{Machine: mc, Image: image, Snapshot: work})
	var hb *HeldError
	if errors.As(err, &hb) {
		// The hold uses the slot's run files, TFTP port and tap: until
		// slots give each hold its own, it holds the slot (and this
		// machine's lock) here, as a held build does. The outcome is known
		// now, the hold may last long.
		if e.OnBootstrap != nil {
			e.OnBootstrap("held")
		}
		reported = true
		hb.Hold(ctx)
		return bm, err
	}
	var be *BootstrapError
	if errors.As(err, &be) && be.Host && e.OnHostFault != nil {
		e.OnHostFault(be.Error())
	}
	if err != nil {
		return bm, err
	}
	// The same decision as at enumeration, right after the bootstrap: an
	// older bbot would be re-bootstrapped forever, a newer one is not ours
	// to use. Neither is published.
	v, ok := b.Version("bbot")
	if !ok {
		return bm, errors.New("bootstrap manifest has no bbot-version")
	}
	switch c := v.Compare(e.AgentVersion); {
	case c < 0:
		return bm, fmt.Errorf("machine bootstrapped with bbot %s, older than the toolchain's %s", v, e.AgentVersion)
	case c > 0:
		return bm, fmt.Errorf("machine bootstrapped with bbot %s, newer than the toolchain's %s: not published", v, e.AgentVersion)
	}
	bm = manifest.BootstrappedMachine{Machine: mc, Toolchain: manifest.Toolchain{ID: e.ToolchainID}, Bootstrap: b}
	var buf bytes.Buffer
	if err := bm.Serialize(&buf); err != nil {
		return bm, err
	}
	if err := fsx.WriteFileAtomic(filepath.Join(work, "manifest"), buf.Bytes(), 0o644); err != nil {
		return bm, err
	}
	if err := btrfs.SetReadOnly(work, true); err != nil {
		return bm, err
	}
	crash.Point("before-publish")
	if err := publish(work, bootstrapped); err != nil {
		return bm, err
	}
	published = true
	return bm, nil
}

// bootstrapOutcome classifies a bootstrap's error for OnBootstrap.
func bootstrapOutcome(ctx context.Context, err error) string {
	var be *BootstrapError
	switch {
	case err == nil:
		return "success"
	case errors.As(err, new(*HeldError)):
		return "held"
	case ctx.Err() != nil:
		return "interrupted"
	case errors.As(err, &be) && be.Host:
		return "host-fault"
	}
	return "failure"
}

// publish atomically makes work the snapshot at final: a plain rename when
// final does not exist, otherwise an exchange followed by deleting the old
// snapshot (now at work's name).
func publish(work, final string) error {
	err := unix.Renameat2(unix.AT_FDCWD, work, unix.AT_FDCWD, final, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("publishing %s: %w", final, err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, work, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
		return fmt.Errorf("publishing %s: %w", final, err)
	}
	crash.Point("after-exchange") // the old snapshot sits at the temporary name
	if ok, _ := btrfs.IsSubvolume(work); ok {
		return btrfs.Delete(work)
	}
	return fsx.RemoveOwned(filepath.Dir(final), work)
}

func readMachine(path string) (manifest.Machine, error) {
	f, err := os.Open(path)
	if err != nil {
		return manifest.Machine{}, err
	}
	defer f.Close()
	return manifest.ParseMachine(f, path)
}

func readBootstrapped(path string) (manifest.BootstrappedMachine, error) {
	f, err := os.Open(path)
	if err != nil {
		return manifest.BootstrappedMachine{}, err
	}
	defer f.Close()
	return manifest.ParseBootstrappedMachine(f, path)
}
