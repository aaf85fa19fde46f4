package result

import "unicode/utf8"

// chunkSim counts the bytes manifest.Serializer writes for one newline-free
// chunk of a value (its writeChunk): 78-column wrapping with "\<newline>",
// breaking at a blank past column 57, never after a backslash or inside a
// UTF-8 sequence, and a trailing backslash doubled. It is fed the chunk a
// byte at a time and keeps only a small look-ahead window.
type chunkSim struct {
	win  []byte
	pos  int // next byte of win to process
	col  int
	prev byte
	n    int64
}

// lookahead is what a byte needs after it: the blank rule looks at most 79
// bytes ahead, the column rule one.
const lookahead = 81

func (c *chunkSim) reset(col int) {
	c.win, c.pos, c.col, c.prev, c.n = c.win[:0], 0, col, 0, 0
}

func (c *chunkSim) write(p []byte) {
	c.win = append(c.win, p...)
	if len(c.win)-c.pos > 4*lookahead {
		c.process(len(c.win) - lookahead)
		n := copy(c.win, c.win[c.pos:])
		c.win, c.pos = c.win[:n], 0
	}
}

// process handles the bytes before index to; when to == len(win) the chunk
// ends there.
func (c *chunkSim) process(to int) {
	v, end := c.win, len(c.win)
	for i := c.pos; i < to; i++ {
		b := v[i]
		// Fast path: plain ASCII before column 76 can neither break nor
		// be broken before (a blank may, and needs the look-ahead).
		if b < 0x80 && b != ' ' && b != '\t' && c.col < 76 {
			c.n++
			c.col++
			c.prev = b
			continue
		}
		if c.prev != '\\' && b&0xC0 != 0x80 {
			brk := false
			if b == ' ' || b == '\t' {
				for w := i + 1; ; w++ {
					if w == end || v[w] == ' ' || v[w] == '\t' {
						limit := 77
						if w == end {
							limit = 78
						}
						if c.col+(w-i) > limit {
							brk = c.col > 57
						}
						break
					}
					if w-i > 79 {
						brk = c.col > 57
						break
					}
				}
			}
			limit := 77
			if i+1 == end {
				limit = 78
			}
			if c.col >= limit {
				brk = true
			}
			if brk {
				c.n += 2
				c.col = 0
			}
		}
		c.n++
		if i+1 == end || v[i+1]&0xC0 != 0x80 {
			c.col++
		}
		c.prev = b
	}
	c.pos = to
}

// finish ends the chunk and returns its size.
func (c *chunkSim) finish() int64 {
	c.process(len(c.win))
	n := c.n
	if len(c.win) > 0 && c.win[len(c.win)-1] == '\\' {
		n++
	} else if len(c.win) == 0 && c.prev == '\\' {
		n++
	}
	return n
}

// pairSizer computes the exact size of a serialized name/value pair (value
// streamed through Write). Values must hold no CR (parsed values never do).
type pairSizer struct {
	name       string
	nameCol    int // width of "name:" in columns
	raw        int64
	first      byte
	last       byte
	nl         bool
	ml         chunkSim // the multi-line form's current line
	mlN        int64    // multi-line body bytes of the finished lines
	simple     chunkSim // the simple form (until a newline is seen)
	simpleDone bool
}

func newPairSizer(name string) *pairSizer {
	z := &pairSizer{}
	z.reset(name)
	return z
}

func (z *pairSizer) reset(name string) {
	z.name, z.nameCol = name, utf8.RuneCountInString(name)+1
	z.raw, z.first, z.last, z.nl, z.mlN, z.simpleDone = 0, 0, 0, false, 0, false
	z.ml.reset(0)
	z.simple.reset(z.nameCol + 1)
}

func (z *pairSizer) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if z.raw == 0 {
		z.first = p[0]
	}
	z.raw += int64(len(p))
	z.last = p[len(p)-1]
	for q := p; len(q) > 0; {
		i := indexNL(q)
		if i < 0 {
			z.ml.write(q)
			if !z.nl {
				z.simple.write(q)
			}
			break
		}
		z.ml.write(q[:i])
		z.mlN += z.ml.finish() + 1
		z.ml.reset(0)
		z.nl = true
		q = q[i+1:]
	}
	return len(p), nil
}

func (z *pairSizer) WriteString(s string) { z.Write([]byte(s)) }

func indexNL(b []byte) int {
	for i, c := range b {
		if c == '\n' {
			return i
		}
	}
	return -1
}

// size returns the pair's serialized size so far without ending it: z can
// be written to further.
func (z *pairSizer) size() int64 {
	n := int64(len(z.name)) + 2 // "name:" ... "\n"
	if z.raw == 0 {
		return n
	}
	blank := func(c byte) bool { return c == ' ' || c == '\t' }
	if z.nameCol+1 > 39 || z.nl || blank(z.first) || blank(z.last) {
		ml := z.ml
		ml.win = append([]byte(nil), z.ml.win...)
		return n + 3 + z.mlN + ml.finish() + 2
	}
	s := z.simple
	s.win = append([]byte(nil), z.simple.win...)
	return n + 1 + s.finish()
}

// pairSize is the serialized size of a pair held in memory.
func pairSize(name, value string) int64 {
	z := newPairSizer(name)
	z.WriteString(value)
	return z.size()
}
