package artifact

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// FuzzSplit: whatever upload.tar holds, Split does not panic, writes
// nothing outside its paths, and every archive it returns is a valid tar
// of its instance's directory only.
func FuzzSplit(f *testing.F) {
	f.Add(makeTar(f, []entry{{name: "upload/bindist/debian/a", data: []byte("a")}, {name: "upload/x/y/../../z", data: []byte("z")}}))
	f.Add(makeTar(f, []entry{{name: "upload/bindist/d/"}, {name: "upload/bindist/d/l", link: "/etc"}, {name: "./upload/bindist/e/f", data: []byte("f")}}))
	f.Add([]byte("garbage"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		as, _, err := Split(bytes.NewReader(data), func(string) bool { return true }, func(k int) string { return filepath.Join(dir, fmt.Sprintf("%d.tar", k)) })
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("not a CorruptError: %v", err)
			}
			if left := dirNames(t, dir); len(left) != 0 {
				t.Fatalf("left %v after %v", left, err)
			}
			return
		}
		if left := dirNames(t, dir); len(left) != len(as) {
			t.Fatalf("%d files for %d archives", len(left), len(as))
		}
		for _, a := range as {
			f, err := os.Open(a.Path)
			if err != nil {
				t.Fatal(err)
			}
			tr := tar.NewReader(f)
			files := 0
			for {
				h, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatalf("%s: %v", a.Path, err)
				}
				if !strings.HasPrefix(h.Name, a.Instance+"/") || slices.Contains(strings.Split(h.Name, "/"), "..") ||
					(h.Typeflag != tar.TypeReg && h.Typeflag != tar.TypeDir) {
					t.Fatalf("%s: member %q (%c)", a.Path, h.Name, h.Typeflag)
				}
				if h.Typeflag == tar.TypeReg {
					files++
				}
			}
			f.Close()
			if files == 0 || files != a.Files {
				t.Fatalf("%s: %d files, %d said", a.Path, files, a.Files)
			}
		}
	})
}
