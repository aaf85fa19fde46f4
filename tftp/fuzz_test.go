package tftp

import (
	"errors"
	"path"
	"strings"
	"testing"
)

// FuzzCleanName: CleanName never panics; a name it accepts is relative and
// clean, with no ".." element, control character or backslash, so it
// cannot leave the mapped directory; and cleaning it again changes nothing.
func FuzzCleanName(f *testing.F) {
	for _, s := range []string{"manifest", "/manifest", "a/b", "a//b", "./a", "", "/", "//x", "..", "a/..", "../a",
		"a\\b", "a\nb", "\x00", "a/./b/", "/./..", "result.manifest.tmp", "a/b/../c", ".../x", "\x7f", "é/ü"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		clean, err := CleanName(name)
		if err != nil {
			if !errors.Is(err, ErrBadName) || clean != "" {
				t.Fatalf("%q: refused with %q, %v", name, clean, err)
			}
			return
		}
		if clean == "" || clean == "." || strings.HasPrefix(clean, "/") || path.Clean(clean) != clean {
			t.Fatalf("%q: cleaned to %q: not a clean relative name", name, clean)
		}
		for _, el := range strings.Split(clean, "/") {
			if el == ".." || el == "" {
				t.Fatalf("%q: cleaned to %q: element %q", name, clean, el)
			}
		}
		for i := 0; i < len(clean); i++ {
			if c := clean[i]; c < 0x20 || c == 0x7f || c == '\\' {
				t.Fatalf("%q: cleaned to %q: byte %#x", name, clean, c)
			}
		}
		if !strings.HasPrefix(path.Join("/root", clean), "/root/") {
			t.Fatalf("%q: cleaned to %q: leaves the directory", name, clean)
		}
		if again, err := CleanName(clean); err != nil || again != clean {
			t.Fatalf("%q: cleaned to %q, then to %q, %v", name, clean, again, err)
		}
	})
}
