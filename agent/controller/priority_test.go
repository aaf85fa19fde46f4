package controller

import (
	"slices"
	"strings"
	"testing"
)

func TestPriorityLevels(t *testing.T) {
	for _, tc := range []struct {
		p     Priority
		boost bool
		order int
		abcd  []int // Level(1..4)
	}{
		{0, false, 0, []int{0, 0, 0, 0}},
		{1234, false, 1234, []int{1234, 123, 12, 1}},
		{100, false, 100, []int{100, 10, 1, 0}},
		{9999, false, 9999, []int{9999, 999, 99, 9}},
		{10000, true, 0, []int{0, 0, 0, 0}},
		{11234, true, 1234, []int{1234, 123, 12, 1}},
	} {
		levels := []int{tc.p.Level(1), tc.p.Level(2), tc.p.Level(3), tc.p.Level(4)}
		if tc.p.Boost() != tc.boost || tc.p.Order() != tc.order || !slices.Equal(levels, tc.abcd) {
			t.Errorf("%d: boost %v, order %d, levels %v; want %v, %d, %v",
				tc.p, tc.p.Boost(), tc.p.Order(), levels, tc.boost, tc.order, tc.abcd)
		}
	}
}

func TestPriorityBadBoost(t *testing.T) {
	_, err := ParseController("20000=http://x/?build-task")
	if err == nil || !strings.Contains(err.Error(), "fifth digit") {
		t.Errorf("got %v", err)
	}
}
