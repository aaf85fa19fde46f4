package manifest

import (
	"errors"
	"io"
)

// NextTo is Next, except that when pick(name) returns a writer for a pair's
// (non-empty) name, the pair's value is written to that writer as it is
// parsed instead of being returned (NameValue.Value is then empty). Values
// of any size thus pass through a bounded buffer, and runs of plain ASCII in
// multi-line values are scanned in bulk. Positions, values and errors are
// exactly those of Next. A write error ends parsing with that error.
//
// pick may be nil (NextTo is then Next).
func (p *Parser) NextTo(pick func(name string) io.Writer) (nv NameValue, err error) {
	if p.err != nil {
		return NameValue{}, p.err
	}
	if p.done {
		return NameValue{}, io.EOF
	}
	defer func() {
		if r := recover(); r != nil {
			switch e := r.(type) {
			case *ParseError:
				nv, err = NameValue{}, e
			case sinkError:
				nv, err = NameValue{}, e.err
			default:
				panic(r)
			}
		}
		if err == nil && p.src.err != nil {
			err = errors.Join(ErrReadFailed, p.src.err)
		}
		if err != nil {
			p.err = err
			return
		}
		switch {
		case nv.Name == "" && nv.Value != "":
			p.inBody = true
		case nv.IsEnd():
			if !p.inBody {
				p.done = true
			}
			p.inBody = false
		}
	}()
	nv = p.parseNextTo(pick)
	return nv, nil
}

// sinkError carries a value writer's error out of the parser.
type sinkError struct{ err error }

// parseNextTo is parseNext with the value optionally streamed.
func (p *Parser) parseNextTo(pick func(string) io.Writer) NameValue {
	s := p.s
	if p.state == stateEnd {
		return NameValue{NameLine: s.line, NameColumn: s.column, ValueLine: s.line, ValueColumn: s.column}
	}

	c := p.skipSpaces()
	if p.state == stateBody && c.is(':') {
		p.state = stateStart
		return NameValue{NameLine: c.line, NameColumn: c.column, ValueLine: c.line, ValueColumn: c.column}
	}

	var r NameValue
	p.parseName(&r)

	p.skipSpaces()
	c = p.get("manifest")

	if c.eos() {
		if r.Name != "" {
			p.fail(c.line, c.column, "':' expected after name")
		}
		p.state = stateEnd
		r.ValueLine, r.ValueColumn = r.NameLine, r.NameColumn
		return r
	}
	if !c.is(':') {
		p.fail(c.line, c.column, "':' expected after name")
	}

	p.skipSpaces()
	var w io.Writer
	if pick != nil && r.Name != "" && p.state == stateBody {
		w = pick(r.Name)
	}
	if w != nil {
		p.streamValue(&r, w)
	} else {
		p.parseValue(&r)
	}

	if c = p.peek("manifest"); c.is('\n') {
		s.getPeeked(c)
	}

	if p.state == stateStart {
		if r.Name != "" {
			p.fail(r.NameLine, r.NameColumn, "format version pair expected")
		}
		if r.Value == "" {
			if p.version == "" {
				p.fail(r.ValueLine, r.ValueColumn, "format version value expected")
			}
			r.Value = p.version
		} else {
			p.version = r.Value
			if p.version != "1" {
				p.fail(r.ValueLine, r.ValueColumn, "unsupported format version "+p.version)
			}
		}
		p.state = stateBody
	}
	return r
}

// valueSink buffers a streamed value. In simple mode trailing blanks are
// held back until a non-blank follows (they are trimmed at the end).
type valueSink struct {
	w    io.Writer
	buf  []byte
	keep int // buf[:keep] is final
	ml   bool
}

func (s *valueSink) add(c byte, mark bool) {
	s.buf = append(s.buf, c)
	if s.ml || mark {
		s.keep = len(s.buf)
	}
	if s.keep >= 32<<10 {
		s.flush()
	}
}

func (s *valueSink) addRun(b []byte) {
	s.buf = append(s.buf, b...)
	s.keep = len(s.buf)
	if s.keep >= 32<<10 {
		s.flush()
	}
}

func (s *valueSink) flush() {
	if s.keep == 0 {
		return
	}
	if _, err := s.w.Write(s.buf[:s.keep]); err != nil {
		panic(sinkError{err})
	}
	n := copy(s.buf, s.buf[s.keep:])
	s.buf = s.buf[:n]
	s.keep = 0
}

// fastRun consumes, in bulk, the plain ASCII (graphic, blank, not '\')
// bytes that follow in the stream, when nothing is peeked or ungot. Such
// bytes are always valid, complete code points and take one column each,
// so the scanner's state after them is what the byte-wise path leaves.
func (p *Parser) fastRun(sink *valueSink) {
	s := p.s
	if s.nUngot != 0 || s.unpeek || s.atEOS || !s.decoded || s.validated {
		return
	}
	for {
		n := s.r.Buffered()
		if n == 0 {
			if _, err := s.r.Peek(1); err != nil {
				return
			}
			n = s.r.Buffered()
		}
		buf, _ := s.r.Peek(n)
		plain := func(b byte) bool { return b >= 0x20 && b <= 0x7E && b != '\\' || b == '\t' }
		k := 0
		for k < len(buf) {
			b := buf[k]
			if plain(b) {
				s.column++
			} else if b == '\n' && k+1 < len(buf) && plain(buf[k+1]) {
				// A newline not followed by a backslash (or a CR) is
				// plain value text too.
				s.line++
				s.column = 1
			} else {
				break
			}
			k++
		}
		sink.addRun(buf[:k])
		s.r.Discard(k)
		if k < len(buf) {
			return
		}
	}
}

// streamValue is parseValue writing the value to w.
func (p *Parser) streamValue(r *NameValue, w io.Writer) {
	s := p.s
	peek := func() xchar { return p.peek("manifest value") }
	get := func() { p.get("manifest value") }
	sink := &valueSink{w: w, buf: make([]byte, 0, 33<<10)}

	c := peek()
	r.ValueLine, r.ValueColumn = c.line, c.column

	ml := false
	if c.is('\\') {
		get()
		p1 := peek()
		switch {
		case p1.is('\n'):
			get()
			c = peek()
			ml = true
		case p1.eos():
			c = p1
			ml = true
		default:
			s.unget(c)
		}
	}

	if !ml && c.is('\n') {
		get()
		p1 := peek()
		if p1.is('\\') {
			get()
			p2 := peek()
			switch {
			case p2.is('\n'):
				get()
				c = peek()
				ml = true
			case p2.eos():
				c = p2
				ml = true
			default:
				s.unget(p1)
			}
		}
		if !ml {
			s.unget(c)
		}
	}

	if ml {
		r.ValueLine, r.ValueColumn = c.line, c.column
	}
	sink.ml = ml

	for nl := ml; !c.eos(); c = peek() {
		if nl {
			nl = false
			if c.is('\\') {
				get()
				c1 := peek()
				if c1.is('\n') || c1.eos() {
					if ml {
						break
					}
					if c1.is('\n') {
						get()
					}
					sink.add('\n', true)
					continue
				}
				s.unget(c)
			}
		} else if ml && (c.v >= 0x20 && c.v <= 0x7E && c.v != '\\' || c.v == '\t') {
			get()
			sink.add(byte(c.v), true)
			p.fastRun(sink)
			continue
		}

		if c.is('\n') {
			if !ml {
				break
			}
			get()
			c1 := peek()
			if c1.is('\\') {
				get()
				c2 := peek()
				if c2.is('\n') || c2.eos() {
					break
				}
				sink.add('\n', false)
				s.unget(c1)
				continue
			}
			s.unget(c)
		}

		if c.is('\\') {
			get()
			c1 := peek()
			if c1.is('\n') || c1.eos() {
				if c1.is('\n') {
					get()
					nl = true
				}
				continue
			}
			if c1.is('\\') {
				get()
				if c2 := peek(); !c2.is('\n') {
					s.unget(c1)
				}
				sink.add('\\', true)
				continue
			}
			s.unget(c)
		}

		get()
		sink.add(byte(c.v), !c.is(' ') && !c.is('\t'))
	}
	sink.flush()
}
