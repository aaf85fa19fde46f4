package inventory

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// MachineStatus is what a look at one machine directory tells, without
// locking, bootstrapping or deleting anything (for --status).
type MachineStatus struct {
	Dir          string
	Name         string
	Linked       bool      // <machine>-1 resolves
	Bootstrapped bool      // <machine>-<toolchain> has a readable manifest
	Since        time.Time // when the bootstrapped snapshot was published
	ToolchainID  string    // the bootstrapped snapshot's
	BbotVersion  string    // the bootstrapped snapshot's worker version
	Problem      string    // why the bootstrapped manifest is unreadable
}

// Describe lists every machine below root as toolchain sees it.
func Describe(root, toolchain string) ([]MachineStatus, error) {
	volumes, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var out []MachineStatus
	for _, vol := range volumes {
		if hidden(vol.Name()) || !isDir(root, vol) {
			continue
		}
		volDir := filepath.Join(root, vol.Name())
		entries, err := os.ReadDir(volDir)
		if err != nil {
			continue
		}
		for _, ent := range entries {
			if hidden(ent.Name()) || !isDir(volDir, ent) {
				continue
			}
			dir := filepath.Join(volDir, ent.Name())
			name := ent.Name()
			st := MachineStatus{Dir: dir, Name: name}
			if _, err := filepath.EvalSymlinks(filepath.Join(dir, name+"-"+BootstrapProtocol)); err == nil {
				st.Linked = true
			}
			path := filepath.Join(dir, name+"-"+toolchain, "manifest")
			bm, err := readBootstrapped(path)
			switch {
			case err == nil:
				st.Bootstrapped = true
				st.ToolchainID = bm.Toolchain.ID
				if v, ok := bm.Bootstrap.Version("bbot"); ok {
					st.BbotVersion = v.String()
				}
				if fi, err := os.Stat(path); err == nil {
					st.Since = fi.ModTime()
				}
			case !errors.Is(err, fs.ErrNotExist):
				st.Problem = err.Error()
			}
			out = append(out, st)
		}
	}
	return out, nil
}
