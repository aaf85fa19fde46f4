package inventory

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/btrfs"
)

// MaxToolchainName bounds a toolchain name's length.
const MaxToolchainName = 64

// ToolchainNameChars is the toolchain name character set: ASCII letters,
// digits and '_', '.', '+', '-', starting with a letter or digit.
var ToolchainNameChars = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]*$`)

// ProtocolLike matches names that would collide with the admin's machine
// names: <machine>-<P> is the link to the image and <machine>-<P>.<R> the
// image itself (BootstrapProtocol is P).
var ProtocolLike = regexp.MustCompile(`^[0-9]+(\.|$)`)

// IsToolchainName reports whether name is a valid toolchain name (so that
// <machine>-<name> can only be a bootstrapped snapshot).
func IsToolchainName(name string) bool {
	return name != "" && len(name) <= MaxToolchainName && ToolchainNameChars.MatchString(name) && !ProtocolLike.MatchString(name)
}

// seenDir, below the machines root (hidden: never a volume), holds one
// file per toolchain saying when an agent of it last ran on this host.
const seenDir = ".bbot-toolchains"

// MarkSeen records that an agent of toolchain runs now.
func MarkSeen(root, toolchain string, now time.Time) error {
	if !IsToolchainName(toolchain) {
		return fmt.Errorf("bad toolchain name %q", toolchain)
	}
	dir := filepath.Join(root, seenDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return fsx.WriteFileAtomic(filepath.Join(dir, toolchain), []byte(now.UTC().Format(time.RFC3339)+"\n"), 0o644)
}

// LastSeen returns when each toolchain's agent last ran (MarkSeen).
func LastSeen(root string) (map[string]time.Time, error) {
	ents, err := os.ReadDir(filepath.Join(root, seenDir))
	if errors.Is(err, os.ErrNotExist) {
		return map[string]time.Time{}, nil
	}
	if err != nil {
		return nil, err
	}
	seen := map[string]time.Time{}
	for _, de := range ents {
		if !IsToolchainName(de.Name()) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(root, seenDir, de.Name()))
		if err != nil {
			continue
		}
		if t, err := time.Parse(time.RFC3339, strings.TrimSpace(string(data))); err == nil {
			seen[de.Name()] = t
		}
	}
	return seen, nil
}

// ToolchainSnapshot is one toolchain's bootstrapped snapshot of a machine:
// <dir>/<machine>-<toolchain>.
type ToolchainSnapshot struct {
	MachineDir, Toolchain, Path string
}

// ToolchainSnapshots lists the bootstrapped snapshots below root, every
// toolchain's: the btrfs subvolumes <machine>-<toolchain> of each machine
// directory <root>/<volume>/<machine>/ with a bootstrapped machine's
// manifest, by toolchain and machine.
func ToolchainSnapshots(root string) ([]ToolchainSnapshot, error) {
	var out []ToolchainSnapshot
	volumes, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	for _, vol := range volumes {
		if hidden(vol.Name()) || !isDir(root, vol) {
			continue
		}
		volDir := filepath.Join(root, vol.Name())
		machines, err := os.ReadDir(volDir)
		if err != nil {
			continue
		}
		for _, m := range machines {
			if hidden(m.Name()) || !isDir(volDir, m) {
				continue
			}
			dir := filepath.Join(volDir, m.Name())
			ents, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, ent := range ents {
				tc, ok := strings.CutPrefix(ent.Name(), m.Name()+"-")
				if !ok || !IsToolchainName(tc) || !ent.IsDir() {
					continue
				}
				p := filepath.Join(dir, ent.Name())
				if sub, _ := btrfs.IsSubvolume(p); !sub {
					continue
				}
				if _, err := readBootstrapped(filepath.Join(p, "manifest")); err != nil {
					continue
				}
				out = append(out, ToolchainSnapshot{MachineDir: dir, Toolchain: tc, Path: p})
			}
		}
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Toolchain != out[b].Toolchain {
			return out[a].Toolchain < out[b].Toolchain
		}
		return out[a].Path < out[b].Path
	})
	return out, nil
}

// ErrMachineBusy means a machine's lock is held (a task or bootstrap of
// some toolchain runs in it): its snapshot was left; try again later.
var ErrMachineBusy = errors.New("machine busy")

// RemoveToolchainSnapshot deletes s, and temporary snapshots its toolchain
// left beside it, under the machine's lock.
func RemoveToolchainSnapshot(s ToolchainSnapshot) error {
	if filepath.Dir(s.Path) != s.MachineDir || filepath.Base(s.Path) != filepath.Base(s.MachineDir)+"-"+s.Toolchain || !IsToolchainName(s.Toolchain) {
		return fmt.Errorf("%s is not the toolchain %s's snapshot of %s", s.Path, s.Toolchain, s.MachineDir)
	}
	lock, err := LockMachine(s.MachineDir)
	if err != nil {
		return err
	}
	if lock == nil {
		return fmt.Errorf("%s: %w", s.MachineDir, ErrMachineBusy)
	}
	defer lock.Close()
	if err := btrfs.Delete(s.Path); err != nil {
		return err
	}
	return removeTemporaries(s.MachineDir, filepath.Base(s.MachineDir), s.Toolchain, slog.New(slog.DiscardHandler))
}

// ForgetToolchain removes toolchain's last-seen record.
func ForgetToolchain(root, toolchain string) error {
	if !IsToolchainName(toolchain) {
		return fmt.Errorf("bad toolchain name %q", toolchain)
	}
	err := os.Remove(filepath.Join(root, seenDir, toolchain))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
