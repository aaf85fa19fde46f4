package inventory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/btrfs"
	"github.com/build2/bbot-agent-go/btrfs/btrfstest"
	"github.com/build2/bbot-agent-go/manifest"
)

// testVersion stands for the agent's Version in these tests.
const testVersion = "0.17.0"

func mustVersion(t testing.TB, s string) manifest.StandardVersion {
	t.Helper()
	v, err := manifest.ParseStandardVersion(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestDecide(t *testing.T) {
	ours := mustVersion(t, "0.17.0")
	mc := manifest.Machine{MachineHeader: manifest.MachineHeader{ID: "m1"}}
	bm := func(id, tc string, bbot string) *manifest.BootstrappedMachine {
		b := &manifest.BootstrappedMachine{Machine: manifest.Machine{MachineHeader: manifest.MachineHeader{ID: id}}, Toolchain: manifest.Toolchain{ID: tc}}
		if bbot != "" {
			b.Bootstrap.Versions = []manifest.PackageVersion{{Package: "bbot", Version: mustVersion(t, bbot)}}
		}
		return b
	}
	tests := []struct {
		name string
		bm   *manifest.BootstrappedMachine
		want decision
	}{
		{"not bootstrapped", nil, bootstrapMachine},
		{"machine id changed", bm("m0", "tc", "0.17.0"), bootstrapMachine},
		{"toolchain id changed", bm("m1", "old", "0.17.0"), bootstrapMachine},
		{"bbot version missing", bm("m1", "tc", ""), bootstrapMachine},
		{"bbot version older", bm("m1", "tc", "0.16.0"), bootstrapMachine},
		{"bbot older revision", bm("m1", "tc", "0.17.0-a.0.1"), bootstrapMachine},
		{"bbot version newer", bm("m1", "tc", "0.18.0"), skipMachine},
		{"current", bm("m1", "tc", "0.17.0"), useMachine},
		{"current revision", bm("m1", "tc", "0.17.0+1"), skipMachine},
	}
	for _, tc := range tests {
		got, reason := decide(mc, tc.bm, "tc", ours)
		if got != tc.want {
			t.Errorf("%s: got %v (%s), want %v", tc.name, got, reason, tc.want)
		}
	}
}

// testLog sends the agent's log to t.Log, so it shows for failing tests.
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// makeMachine creates <vol>/<name>/<name>-1.0 (a subvolume with a machine
// manifest) and the <name>-1 link to it.
func makeMachine(t testing.TB, vol, name, id string) string {
	t.Helper()
	dir := filepath.Join(vol, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, name+"-1.0")
	if err := btrfs.Create(img); err != nil {
		t.Fatal(err)
	}
	mc := manifest.Machine{MachineHeader: manifest.MachineHeader{ID: id, Name: "x86_64-" + name, Summary: name + " machine"}, Type: "kvm"}
	var b bytes.Buffer
	if err := manifest.WriteStream(&b, "", mc.Pairs()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(img, "manifest"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.SetReadOnly(img, true); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(name+"-1.0", filepath.Join(dir, name+"-1")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// writeBootstrapped creates <dir>/<name>-<tc> as if bootstrapped earlier.
func writeBootstrapped(t testing.TB, dir, tc, machineID, toolchainID, bbot string) string {
	t.Helper()
	name := filepath.Base(dir)
	p := filepath.Join(dir, name+"-"+tc)
	if err := btrfs.Snapshot(filepath.Join(dir, name+"-1.0"), p, false); err != nil {
		t.Fatal(err)
	}
	bm := manifest.BootstrappedMachine{
		Machine:   manifest.Machine{MachineHeader: manifest.MachineHeader{ID: machineID, Name: "x86_64-" + name, Summary: "s"}, Type: "kvm"},
		Toolchain: manifest.Toolchain{ID: toolchainID},
		Bootstrap: manifest.Bootstrap{Versions: []manifest.PackageVersion{{Package: "bbot", Version: mustVersion(t, bbot)}}},
	}
	var b bytes.Buffer
	if err := bm.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "manifest"), b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := btrfs.SetReadOnly(p, true); err != nil {
		t.Fatal(err)
	}
	return p
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

type failingBootstrapper struct{ err error }

func (f failingBootstrapper) Bootstrap(context.Context, BootstrapRequest) (manifest.Bootstrap, error) {
	return manifest.Bootstrap{}, f.err
}

type versionBootstrapper struct{ version manifest.StandardVersion }

func (v versionBootstrapper) Bootstrap(context.Context, BootstrapRequest) (manifest.Bootstrap, error) {
	return manifest.Bootstrap{Versions: []manifest.PackageVersion{{Package: "bbot", Version: v.version}}}, nil
}

func TestEnumerate(t *testing.T) {
	root := btrfstest.Mount(t, 512<<20)
	vol := filepath.Join(root, "vol1")
	os.MkdirAll(filepath.Join(root, ".hidden-volume", "m"), 0o755)
	os.MkdirAll(filepath.Join(vol, ".hidden-machine"), 0o755)

	fresh := makeMachine(t, vol, "fresh", "id-fresh")                      // never bootstrapped
	current := makeMachine(t, vol, "current", "id-current")                // up to date
	writeBootstrapped(t, current, "tc", "id-current", "tcid", testVersion) //
	oldTC := makeMachine(t, vol, "oldtc", "id-oldtc")                      // older toolchain id
	writeBootstrapped(t, oldTC, "tc", "id-oldtc", "old-tcid", testVersion) //
	changed := makeMachine(t, vol, "changed", "id-new")                    // machine id changed
	writeBootstrapped(t, changed, "tc", "id-old", "tcid", testVersion)     //
	newer := makeMachine(t, vol, "newer", "id-newer")                      // bootstrapped by a newer bbot
	writeBootstrapped(t, newer, "tc", "id-newer", "tcid", "99.0.0")        //
	other := makeMachine(t, vol, "other", "id-other")                      // only another toolchain's snapshot: ours is added, theirs kept
	otherSnap := writeBootstrapped(t, other, "tc-x", "id-other", "x", testVersion)
	garbled := makeMachine(t, vol, "garbled", "id-garbled")
	g := writeBootstrapped(t, garbled, "tc", "id-garbled", "tcid", testVersion)
	btrfs.SetReadOnly(g, false)
	os.WriteFile(filepath.Join(g, "manifest"), []byte("garbage"), 0o644)
	btrfs.SetReadOnly(g, true)

	// Stale temporaries: ours are deleted, another toolchain's are kept.
	stale := filepath.Join(current, "current-tc~dead")
	btrfs.Snapshot(filepath.Join(current, "current-1.0"), stale, true)
	staleDir := filepath.Join(current, "current-tc~dir")
	os.Mkdir(staleDir, 0o755)
	othersTemp := filepath.Join(current, "current-tc-x~live")
	btrfs.Snapshot(filepath.Join(current, "current-1.0"), othersTemp, false)
	// A "temporary" that is a symlink to the admin's image: only the link
	// goes; the image is untouched (still read-only).
	staleLink := filepath.Join(current, "current-tc~link")
	os.Symlink("current-1.0", staleLink)

	// No link: skipped and its stale bootstrapped snapshot deleted.
	unlinked := makeMachine(t, vol, "unlinked", "id-unlinked")
	unlinkedSnap := writeBootstrapped(t, unlinked, "tc", "id-unlinked", "tcid", testVersion)
	os.Remove(filepath.Join(unlinked, "unlinked-1"))
	// Dangling link: skipped.
	dangling := makeMachine(t, vol, "dangling", "id-dangling")
	os.Remove(filepath.Join(dangling, "dangling-1"))
	os.Symlink("dangling-1.9", filepath.Join(dangling, "dangling-1"))
	// Busy: another process holds its lock.
	busy := makeMachine(t, vol, "busy", "id-busy")
	lock, err := LockMachine(busy)
	if err != nil || lock == nil {
		t.Fatalf("lock: %v", err)
	}
	defer lock.Close()
	// A machine manifest that does not parse: skipped.
	broken := makeMachine(t, vol, "broken", "id-broken")
	img := filepath.Join(broken, "broken-1.0")
	btrfs.SetReadOnly(img, false)
	os.WriteFile(filepath.Join(img, "manifest"), []byte(": 1\nid: x\n"), 0o644)

	e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "tcid",
		AgentVersion: mustVersion(t, testVersion), Bootstrapper: FakeBootstrapper{mustVersion(t, testVersion)}, Log: testLog(t)}
	ms, err := e.Enumerate(context.Background())
	if _, lerr := os.Lstat(staleLink); lerr == nil {
		t.Error("stale symlink temporary kept")
	}
	if ro, rerr := btrfs.IsReadOnly(filepath.Join(current, "current-1.0")); rerr != nil || !ro {
		t.Errorf("the admin's image behind a symlink was touched: read-only %v, %v", ro, rerr)
	}
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range ms {
		names = append(names, filepath.Base(m.Dir))
		if m.Manifest.Toolchain.ID != "tcid" {
			t.Errorf("%s: toolchain id %q", m.Dir, m.Manifest.Toolchain.ID)
		}
		if ro, err := btrfs.IsReadOnly(m.Bootstrapped); err != nil || !ro {
			t.Errorf("%s not published read-only: %v", m.Bootstrapped, err)
		}
	}
	want := "changed current fresh garbled oldtc other"
	if got := strings.Join(sortedCopy(names), " "); got != want {
		t.Errorf("usable machines %q, want %q", got, want)
	}
	if e.Snapshots() != 5 { // fresh, oldtc, changed, garbled, other (for our toolchain)
		t.Errorf("took %d snapshots, want 5", e.Snapshots())
	}
	for _, p := range []string{stale, staleDir, unlinkedSnap} {
		if exists(p) {
			t.Errorf("%s not deleted", p)
		}
	}
	for _, p := range []string{othersTemp, otherSnap, filepath.Join(newer, "newer-tc")} {
		if !exists(p) {
			t.Errorf("%s deleted", p)
		}
	}
	if bm, err := readBootstrapped(filepath.Join(changed, "changed-tc", "manifest")); err != nil || bm.Machine.ID != "id-new" {
		t.Errorf("changed machine not re-bootstrapped: %+v %v", bm.Machine, err)
	}
	// No work snapshot is left anywhere.
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if strings.Contains(filepath.Base(p), "-tc~") {
			t.Errorf("temporary left: %s", p)
		}
		return nil
	})

	// The second run has nothing to do: no snapshot at all.
	e2 := &Enumerator{Root: e.Root, ToolchainName: e.ToolchainName, ToolchainID: e.ToolchainID,
		AgentVersion: e.AgentVersion, Bootstrapper: e.Bootstrapper, Log: e.Log}
	ms2, err := e2.Enumerate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(ms2) != len(ms) || e2.Snapshots() != 0 {
		t.Errorf("second run: %d machines, %d snapshots", len(ms2), e2.Snapshots())
	}
	_ = fresh
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	for i := 1; i < len(c); i++ {
		for j := i; j > 0 && c[j] < c[j-1]; j-- {
			c[j], c[j-1] = c[j-1], c[j]
		}
	}
	return c
}

func TestBootstrapFailures(t *testing.T) {
	root := btrfstest.Mount(t, 256<<20)
	vol := filepath.Join(root, "v")
	m := makeMachine(t, vol, "m", "id-m")
	for _, b := range []Bootstrapper{
		failingBootstrapper{errors.New("machine did not boot")},
		versionBootstrapper{mustVersion(t, "0.1.0")},  // older than ours: never a loop
		versionBootstrapper{mustVersion(t, "0.99.0")}, // newer than --toolchain-ver: not published
	} {
		e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "tcid",
			AgentVersion: mustVersion(t, testVersion), Bootstrapper: b, Log: testLog(t)}
		ms, err := e.Enumerate(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) != 0 {
			t.Errorf("%T %v: failed bootstrap offered %d machines", b, b, len(ms))
		}
		// A failed machine waits out its own backoff: not retried at once.
		e.Bootstrapper = FakeBootstrapper{mustVersion(t, testVersion)}
		if ms, _ := e.Enumerate(context.Background()); len(ms) != 0 {
			t.Errorf("%v: failed machine retried at once", b)
		}
		entries, _ := os.ReadDir(m)
		for _, ent := range entries {
			if strings.HasPrefix(ent.Name(), "m-tc") {
				t.Errorf("%T: left %s", b, ent.Name())
			}
		}
	}
}

// BenchmarkEnumerate enumerates 1000 and 10,000 idle bootstrapped
// machines (real btrfs subvolumes and snapshots), as every poll does; the
// goal is 10,000 in under 0.5 s, no snapshot taken, and a cost per machine
// that does not grow with their number (ns/machine).
func BenchmarkEnumerate(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprintf("machines=%d", n), func(b *testing.B) {
			root := btrfstest.Mount(b, int64(n)*(1<<20)+(1<<30))
			vol := filepath.Join(root, "vol")
			for i := range n {
				name := fmt.Sprintf("m%05d", i)
				d := makeMachine(b, vol, name, "id-"+name)
				writeBootstrapped(b, d, "tc", "id-"+name, "tcid", testVersion)
			}
			e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "tcid",
				AgentVersion: mustVersion(b, testVersion), Bootstrapper: FakeBootstrapper{mustVersion(b, testVersion)}}
			b.ResetTimer()
			var took []float64 // ms per enumeration, for testdata/bench.sh
			for b.Loop() {
				t0 := time.Now()
				ms, err := e.Enumerate(context.Background())
				took = append(took, float64(time.Since(t0).Microseconds())/1000)
				if err != nil || len(ms) != n {
					b.Fatalf("%d machines, %v", len(ms), err)
				}
			}
			slices.Sort(took)
			b.ReportMetric(took[len(took)/2], "median-ms")
			b.ReportMetric(took[0], "min-ms")
			b.ReportMetric(took[len(took)-1], "max-ms")
			b.ReportMetric(took[len(took)/2]*1e6/float64(n), "ns/machine")
			b.ReportMetric(float64(e.Snapshots()), "snapshots")
		})
	}
}

// TestEmptyToolchainID: the default --toolchain-id is empty; a machine
// bootstrapped with it must not be re-bootstrapped every time.
func TestEmptyToolchainID(t *testing.T) {
	root := btrfstest.Mount(t, 256<<20)
	makeMachine(t, filepath.Join(root, "v"), "m", "id-m")
	e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "",
		AgentVersion: mustVersion(t, testVersion), Bootstrapper: FakeBootstrapper{mustVersion(t, testVersion)}, Log: testLog(t)}
	for range 2 {
		if ms, err := e.Enumerate(context.Background()); err != nil || len(ms) != 1 {
			t.Fatalf("%d machines, %v", len(ms), err)
		}
	}
	if e.Snapshots() != 1 {
		t.Errorf("%d snapshots for two enumerations, want 1", e.Snapshots())
	}
}

// TestScanCacheSeesChanges: what a scan keeps from the last one (parsed
// manifests, directories known clean) never hides a change: a rewritten
// bootstrapped manifest, a machine link moved to a new image, a stale
// temporary snapshot appearing after a clean scan.
func TestScanCacheSeesChanges(t *testing.T) {
	root := btrfstest.Mount(t, 512<<20)
	dir := makeMachine(t, filepath.Join(root, "v"), "m", "id-m")
	bs := writeBootstrapped(t, dir, "tc", "id-m", "tcid", testVersion)
	e := &Enumerator{Root: root, ToolchainName: "tc", ToolchainID: "tcid", AgentVersion: mustVersion(t, testVersion), Log: testLog(t)}
	scan := func() ([]*Machine, []string) {
		t.Helper()
		ms, pending, err := e.Scan(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return ms, pending
	}
	if ms, pending := scan(); len(ms) != 1 || len(pending) != 0 {
		t.Fatalf("first scan: %d usable, %v pending", len(ms), pending)
	}
	// The bootstrapped snapshot now says another toolchain id (same size).
	btrfs.SetReadOnly(bs, false)
	data, _ := os.ReadFile(filepath.Join(bs, "manifest"))
	os.WriteFile(filepath.Join(bs, "manifest"), bytes.Replace(data, []byte("tcid"), []byte("tcxx"), 1), 0o644)
	btrfs.SetReadOnly(bs, true)
	if ms, pending := scan(); len(ms) != 0 || len(pending) != 1 {
		t.Fatalf("after the toolchain id changed: %d usable, %v pending; want a re-bootstrap", len(ms), pending)
	}
	// A new image behind the link: its manifest is read.
	img2 := filepath.Join(dir, "m-1.1")
	btrfs.Create(img2)
	mc := manifest.Machine{MachineHeader: manifest.MachineHeader{ID: "id-m2", Name: "x86_64-m", Summary: "m machine"}, Type: "kvm"}
	var b bytes.Buffer
	manifest.WriteStream(&b, "", mc.Pairs())
	os.WriteFile(filepath.Join(img2, "manifest"), b.Bytes(), 0o644)
	os.Remove(filepath.Join(dir, "m-1"))
	os.Symlink("m-1.1", filepath.Join(dir, "m-1"))
	writeBootstrappedAt(t, bs, "id-m2", "tcid")
	if ms, _ := scan(); len(ms) != 1 || ms[0].Manifest.Machine.ID != "id-m2" {
		t.Fatalf("after the link moved: %+v", ms)
	}
	// A stale temporary appears after a clean scan: the next scan deletes it.
	tmp := filepath.Join(dir, "m-tc~deadbeef")
	if err := btrfs.Snapshot(img2, tmp, false); err != nil {
		t.Fatal(err)
	}
	scan()
	if exists(tmp) {
		t.Fatal("a temporary created after a clean scan survived the next one")
	}
}

// writeBootstrappedAt rewrites the bootstrapped snapshot's manifest for
// another machine id.
func writeBootstrappedAt(t *testing.T, p, machineID, toolchainID string) {
	t.Helper()
	btrfs.SetReadOnly(p, false)
	bm := manifest.BootstrappedMachine{
		Machine:   manifest.Machine{MachineHeader: manifest.MachineHeader{ID: machineID, Name: "x86_64-m", Summary: "s"}, Type: "kvm"},
		Toolchain: manifest.Toolchain{ID: toolchainID},
		Bootstrap: manifest.Bootstrap{Versions: []manifest.PackageVersion{{Package: "bbot", Version: mustVersion(t, testVersion)}}},
	}
	var b bytes.Buffer
	bm.Serialize(&b)
	os.WriteFile(filepath.Join(p, "manifest"), b.Bytes(), 0o644)
	btrfs.SetReadOnly(p, true)
}
