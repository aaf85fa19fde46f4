package controller

import (
	"math/rand/v2"
	"testing"
)

func TestParseController(t *testing.T) {
	tests := []struct {
		arg      string
		url      string
		priority Priority
		bad      bool
	}{
		{"https://ci.cppget.org/?build-task", "https://ci.cppget.org/?build-task", 0, false},
		{"10=https://ci.cppget.org/?build-task", "https://ci.cppget.org/?build-task", 10, false},
		{"19999=http://x/?build-task&a=b", "http://x/?build-task&a=b", 19999, false},
		{"01234=http://x/", "http://x/", 1234, false},
		{"20000=http://x/", "", 0, true}, // F is 0 or 1
		{"99999=http://x/?build-task&a=b", "", 0, true},
		{"123456=http://x/", "", 0, true}, // 6 digits: no prefix, and not a URL
		{"http://x/?build-task&x=1=2", "http://x/?build-task&x=1=2", 0, false},
		{"=http://x/", "", 0, true},
		{"ftp://x/", "", 0, true},
	}
	for _, tc := range tests {
		c, err := ParseController(tc.arg)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted as %+v", tc.arg, c)
			}
			continue
		}
		if err != nil || c.URL != tc.url || c.Priority != tc.priority {
			t.Errorf("%q: got %+v, %v", tc.arg, c, err)
		}
	}
}

func TestOrderControllers(t *testing.T) {
	// 10005 is a boosted 5: the boost does not order it above 9.
	cs := []Controller{{"a", 1}, {"b", 5}, {"c", 1}, {"d", 10005}, {"e", 0}, {"f", 10000}}
	firsts := map[string]int{}
	for seed := uint64(0); seed < 200; seed++ {
		got := OrderControllers(cs, rand.New(rand.NewPCG(seed, 1)))
		for i := 1; i < len(got); i++ {
			if got[i].Priority.Order() > got[i-1].Priority.Order() {
				t.Fatalf("not by priority: %v", got)
			}
		}
		firsts[got[0].URL]++
	}
	// Equal priorities share the first place.
	if firsts["b"] == 0 || firsts["d"] == 0 || len(firsts) != 2 {
		t.Errorf("first places: %v", firsts)
	}
}
