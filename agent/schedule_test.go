package agent

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/build2/bbot-agent-go/agent/controller"
)

// Priorities of the tests, by their highest non-zero level.
const (
	prioA = 5    // A 5
	prioB = 50   // B 5
	prioC = 300  // C 3
	prioD = 4000 // D 4
)

func TestSchedulePlanAsk(t *testing.T) {
	for _, tc := range []struct {
		name          string
		p             controller.Priority
		running       []runningTask
		free          int
		ask           bool
		interruptible []string
	}{
		{"idle agent", 0, nil, 2, true, nil},
		{"B reservation hides lower B even with free slots", prioA, []runningTask{{0, "m1", prioB}}, 1, false, nil},
		{"B reservation also hides a higher-C candidate", prioC, []runningTask{{0, "m1", 0}, {1, "m2", 1000}}, 1, false, nil},
		{"equal B is asked", prioB, []runningTask{{0, "m1", prioB}}, 1, true, nil},
		{"same B value (A differs) is asked", 55, []runningTask{{0, "m1", 51}}, 1, true, nil},
		{"free slot: lower C machine offered", prioC, []runningTask{{0, "m1", 0}, {1, "m2", prioC}}, 1, true, []string{"m1"}},
		{"free slot: same C value not offered", 399, []runningTask{{0, "m1", 301}}, 1, true, nil},
		{"full: lower C makes it asked", prioC, []runningTask{{0, "m1", prioA}, {1, "m2", prioC}}, 0, true, []string{"m1"}},
		{"full: equal priorities do not interrupt", prioC, []runningTask{{0, "m1", prioC}}, 0, false, nil},
		{"full: 0 never interrupts", 0, []runningTask{{0, "m1", 0}}, 0, false, nil},
		{"full: A does not interrupt", prioA, []runningTask{{0, "m1", 0}}, 0, false, nil},
		{"full: B does not interrupt", prioB, []runningTask{{0, "m1", 0}}, 0, false, nil},
		{"full: D interrupts lower C", prioD, []runningTask{{0, "m1", prioC}, {1, "m2", prioD}}, 0, true, []string{"m1"}},
		{"boost does not interrupt", 10000, []runningTask{{0, "m1", 0}}, 0, false, nil},
		{"machine kept by one of its tasks", prioC, []runningTask{{0, "m1", 0}, {1, "m1", prioC}}, 0, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ask, interruptible := planAsk(tc.p, tc.running, tc.free)
			got := slices.Sorted(maps.Keys(interruptible))
			if ask != tc.ask || !slices.Equal(got, tc.interruptible) {
				t.Errorf("ask %v, interruptible %v; want %v, %v", ask, got, tc.ask, tc.interruptible)
			}
			for m, v := range interruptible {
				if !v {
					t.Errorf("machine %s listed but false", m)
				}
			}
		})
	}
}

func TestSchedulePlanStart(t *testing.T) {
	for _, tc := range []struct {
		name    string
		p       controller.Priority
		machine string
		running []runningTask
		free    int
		victims []int
		ok      bool
	}{
		{"C, free slot, machine free: nothing interrupted", prioC, "m2", []runningTask{{0, "m1", 0}}, 1, nil, true},
		{"C, machine busy with lower C", prioC, "m1", []runningTask{{0, "m1", 0}, {1, "m2", 0}}, 1, []int{0}, true},
		{"busy with equal priority: refused", prioC, "m1", []runningTask{{0, "m1", prioC}}, 1, nil, false},
		{"busy with same C value: refused", 399, "m1", []runningTask{{0, "m1", 301}}, 1, nil, false},
		{"0 never interrupts", 0, "m1", []runningTask{{0, "m1", 0}}, 1, nil, false},
		{"full: the lowest priority goes", prioC, "m3", []runningTask{{0, "m1", 200}, {1, "m2", 100}}, 0, []int{1}, true},
		{"full: by order, not only C", prioC, "m3", []runningTask{{0, "m1", 250}, {1, "m2", 199}}, 0, []int{1}, true},
		{"full: ties go to the lowest slot", prioC, "m3", []runningTask{{2, "m1", 100}, {0, "m2", 100}, {1, "m4", 100}}, 0, []int{0}, true},
		{"full: boost does not lower", prioC, "m3", []runningTask{{0, "m1", 10100}, {1, "m2", 150}}, 0, []int{0}, true},
		{"full, busy machine: only its task", prioC, "m2", []runningTask{{0, "m1", 0}, {1, "m2", 100}}, 0, []int{1}, true},
		{"full, nothing lower: refused", prioC, "m2", []runningTask{{0, "m1", prioC}}, 0, nil, false},
		{"full, A does not interrupt", prioA, "m2", []runningTask{{0, "m1", 0}}, 0, nil, false},
		{"D with free slots interrupts lower D", prioD, "m4", []runningTask{{0, "m1", 0}, {1, "m2", prioD}, {2, "m3", prioC}}, 1, []int{0, 2}, true},
		{"D, busy machine: no duplicate", prioD, "m1", []runningTask{{1, "m1", 0}, {0, "m2", prioA}}, 1, []int{0, 1}, true},
		{"D, full: one for the slot and the lower D", prioD, "m3", []runningTask{{1, "m1", 3000}, {0, "m2", 100}, {2, "m4", 4100}}, 0, []int{0, 1}, true},
		{"same D value: only C applies", 4999, "m2", []runningTask{{0, "m1", prioD}}, 1, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			victims, ok := planStart(tc.p, tc.machine, tc.running, tc.free)
			if ok != tc.ok || !slices.Equal(victims, tc.victims) {
				t.Errorf("victims %v, ok %v; want %v, %v", victims, ok, tc.victims, tc.ok)
			}
		})
	}
}

// Whatever planAsk offers, planStart can start, interrupting only tasks of
// a lower C value and never one of a higher B value.
func TestScheduleAskStartAgree(t *testing.T) {
	prios := []controller.Priority{0, prioA, prioB, 55, prioC, 399, prioD, 4999, 10000, 10300}
	var configs [][]runningTask
	for _, a := range prios {
		configs = append(configs, []runningTask{{0, "m0", a}})
		for _, b := range prios {
			configs = append(configs, []runningTask{{0, "m0", a}, {1, "m1", b}})
		}
	}
	for _, running := range configs {
		for free := 0; free <= 1; free++ {
			for _, p := range prios {
				ask, interruptible := planAsk(p, running, free)
				if !ask {
					continue
				}
				offered := slices.Sorted(maps.Keys(interruptible))
				if free > 0 {
					offered = append(offered, "free")
				}
				if len(offered) == 0 {
					t.Errorf("p %d, %v, free %d: asked with nothing to offer", p, running, free)
				}
				for _, m := range offered {
					victims, ok := planStart(p, m, running, free)
					where := fmt.Sprintf("p %d, machine %s, %v, free %d: victims %v", p, m, running, free, victims)
					if !ok {
						t.Errorf("%s: refused an offered machine", where)
					}
					for _, t0 := range running {
						if !slices.Contains(victims, t0.Slot) {
							continue
						}
						if p.Level(3) <= t0.Priority.Level(3) || t0.Priority.Level(2) > p.Level(2) {
							t.Errorf("%s: interrupts %v", where, t0)
						}
					}
				}
			}
		}
	}
}
