package manifest

import "slices"

// Fields is a manifest's pairs in order. Manifests that the controller sends
// are kept as Fields so that every pair, known or not, reaches the worker in
// its original place; the typed views read from it.
type Fields []NameValue

// Get returns the first value of name.
func (f Fields) Get(name string) (string, bool) {
	for _, nv := range f {
		if nv.Name == name {
			return nv.Value, true
		}
	}
	return "", false
}

// Value returns the first value of name or "".
func (f Fields) Value(name string) string {
	v, _ := f.Get(name)
	return v
}

// All returns every value of name in order.
func (f Fields) All(name string) []string {
	var r []string
	for _, nv := range f {
		if nv.Name == name {
			r = append(r, nv.Value)
		}
	}
	return r
}

// Replace replaces every pair named name with one pair per value. The new
// pairs take the place of the first old one; if there was none they are
// inserted according to order (the canonical name order of the manifest).
func (f *Fields) Replace(name string, values []string, order []string) {
	at := -1
	kept := (*f)[:0:0]
	for _, nv := range *f {
		if nv.Name == name {
			if at < 0 {
				at = len(kept)
			}
			continue
		}
		kept = append(kept, nv)
	}
	if at < 0 {
		at = insertionPoint(kept, name, order)
	}
	add := make([]NameValue, len(values))
	for i, v := range values {
		add[i] = NameValue{Name: name, Value: v}
	}
	*f = slices.Insert(kept, at, add...)
}

// Set makes value the only value of name (see Replace).
func (f *Fields) Set(name, value string, order []string) {
	f.Replace(name, []string{value}, order)
}

// Delete removes every pair named name.
func (f *Fields) Delete(name string) {
	f.Replace(name, nil, nil)
}

// insertionPoint returns the index right after the last pair whose name
// comes no later than name in order (so unknown pairs that follow a known
// one stay attached to it); names not in order go last.
func insertionPoint(pairs []NameValue, name string, order []string) int {
	rank := slices.Index(order, name)
	if rank < 0 {
		return len(pairs)
	}
	at := 0
	for i, nv := range pairs {
		if r := slices.Index(order, nv.Name); r >= 0 && r <= rank {
			at = i + 1
		}
	}
	return at
}
