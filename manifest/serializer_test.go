package manifest

import (
	"bytes"
	"errors"
	"testing"
)

// libbutl's comment() ends the line with std::endl, so each comment is on
// the stream when the call returns: these check the bytes after every call,
// with no flush but the serializer's own.

func TestSerializerCommentsOnly(t *testing.T) {
	var out bytes.Buffer
	s := NewSerializer(&out, "")
	want := ""
	for _, c := range []struct{ text, line string }{{"", "#\n"}, {"x", "# x\n"}, {"y z", "# y z\n"}} {
		if err := s.Comment(c.text); err != nil {
			t.Fatal(err)
		}
		want += c.line
		if out.String() != want {
			t.Fatalf("after Comment(%q): %q, want %q", c.text, out.String(), want)
		}
	}
}

func TestSerializerCommentsThenError(t *testing.T) {
	type call struct{ name, value string } // name "#": a comment
	tests := []struct {
		what  string
		calls []call
		want  string // bytes written when the last call fails
		err   string
	}{
		{"no version pair", []call{{"#", "c"}, {"a", "x"}}, "# c\n", "error: format version pair expected"},
		{"unsupported version", []call{{"#", ""}, {"#", "d"}, {"", "2"}}, "#\n# d\n", "error: unsupported format version 2"},
		// The version line before the comment is written too (libbutl's
		// endl flushed it); the failing pair writes nothing.
		{"bad name in body", []call{{"", "1"}, {"#", "c"}, {"#a", "x"}}, ": 1\n# c\n", "error: name starts with '#'"},
		{"bad value in body", []call{{"", "1"}, {"#", "c"}, {"a", "\xb0"}}, ": 1\n# c\n", "error: invalid value: invalid UTF-8 sequence first byte (0xB0)"},
		{"bad comment", []call{{"#", "c"}, {"#", "\xb0"}}, "# c\n", "error: invalid comment: invalid UTF-8 sequence first byte (0xB0)"},
		{"after eos", []call{{"#", "c"}, {"", ""}, {"#", "d"}}, "# c\n", "error: serialization after eos"},
	}
	for _, tc := range tests {
		var out bytes.Buffer
		s := NewSerializer(&out, "")
		var err error
		for i, c := range tc.calls {
			if c.name == "#" {
				err = s.Comment(c.value)
			} else {
				err = s.Next(c.name, c.value)
			}
			if (err != nil) != (i == len(tc.calls)-1) {
				t.Fatalf("%s: call %d (%q, %q): %v", tc.what, i, c.name, c.value, err)
			}
		}
		if err == nil || err.Error() != tc.err {
			t.Errorf("%s: error %v, want %s", tc.what, err, tc.err)
		}
		if out.String() != tc.want {
			t.Errorf("%s: wrote %q, want %q", tc.what, out.String(), tc.want)
		}
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// A comment that cannot be written fails the call that made it, and the
// serializer stays failed.
func TestSerializerCommentWriteError(t *testing.T) {
	broken := errors.New("disk full")
	s := NewSerializer(failingWriter{broken}, "")
	if err := s.Comment("c"); !errors.Is(err, broken) {
		t.Fatalf("Comment: %v, want %v", err, broken)
	}
	if err := s.Next("", "1"); !errors.Is(err, broken) {
		t.Fatalf("Next after a failed comment: %v, want %v", err, broken)
	}
}
