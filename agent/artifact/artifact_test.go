package artifact

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// entry is one member of a test archive: a directory (name ends in "/"),
// a file (data) or a symbolic link (link).
type entry struct {
	name string
	data []byte
	link string
	mode int64
}

var mtime = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func makeTar(t testing.TB, entries []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, ModTime: mtime, Uname: "worker", Uid: 1000}
		switch {
		case strings.HasSuffix(e.name, "/"):
			h.Typeflag = tar.TypeDir
		case e.link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, e.link
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(e.data))
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(e.data)
	}
	tw.Close()
	return b.Bytes()
}

func random(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// member is what readTar found.
type member struct {
	name string
	typ  byte
	mode int64
	data string
}

func readTar(t testing.TB, path string) []member {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var ms []member
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ms
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		ms = append(ms, member{h.Name, h.Typeflag, h.Mode, string(data)})
	}
}

func bindistOnly(typ string) bool { return typ == "bindist" }

func TestSplit(t *testing.T) {
	deb, rpm := random(1, 100<<10), random(2, 300<<10)
	upload := makeTar(t, []entry{
		{name: "upload/"},
		{name: "upload/bindist/"},
		{name: "upload/bindist/debian/", mode: 0o750},
		{name: "upload/bindist/debian/bindist-result.manifest", data: []byte(": 1\nos-release-name-id: debian\n")},
		{name: "upload/bindist/fedora/sub/libhello.rpm", data: rpm, mode: 0o4755}, // no entry for fedora/ itself
		{name: "upload/bindist/debian/libhello.deb", data: deb},
		{name: "upload/bindist/debian/link", link: "libhello.deb"},
		{name: "upload/bindist/empty/"},
		{name: "upload/bindist/empty/only-dirs/"},
		{name: "./upload/bindist/debian/extra", data: []byte("x")},
		{name: "upload/other/x/file", data: []byte("y")},
		{name: "upload/other/x/more", data: []byte("z")},
		{name: "upload/bindist/b@d/f", data: []byte("b")},
		{name: "upload/bindist/stray", data: []byte("s")},
		{name: "README", data: []byte("r")},
		{name: "upload/bindist/debian/../../../etc/passwd", data: []byte("p")},
	})
	dir := t.TempDir()
	archives, notes, err := Split(bytes.NewReader(upload), bindistOnly, func(k int) string { return filepath.Join(dir, fmt.Sprintf("e.up%d.tar", k)) })
	if err != nil {
		t.Fatal(err)
	}
	if len(archives) != 2 || archives[0].Instance != "debian" || archives[1].Instance != "fedora" {
		t.Fatalf("archives %+v", archives)
	}
	want := map[string][]member{
		"debian": {
			{"debian/", tar.TypeDir, 0o750, ""},
			{"debian/bindist-result.manifest", tar.TypeReg, 0o644, ": 1\nos-release-name-id: debian\n"},
			{"debian/libhello.deb", tar.TypeReg, 0o644, string(deb)},
			{"debian/extra", tar.TypeReg, 0o644, "x"},
		},
		"fedora": {
			{"fedora/", tar.TypeDir, 0o755, ""},
			{"fedora/sub/libhello.rpm", tar.TypeReg, 0o755, string(rpm)}, // setuid dropped
		},
	}
	for _, a := range archives {
		data, err := os.ReadFile(a.Path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if a.Type != "bindist" || a.Size != int64(len(data)) || a.SHA256 != hex.EncodeToString(sum[:]) || a.Name() != a.Instance+".tar" {
			t.Errorf("%s: %+v, file of %d bytes", a.Instance, a, len(data))
		}
		got := readTar(t, a.Path)
		if fmt.Sprint(got) != fmt.Sprint(want[a.Instance]) {
			t.Errorf("%s: members\n%v\nwant\n%v", a.Instance, names(got), names(want[a.Instance]))
		}
		if files := len(want[a.Instance]) - 1; a.Files != files {
			t.Errorf("%s: %d files, want %d", a.Instance, a.Files, files)
		}
		// As brep's handler does: tar -xf <archive> -C <dir>, then
		// <dir>/<instance>/...
		if tarBin, err := exec.LookPath("tar"); err == nil {
			x := t.TempDir()
			if out, err := exec.Command(tarBin, "-xf", a.Path, "-C", x).CombinedOutput(); err != nil {
				t.Fatalf("tar -xf: %v\n%s", err, out)
			}
			for _, m := range want[a.Instance] {
				if m.typ == tar.TypeReg {
					if data, err := os.ReadFile(filepath.Join(x, m.name)); err != nil || string(data) != m.data {
						t.Errorf("extracted %s: %d bytes, %v", m.name, len(data), err)
					}
				}
			}
		}
	}
	wantNotes := []string{
		"upload type other not uploaded (instance x, 2 files): the task has no other-upload-url",
		"upload.tar: entries not under upload/<type>/<instance>/ left out: upload/bindist/stray, README, upload/bindist/debian/../../../etc/passwd",
		"upload.tar: entries that are neither files nor directories left out: upload/bindist/debian/link (symbolic link)",
		"upload.tar: entries whose type or instance name cannot be used (letters, digits, _ . + -, at most 64) left out: upload/bindist/b@d/f",
	}
	if strings.Join(notes, "\n") != strings.Join(wantNotes, "\n") {
		t.Errorf("notes:\n%s\nwant:\n%s", strings.Join(notes, "\n"), strings.Join(wantNotes, "\n"))
	}
	if left := dirNames(t, dir); strings.Join(left, " ") != "e.up0.tar e.up1.tar" {
		t.Errorf("files %v", left)
	}
}

func names(ms []member) []string {
	var n []string
	for _, m := range ms {
		n = append(n, fmt.Sprintf("%s(%c,%o,%d)", m.name, m.typ, m.mode, len(m.data)))
	}
	return n
}

func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n []string
	for _, e := range ents {
		n = append(n, e.Name())
	}
	return n
}

// TestSplitCorrupt: a truncated or garbage upload.tar is a CorruptError
// and leaves nothing written; an empty one holds no artifacts.
func TestSplitCorrupt(t *testing.T) {
	good := makeTar(t, []entry{
		{name: "upload/bindist/debian/a", data: random(3, 50000)},
		{name: "upload/bindist/fedora/b", data: random(4, 50000)},
	})
	for name, data := range map[string][]byte{
		"truncated in a file": good[:70000],
		"garbage":             bytes.Repeat([]byte("not a tar archive\n"), 100),
		"bad checksum":        append(append([]byte{}, good[:148]...), append([]byte("00000000"), good[156:]...)...),
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			as, notes, err := Split(bytes.NewReader(data), bindistOnly, func(k int) string { return filepath.Join(dir, fmt.Sprintf("%d.tar", k)) })
			var ce *CorruptError
			if !errors.As(err, &ce) || as != nil || notes != nil {
				t.Fatalf("%v, %v, %v", as, notes, err)
			}
			t.Logf("%v", err)
			if left := dirNames(t, dir); len(left) != 0 {
				t.Errorf("left %v", left)
			}
		})
	}
	as, notes, err := Split(bytes.NewReader(nil), bindistOnly, func(int) string { t.Fatal("no archive expected"); return "" })
	if err != nil || len(as) != 0 || len(notes) != 0 {
		t.Errorf("empty upload.tar: %v, %v, %v", as, notes, err)
	}
}

// TestSplitHostFault: a failure to write an archive is the host's, not a
// corrupt upload.tar.
func TestSplitHostFault(t *testing.T) {
	data := makeTar(t, []entry{{name: "upload/bindist/debian/a", data: []byte("a")}})
	_, _, err := Split(bytes.NewReader(data), bindistOnly, func(int) string { return "/nonexistent/dir/0.tar" })
	var ce *CorruptError
	if err == nil || errors.As(err, &ce) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("error %v", err)
	}
}

// TestSplitMaxArchives: instances beyond MaxArchives are left out, said
// once.
func TestSplitMaxArchives(t *testing.T) {
	var es []entry
	for i := range MaxArchives + 6 {
		es = append(es, entry{name: fmt.Sprintf("upload/bindist/i%03d/f", i), data: []byte("f")}, entry{name: fmt.Sprintf("upload/bindist/i%03d/g", i), data: []byte("g")})
	}
	dir := t.TempDir()
	as, notes, err := Split(bytes.NewReader(makeTar(t, es)), bindistOnly, func(k int) string { return filepath.Join(dir, fmt.Sprintf("%d.tar", k)) })
	if err != nil || len(as) != MaxArchives {
		t.Fatalf("%d archives, %v", len(as), err)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "instances beyond the first 64 left out: bindist/i064, bindist/i065, bindist/i066, bindist/i067, bindist/i068, bindist/i069") {
		t.Errorf("notes %q", notes)
	}
}

// TestSplitSparse: a sparse file (GNU tar --sparse) would expand into its
// full size, holes and all: it is left out with a note, and the split
// writes about what it read, not 300 MiB.
func TestSplitSparse(t *testing.T) {
	if _, err := exec.LookPath("tar"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("GNU tar is needed to make sparse archives")
		}
		t.Skip("tar not installed")
	}
	dir := t.TempDir()
	inst := filepath.Join(dir, "upload", "bindist", "debian")
	os.MkdirAll(inst, 0o755)
	os.WriteFile(filepath.Join(inst, "small"), []byte("kept"), 0o644)
	big, _ := os.Create(filepath.Join(inst, "holes"))
	big.Truncate(300 << 20)
	big.Close()
	for _, format := range []string{"--format=gnu", "--format=posix"} {
		tarball := filepath.Join(dir, "upload"+format[9:]+".tar")
		cmd := exec.Command("tar", "--sparse", format, "-cf", tarball, "upload")
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("tar: %v %s", err, out)
		}
		f, _ := os.Open(tarball)
		fi, _ := f.Stat()
		out := t.TempDir()
		archives, notes, err := Split(f, bindistOnly, func(k int) string { return filepath.Join(out, fmt.Sprintf("%d.tar", k)) })
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", format, err)
		}
		var written int64
		for _, a := range archives {
			written += a.Size
		}
		if written > fi.Size()+1<<20 {
			t.Errorf("%s: a %d-byte upload.tar wrote %d bytes", format, fi.Size(), written)
		}
		if !strings.Contains(strings.Join(notes, "\n"), "holes (sparse file)") {
			t.Errorf("%s: no note for the sparse file: %q", format, notes)
		}
	}
}

// TestSplitNotesBounded: long names and many refused instances do not make
// notes that crowd out the worker's logs.
func TestSplitNotesBounded(t *testing.T) {
	var es []entry
	long := strings.Repeat("n", 100000)
	for i := range 200 {
		es = append(es, entry{name: fmt.Sprintf("upload/other/i%d/f", i), data: []byte("x")})
		es = append(es, entry{name: "outside/" + long + fmt.Sprint(i), data: []byte("x")})
	}
	out := t.TempDir()
	_, notes, err := Split(bytes.NewReader(makeTar(t, es)), bindistOnly, func(k int) string { return filepath.Join(out, fmt.Sprintf("%d.tar", k)) })
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Join(notes, "\n")); n > 8<<10 {
		t.Fatalf("%d bytes of notes", n)
	}
	if !strings.Contains(strings.Join(notes, "\n"), "and 190 more instances") {
		t.Errorf("notes do not say how many more: %q", notes)
	}
}
