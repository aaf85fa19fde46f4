package controller

import (
	"fmt"
	"math/rand/v2"
	"net/url"
	"regexp"
	"slices"
)

// Controller is one controller task URL with its priority.
type Controller struct {
	URL      string
	Priority Priority
}

// priorityPrefix matches bbot's "<priority>=" URL prefix; "?build-task&x=y"
// has no such prefix.
var priorityPrefix = regexp.MustCompile(`^([0-9]{1,5})=`)

// ParseController parses "[<priority>=]<url>".
func ParseController(arg string) (Controller, error) {
	c := Controller{URL: arg}
	if m := priorityPrefix.FindStringSubmatch(arg); m != nil {
		p, err := parsePriority(m[1])
		if err != nil {
			return c, fmt.Errorf("controller URL '%s': %w", arg, err)
		}
		c.Priority, c.URL = p, arg[len(m[0]):]
	}
	u, err := url.Parse(c.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return c, fmt.Errorf("invalid controller URL '%s': expected [<priority>=]http(s)://host/...", arg)
	}
	return c, nil
}

// OrderControllers returns the controllers by descending priority (its
// DCBA value: the boost digit does not order), shuffled among equal
// priorities so that equal controllers share the load.
func OrderControllers(cs []Controller, r *rand.Rand) []Controller {
	out := make([]Controller, len(cs))
	copy(out, cs)
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	// A stable sort keeps the shuffled order within a priority.
	slices.SortStableFunc(out, func(a, b Controller) int { return b.Priority.Order() - a.Priority.Order() })
	return out
}
