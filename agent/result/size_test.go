package result

import (
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/build2/bbot-agent-go/manifest"
)

func serializedPair(t *testing.T, name, value string) int64 {
	var b bytes.Buffer
	s := manifest.NewSerializer(&b, "")
	s.Next("", "1")
	n := b.Len()
	if err := s.Next(name, value); err != nil {
		t.Fatalf("serialize %q: %v", value, err)
	}
	s.Next("", "")
	return int64(b.Len() - n - 4) // ": 1\n" is flushed with the pair
}

func TestPairSizeMatchesSerializer(t *testing.T) {
	alpha := []string{"a", "bc", " ", "\t", "\\", "\n", "\xc3\xa9", "\xe2\x82\xac", "word ", "longerword", strings.Repeat("x", 70), strings.Repeat("y ", 40)}
	rng := rand.New(rand.NewPCG(3, 4))
	names := []string{"a", "update-log", strings.Repeat("n", 40), "x-status"}
	for i := 0; i < 30000; i++ {
		var b strings.Builder
		for n := rng.IntN(60); n > 0; n-- {
			b.WriteString(alpha[rng.IntN(len(alpha))])
		}
		v := b.String()
		name := names[i%len(names)]
		want := serializedPair(t, name, v)
		if v == "" {
			want = int64(len(name) + 2)
		}
		// Feed in random pieces to exercise the window.
		z := newPairSizer(name)
		for q := v; q != ""; {
			k := 1 + rng.IntN(200)
			if k > len(q) {
				k = len(q)
			}
			z.WriteString(q[:k])
			q = q[k:]
		}
		if got := z.size(); got != want {
			t.Fatalf("%q %q: size %d, serializer %d", name, v, got, want)
		}
	}
}
