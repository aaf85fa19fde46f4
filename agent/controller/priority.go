package controller

import "fmt"

// Priority is bbot's controller URL priority, the decimal number [F]DCBA of
// a "<priority>=" prefix (absent = 0). Each of the digits D, C, B, A opens
// a level of stronger claims, level L covering the digits from its own up
// to D:
//
//   - A (level 1): plain preference: higher URLs are asked first.
//   - B (level 2): while a task of a higher B value runs, URLs of a lower
//     B value are not asked.
//   - C (level 3): a task may interrupt one running task of a lower C
//     value, for its machine or for its slot.
//   - D (level 4): a starting task interrupts every running task of a
//     lower D value.
//
// F (0 or 1) is not a level: 1 raises the task's CPU count to all
// hardware threads. It takes no part in ordering, so that 10000 (a boosted
// 0) does not sort above 9999 (see Order).
type Priority int

// MaxPriority is the largest valid priority: F 1, DCBA 9999.
const MaxPriority Priority = 19999

// levels is the number of ordering digits (DCBA).
const levels = 4

// Boost reports whether the F digit asks for all hardware threads.
func (p Priority) Boost() bool { return p/10000 == 1 }

// Order is the DCBA value by which controllers are ordered.
func (p Priority) Order() int { return int(p % 10000) }

// Level is the level-l value (l 1..4 for A..D): DCBA with the digits below
// l dropped, so that levels compare hierarchically (the C value of 1234 is
// 12, its B value 123).
func (p Priority) Level(l int) int {
	if l < 1 || l > levels {
		panic(fmt.Sprintf("priority level %d out of 1..%d", l, levels))
	}
	v := p.Order()
	for ; l > 1; l-- {
		v /= 10
	}
	return v
}

// parsePriority parses the digits of a "<priority>=" prefix (1 to 5).
func parsePriority(s string) (Priority, error) {
	var p Priority
	for _, c := range s {
		p = p*10 + Priority(c-'0')
	}
	if p > MaxPriority {
		return 0, fmt.Errorf("invalid priority '%s': its fifth digit (the CPU boost) must be 0 or 1", s)
	}
	return p, nil
}
