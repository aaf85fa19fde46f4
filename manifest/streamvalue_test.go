package manifest

import (
	"bytes"
	"io"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// pairsOf parses src with Next or (streaming every value) NextTo.
func streamPairs(src string, stream bool) ([]NameValue, error) {
	p := NewParser(strings.NewReader(src), "s")
	var out []NameValue
	for {
		var b bytes.Buffer
		var nv NameValue
		var err error
		if stream {
			picked := false
			nv, err = p.NextTo(func(string) io.Writer { picked = true; return &b })
			if picked {
				nv.Value = b.String()
			}
		} else {
			nv, err = p.Next()
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		out = append(out, nv)
	}
}

func TestNextToMatchesNext(t *testing.T) {
	fixed := []string{
		": 1\na: b\n",
		": 1\na: b  \t\nc:\\\nx\\\\\n\\\\\n\\\n",
		": 1\na:\n\\\nline one\n\\line \\\\two\\\n\\\n",
		": 1\na: x\\\ny\\\\\n",
		": 1\na:\\\n" + strings.Repeat("long ascii run\t", 10000) + "\n\\\n",
		": 1\na:\\\nh\xc3\xa9llo\r\nw\rx\n\\\n:\nb: c\n",
		": 1\na:\\\nbad \x01 byte\n\\\n",
		": 1\na:\\\ncut \xc3",
		": 1\na: \\\\\n",
		": 1\na:\\\n\\\n",
		": 1\na:\\",
		": 1\na:\\\n" + strings.Repeat("l1 x\nl2\t\n\\\\y\n", 5000) + "\n\\\nb: c\n",
	}
	alpha := []string{"a", "b", " ", "\t", "\\", "\n", "\r", ":", "#", "\xc3\xa9", "\xff", "\x01", "\n\\\n", ":\\\n", "xyzxyzxyz"}
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		var b strings.Builder
		b.WriteString(": 1\n")
		for n := rng.IntN(40); n > 0; n-- {
			b.WriteString(alpha[rng.IntN(len(alpha))])
		}
		fixed = append(fixed, b.String())
	}
	for _, src := range fixed {
		want, werr := streamPairs(src, false)
		got, gerr := streamPairs(src, true)
		if !reflect.DeepEqual(want, got) || (werr == nil) != (gerr == nil) || (werr != nil && werr.Error() != gerr.Error()) {
			t.Fatalf("%q:\nNext   %v %v\nNextTo %v %v", src, want, werr, got, gerr)
		}
	}
}
