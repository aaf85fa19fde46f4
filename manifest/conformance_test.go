package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// conformanceDir holds the libbutl-produced vectors
// (testdata/conformance/manifest).
var conformanceDir = filepath.Join("..", "testdata", "conformance", "manifest")

// escape renders a string like the vectors do: \\, \n, \r, \t escaped.
func escape(s string) string {
	r := strings.NewReplacer(`\`, `\\`, "\n", `\n`, "\r", `\r`, "\t", `\t`)
	return r.Replace(s)
}

// unescape reverses escape and also decodes \xHH (serializer vectors).
func unescape(t *testing.T, s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		i++
		switch s[i] {
		case '\\':
			b = append(b, '\\')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'x':
			v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
			if err != nil {
				t.Fatalf("bad \\x escape in %q", s)
			}
			b = append(b, byte(v))
			i += 2
		default:
			t.Fatalf("bad escape in %q", s)
		}
	}
	return string(b)
}

// splitPair splits "name=value" at the first '=' that is not escaped. Names
// in the vectors never contain '='.
func splitPair(line string) (string, string) {
	i := strings.IndexByte(line, '=')
	if i < 0 {
		return line, ""
	}
	return line[:i], line[i+1:]
}

// parseTrace runs the parser over in and renders the .out format.
func parseTrace(in []byte) string {
	var b strings.Builder
	p := NewParser(bytes.NewReader(in), "")
	for {
		nv, err := p.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *ParseError
			if errors.As(err, &pe) {
				fmt.Fprintf(&b, "error: %d:%d: %s\n", pe.Line, pe.Column, pe.Description)
			} else {
				b.WriteString("error: " + err.Error() + "\n")
			}
			break
		}
		b.WriteString(escape(nv.Name) + "=" + escape(nv.Value) + "\n")
	}
	return b.String()
}

func TestConformanceParse(t *testing.T) {
	ins, _ := filepath.Glob(filepath.Join(conformanceDir, "*.in"))
	if len(ins) == 0 {
		t.Fatal("no parse vectors found")
	}
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), ".in")
		t.Run(name, func(t *testing.T) {
			input, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(in, ".in") + ".out")
			if err != nil {
				t.Fatal(err)
			}
			if got := parseTrace(input); got != string(want) {
				t.Errorf("input %q\n got:\n%s\nwant:\n%s", input, got, want)
			}
		})
	}
}

func TestConformanceSerialize(t *testing.T) {
	dir := filepath.Join(conformanceDir, "serialize")
	pairsFiles, _ := filepath.Glob(filepath.Join(dir, "*.pairs"))
	if len(pairsFiles) == 0 {
		t.Fatal("no serializer vectors found")
	}
	for _, pf := range pairsFiles {
		name := strings.TrimSuffix(filepath.Base(pf), ".pairs")
		t.Run(name, func(t *testing.T) {
			calls, err := os.ReadFile(pf)
			if err != nil {
				t.Fatal(err)
			}
			want, err := os.ReadFile(strings.TrimSuffix(pf, ".pairs") + ".txt")
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			s := NewSerializer(&out, "")
			s.LongLines = strings.HasSuffix(name, "-longlines")
			var serr error
			lines := strings.Split(string(calls), "\n")
			if lines[len(lines)-1] == "" {
				lines = lines[:len(lines)-1]
			}
			for _, line := range lines {
				n, v := splitPair(line)
				if n == "#" {
					serr = s.Comment(unescape(t, v))
				} else {
					serr = s.Next(unescape(t, n), unescape(t, v))
				}
				if serr != nil {
					break
				}
			}
			// No explicit flush: what libbutl has written by now (its
			// endl flushes) must be on the writer already.
			got := out.String()
			if serr != nil {
				got = serr.Error() + "\n"
			}
			if got != string(want) {
				t.Errorf("calls:\n%s\n got:\n%q\nwant:\n%q", calls, got, want)
			}
		})
	}
}
