package manifest

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"unicode/utf8"
)

// makePositions strips the marker '§' from text and returns the 1-based
// line and code-point column where it stood (encoding/csv's reader_test
// technique), so the expected error position is written in the input.
func makePositions(text string) (string, uint64, uint64) {
	i := strings.Index(text, "§")
	if i < 0 {
		panic("no position marker")
	}
	before := text[:i]
	line := uint64(strings.Count(before, "\n") + 1)
	lastNL := strings.LastIndexByte(before, '\n')
	column := uint64(utf8.RuneCountInString(before[lastNL+1:]) + 1)
	return before + text[i+len("§"):], line, column
}

func TestParseErrorPositions(t *testing.T) {
	tests := []struct {
		input, description string
	}{
		{"§a:", "format version pair expected"},
		{":1\na§", "':' expected after name"},
		{":1\nабв §x: y", "':' expected after name"},
		{":1\naаа§\xFE:", "invalid manifest name: invalid UTF-8 sequence first byte (0xFE)"},
		{":1\na: xx§\x01", "invalid manifest value: invalid Unicode codepoint (control)"},
		{":1\na: x§\xD0", "invalid manifest value: unexpected end of stream"},
		{":1\n#\xD0\xB0\n§\xD0y:", "invalid manifest name: invalid UTF-8 sequence second byte (0x79 'y')"},
		{":1\n# x§\u200B\n", "invalid manifest: invalid Unicode codepoint (format)"},
		{":1\na: §\uE000", "invalid manifest value: invalid Unicode codepoint (private-use)"},
		{":1\na: §\uFDD0", "invalid manifest value: invalid Unicode codepoint (noncharacter)"},
		{":1\na: §\U00030000", "invalid manifest value: invalid Unicode codepoint (reserved)"},
		{":1\na: §\xF8", "invalid manifest: 5-byte length UTF-8 sequence"},
		{":1\r\r\n:§2", "unsupported format version 2"},
		{":1\na:b\nc§", "':' expected after name"},
	}
	for _, tc := range tests {
		input, line, column := makePositions(tc.input)
		p := NewParser(strings.NewReader(input), "m")
		var err error
		for err == nil {
			_, err = p.Next()
		}
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%q: got %v, want a ParseError", input, err)
			continue
		}
		want := &ParseError{Name: "m", Line: line, Column: column, Description: tc.description}
		if *pe != *want {
			t.Errorf("%q:\n got %s\nwant %s", input, pe, want)
		}
		if _, again := p.Next(); again != err {
			t.Errorf("%q: error not sticky: %v", input, again)
		}
	}
}

func TestParseErrorText(t *testing.T) {
	e := &ParseError{Name: "task.manifest", Line: 3, Column: 7, Description: "x"}
	if got, want := e.Error(), "task.manifest:3:7: error: x"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	e.Name = ""
	if got, want := e.Error(), "3:7: error: x"; got != want {
		t.Errorf("got %q want %q", got, want)
	}
	s := &SerializeError{Name: "n", Description: "d"}
	if s.Error() != "n: error: d" {
		t.Errorf("got %q", s.Error())
	}
}

func TestParsePositions(t *testing.T) {
	in := ":1\nname: value\n  second:\tv2\nml:\n\\\nline1\nline2\n\\\n"
	p := NewParser(strings.NewReader(in), "")
	var got []NameValue
	for {
		nv, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if nv.Name != "" {
			got = append(got, nv)
		}
	}
	want := []NameValue{
		{"name", "value", 2, 1, 2, 7},
		{"second", "v2", 3, 3, 3, 11},
		{"ml", "line1\nline2", 4, 1, 6, 1},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("pair %d: got %+v want %+v", i, got[i], want[i])
		}
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestParseReadError(t *testing.T) {
	_, err := NewParser(failingReader{}, "x").Next()
	if !errors.Is(err, ErrReadFailed) {
		t.Fatalf("got %v, want ErrReadFailed", err)
	}
}

// pairsOf parses a whole stream into its pairs (start/end markers included).
func pairsOf(data []byte) ([]NameValue, error) {
	p := NewParser(bytes.NewReader(data), "")
	var r []NameValue
	for {
		nv, err := p.Next()
		if err == io.EOF {
			return r, nil
		}
		if err != nil {
			return r, err
		}
		r = append(r, NameValue{Name: nv.Name, Value: nv.Value})
	}
}

func serializePairs(pairs []NameValue, longLines bool) ([]byte, error) {
	var b bytes.Buffer
	s := NewSerializer(&b, "")
	s.LongLines = longLines
	for _, nv := range pairs {
		if err := s.Next(nv.Name, nv.Value); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

func FuzzParse(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		pairsOf(data) // must not panic
	})
}

func FuzzRoundtrip(f *testing.F) {
	for _, seed := range fuzzSeeds {
		f.Add([]byte(seed), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, longLines bool) {
		first, err := pairsOf(data)
		if err != nil {
			return
		}
		out, err := serializePairs(first, longLines)
		if err != nil {
			t.Fatalf("serializing parsed pairs %+v: %v", first, err)
		}
		second, err := pairsOf(out)
		if err != nil {
			t.Fatalf("re-parsing %q: %v", out, err)
		}
		if len(first) != len(second) {
			t.Fatalf("pairs differ:\n%+v\n%+v\nvia %q", first, second, out)
		}
		for i := range first {
			if first[i] != second[i] {
				t.Fatalf("pair %d: %+v != %+v via %q", i, first[i], second[i], out)
			}
		}
	})
}

var fuzzSeeds = []string{
	"",
	":1\na: b\n",
	":1\na:x\\\n\\\ny\\\n\\\nz",
	":1\na:\\\nx\\\\\\\n\\\nb:",
	":1\na:\\\n \n#\t\n\\",
	":1\na:x\n:\nb:y\n:\nc:z\n",
	": 1\nsession: " + strings.Repeat("0123456789 ", 20) + "\n",
	":1\r\nname: v\r\n\rx:  y  \\\\\n",
	":1\n" + strings.Repeat("n", 40) + ": value\n",
	":1\nа: ббб\\\\\\\n",
}

func TestSanitize(t *testing.T) {
	for in, want := range map[string]string{
		"plain\ttext\r\n":    "plain\ttext\r\n",
		"nul\x00here":        "nul\uFFFDhere",
		"bad\xffutf8":        "bad\uFFFDutf8",
		"esc\x1b[0m":         "esc\uFFFD[0m",
		"zero\u200bwidth":    "zero\uFFFDwidth",
		"ünïcode is fine 日本": "ünïcode is fine 日本",
	} {
		got := Sanitize(in)
		if got != want {
			t.Errorf("Sanitize(%q) = %q, want %q", in, got, want)
		}
		if _, err := serializePairs([]NameValue{{Value: "1"}, {Name: "log", Value: got}, {}, {}}, false); err != nil {
			t.Errorf("sanitized %q does not serialize: %v", in, err)
		}
	}
}
