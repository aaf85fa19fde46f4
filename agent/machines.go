package agent

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
	"strings"

	"golang.org/x/sys/unix"

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
}

// Header is what a task request offers for this machine.
func (m *Machine) Header() manifest.MachineHeader { return m.Manifest.Machine.MachineHeader }

// BootstrapRequest is one machine to bootstrap: a writable snapshot of the
// machine image that the bootstrap step may boot and change.
type BootstrapRequest struct {
	Machine  manifest.Machine
	Snapshot string // the work snapshot <machine>-<toolchain>~<xxx>
}

// Bootstrapper performs the bootstrap step and returns what the worker
// reported. The real one boots the VM; FakeBootstrapper does not.
type Bootstrapper interface {
	Bootstrap(ctx context.Context, req BootstrapRequest) (manifest.Bootstrap, error)
}

// FakeBootstrapper records the agent's own versions without booting
// anything (--fake-bootstrap).
type FakeBootstrapper struct{}

func (FakeBootstrapper) Bootstrap(context.Context, BootstrapRequest) (manifest.Bootstrap, error) {
	v, err := manifest.ParseStandardVersion(Version)
	if err != nil {
		return manifest.Bootstrap{}, err
	}
	return manifest.Bootstrap{Versions: []manifest.PackageVersion{{Package: "bbot", Version: v}}}, nil
}

// Decision is what enumeration does with a machine.
type Decision int

const (
	UseMachine       Decision = iota // bootstrapped and current
	BootstrapMachine                 // (re-)bootstrap it
	SkipMachine                      // leave it alone this round
)

func (d Decision) String() string {
	return [...]string{"use", "bootstrap", "skip"}[d]
}

// Decide is the re-bootstrap rule of SPEC §3: bootstrap when there is no
// usable bootstrapped manifest, or the machine id, the toolchain id changed,
// or the recorded bbot version is older than ours (missing counts as older);
// skip when it is newer (this agent is outdated).
func Decide(m manifest.Machine, bm *manifest.BootstrappedMachine, toolchainID string, agentVersion manifest.StandardVersion) (Decision, string) {
	switch {
	case bm == nil:
		return BootstrapMachine, "no usable bootstrapped snapshot"
	case bm.Machine.ID != m.ID:
		return BootstrapMachine, "machine id changed"
	case bm.Toolchain.ID != toolchainID:
		return BootstrapMachine, "toolchain id changed"
	}
	v, ok := bm.Bootstrap.Version("bbot")
	if !ok {
		return BootstrapMachine, "no recorded bbot version"
	}
	switch c := v.Compare(agentVersion); {
	case c < 0:
		return BootstrapMachine, "bootstrapped with older bbot " + v.String()
	case c > 0:
		return SkipMachine, "bootstrapped with newer bbot " + v.String() + " than this agent's " + agentVersion.String()
	}
	return UseMachine, ""
}

// Enumerator finds the usable machines under the machines directory and
// (re-)bootstraps those that need it.
type Enumerator struct {
	Root          string // --machines
	ToolchainName string
	ToolchainID   string
	AgentVersion  manifest.StandardVersion
	Bootstrapper  Bootstrapper
	Log           *slog.Logger

	// Snapshots counts the snapshots taken (for tests and benchmarks).
	Snapshots int
}

// Enumerate returns the usable machines in directory order.
func (e *Enumerator) Enumerate(ctx context.Context) ([]*Machine, error) {
	if e.Log == nil {
		e.Log = slog.New(slog.DiscardHandler)
	}
	volumes, err := os.ReadDir(e.Root)
	if err != nil {
		return nil, fmt.Errorf("reading machines directory: %w", err)
	}
	var machines []*Machine
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
			if err := ctx.Err(); err != nil {
				return machines, err
			}
			if hidden(ent.Name()) || !isDir(volDir, ent) {
				continue
			}
			m, err := e.machine(ctx, filepath.Join(volDir, ent.Name()))
			if err != nil {
				e.Log.Warn("skipping machine", "machine", filepath.Join(volDir, ent.Name()), "error", err)
				continue
			}
			if m != nil {
				machines = append(machines, m)
			}
		}
	}
	return machines, nil
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

// LockMachine takes the machine directory's flock without waiting. It
// returns (nil, nil) when another process holds it.
func LockMachine(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, nil
		}
		return nil, fmt.Errorf("locking %s: %w", dir, err)
	}
	return f, nil
}

// machine examines one machine directory; nil means nothing usable.
func (e *Enumerator) machine(ctx context.Context, dir string) (*Machine, error) {
	name := filepath.Base(dir)
	lock, err := LockMachine(dir)
	if err != nil {
		return nil, err
	}
	if lock == nil {
		e.Log.Info("machine is busy, skipping", "machine", dir)
		return nil, nil
	}
	defer lock.Close() // releases the flock

	if err := RemoveTemporaries(dir, name, e.ToolchainName, e.Log); err != nil {
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
	image, err := filepath.EvalSymlinks(link)
	if err != nil {
		e.Log.Warn("dangling machine link, skipping", "link", link, "error", err)
		return nil, nil
	}
	mc, err := readMachine(filepath.Join(image, "manifest"))
	if err != nil {
		return nil, err
	}

	var current *manifest.BootstrappedMachine
	if bm, err := readBootstrapped(filepath.Join(bootstrapped, "manifest")); err == nil {
		current = &bm
	} else if !errors.Is(err, fs.ErrNotExist) {
		e.Log.Warn("unreadable bootstrapped manifest, re-bootstrapping", "machine", dir, "error", err)
	}
	decision, reason := Decide(mc, current, e.ToolchainID, e.AgentVersion)
	switch decision {
	case UseMachine:
		return &Machine{Dir: dir, Bootstrapped: bootstrapped, Manifest: *current}, nil
	case SkipMachine:
		e.Log.Warn("skipping machine", "machine", dir, "reason", reason)
		return nil, nil
	}
	e.Log.Info("bootstrapping machine", "machine", dir, "reason", reason)
	bm, err := e.bootstrap(ctx, dir, image, bootstrapped, mc)
	if err != nil {
		return nil, fmt.Errorf("bootstrap failed: %w", err)
	}
	return &Machine{Dir: dir, Bootstrapped: bootstrapped, Manifest: bm}, nil
}

// RemoveTemporaries deletes this toolchain's leftover temporary snapshots
// <machine>-<toolchain>~* in dir. The caller holds the machine's lock; other
// toolchains' names (<machine>-<toolchain>-x~...) never match.
func RemoveTemporaries(dir, machine, toolchain string, log *slog.Logger) error {
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
			err = removeOwned(dir, p)
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
// result as the new bootstrapped snapshot.
func (e *Enumerator) bootstrap(ctx context.Context, dir, image, bootstrapped string, mc manifest.Machine) (manifest.BootstrappedMachine, error) {
	var bm manifest.BootstrappedMachine
	work := TempName(bootstrapped)
	if err := btrfs.Snapshot(image, work, false); err != nil {
		return bm, err
	}
	e.Snapshots++
	published := false
	defer func() {
		if !published {
			if err := btrfs.Delete(work); err != nil {
				e.Log.Error("deleting work snapshot", "path", work, "error", err)
			}
		}
	}()

	b, err := e.Bootstrapper.Bootstrap(ctx, BootstrapRequest{Machine: mc, Snapshot: work})
	if err != nil {
		return bm, err
	}
	// A fresh bootstrap reporting an older bbot would be re-bootstrapped
	// forever: it is a failure instead.
	v, ok := b.Version("bbot")
	if !ok {
		return bm, errors.New("bootstrap manifest has no bbot-version")
	}
	if v.Compare(e.AgentVersion) < 0 {
		return bm, fmt.Errorf("machine bootstrapped with bbot %s, older than this agent's %s", v, e.AgentVersion)
	}
	bm = manifest.BootstrappedMachine{Machine: mc, Toolchain: manifest.Toolchain{ID: e.ToolchainID}, Bootstrap: b}
	var buf bytes.Buffer
	if err := bm.Serialize(&buf); err != nil {
		return bm, err
	}
	if err := WriteFileAtomic(filepath.Join(work, "manifest"), buf.Bytes(), 0o644); err != nil {
		return bm, err
	}
	if err := btrfs.SetReadOnly(work, true); err != nil {
		return bm, err
	}
	if err := publish(work, bootstrapped); err != nil {
		return bm, err
	}
	published = true
	return bm, nil
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
	if ok, _ := btrfs.IsSubvolume(work); ok {
		return btrfs.Delete(work)
	}
	return removeOwned(filepath.Dir(final), work)
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

// WriteFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path, so readers see the old or the new content only.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err == nil {
		err = f.Chmod(perm)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync() // make the rename itself durable
		d.Close()
	}
	return nil
}
