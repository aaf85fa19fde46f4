// Package manifest implements the build2 manifest text format, byte-exact
// with libbutl's manifest_parser and manifest_serializer, and the typed bbot
// and brep manifests built on it.
//
// The parser and serializer stream pairs the way libbutl does: a start pair
// (empty name, value = format version) per manifest, the manifest's pairs, an
// end pair (empty name and value) per manifest and one more end pair at end of
// stream.
package manifest

import (
	"errors"
	"io"
	"strconv"
)

// NameValue is one name/value pair with the 1-based position of the name and
// of the value (columns count code points).
type NameValue struct {
	Name, Value            string
	NameLine, NameColumn   uint64
	ValueLine, ValueColumn uint64
}

// IsEnd reports whether nv is an end-of-manifest (or end-of-stream) pair.
func (nv NameValue) IsEnd() bool { return nv.Name == "" && nv.Value == "" }

// ParseError is a manifest syntax or semantic error with its position.
type ParseError struct {
	Name         string // the stream's name (usually a file name); may be empty
	Line, Column uint64
	Description  string
}

func (e *ParseError) Error() string {
	s := ""
	if e.Name != "" {
		s = e.Name + ":"
	}
	return s + strconv.FormatUint(e.Line, 10) + ":" +
		strconv.FormatUint(e.Column, 10) + ": error: " + e.Description
}

// ErrReadFailed wraps an I/O error of the underlying reader.
var ErrReadFailed = errors.New("manifest: read failed")

type parserState int

const (
	stateStart parserState = iota
	stateBody
	stateEnd
)

// Parser reads name/value pairs from a manifest stream.
type Parser struct {
	name    string
	s       *scanner
	src     *errReader
	state   parserState
	version string
	inBody  bool // a start pair was returned and its end pair not yet
	done    bool
	err     error
}

// errReader remembers a read error so that it is not mistaken for EOS.
type errReader struct {
	r   io.Reader
	err error
}

func (e *errReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err != nil && err != io.EOF && e.err == nil {
		e.err = err
	}
	return n, err
}

// NewParser returns a parser reading r; name is used in error messages.
func NewParser(r io.Reader, name string) *Parser {
	src := &errReader{r: r}
	return &Parser{name: name, s: newScanner(src), src: src}
}

// Next returns the next pair, following libbutl's manifest_parser::next():
// a start pair per manifest, its pairs, an end pair per manifest, one more
// end pair at end of stream, then io.EOF. After an error Next keeps
// returning it.
func (p *Parser) Next() (nv NameValue, err error) {
	if p.err != nil {
		return NameValue{}, p.err
	}
	if p.done {
		return NameValue{}, io.EOF
	}
	defer func() {
		if r := recover(); r != nil {
			pe, ok := r.(*ParseError)
			if !ok {
				panic(r)
			}
			nv, err = NameValue{}, pe
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
	nv = p.parseNext()
	return nv, nil
}

func (p *Parser) fail(line, column uint64, description string) {
	panic(&ParseError{Name: p.name, Line: line, Column: column, Description: description})
}

func (p *Parser) peek(what string) xchar {
	c := p.s.peek()
	if c.v == xInvalid {
		p.fail(c.line, c.column, "invalid "+what+": "+p.s.what)
	}
	return c
}

func (p *Parser) get(what string) xchar {
	c := p.s.get()
	if c.v == xInvalid {
		p.fail(c.line, c.column, "invalid "+what+": "+p.s.what)
	}
	return c
}

func (p *Parser) parseNext() NameValue {
	s := p.s
	if p.state == stateEnd {
		return NameValue{NameLine: s.line, NameColumn: s.column, ValueLine: s.line, ValueColumn: s.column}
	}

	c := p.skipSpaces()

	// A bare ':' inside a manifest ends it; the next call then parses the
	// following manifest's version pair from here.
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
	p.parseValue(&r)

	if c = p.peek("manifest"); c.is('\n') {
		s.getPeeked(c)
	}

	if p.state == stateStart {
		if r.Name != "" {
			p.fail(r.NameLine, r.NameColumn, "format version pair expected")
		}
		if r.Value == "" {
			// Only the first manifest of a stream must state its version.
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

func (p *Parser) parseName(r *NameValue) {
	c := p.peek("manifest name")
	r.NameLine, r.NameColumn = c.line, c.column
	var name []byte
	for ; !c.eos(); c = p.peek("manifest name") {
		if c.is(':') || c.is(' ') || c.is('\t') || c.is('\n') {
			break
		}
		name = append(name, byte(c.v))
		p.s.getPeeked(c)
	}
	r.Name = string(name)
}

// parseValue follows libbutl's look-ahead scheme exactly: simple values with
// backslash-newline continuations and escaped newlines, and both multi-line
// introducers ("name:\" NL and "name:" NL "\" NL).
func (p *Parser) parseValue(r *NameValue) {
	s := p.s
	peek := func() xchar { return p.peek("manifest value") }
	get := func() { p.get("manifest value") }

	c := peek()
	r.ValueLine, r.ValueColumn = c.line, c.column

	var v []byte
	n := 0 // length up to the last non-blank (simple mode trims the rest)

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

	// nl: the previous character was a "special" newline (from the
	// multi-line introducer or an escape sequence).
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
					v = append(v, '\n')
					n = len(v)
					continue
				}
				s.unget(c)
			}
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
				v = append(v, '\n')
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
				// Whatever follows, one backslash of the pair is literal; at a
				// line end the pair stands for one backslash and the newline
				// then ends the value, elsewhere the second one is re-read.
				if c2 := peek(); !c2.is('\n') {
					s.unget(c1)
				}
				v = append(v, '\\')
				n = len(v)
				continue
			}
			s.unget(c)
		}

		get()
		v = append(v, byte(c.v))
		if !ml && !c.is(' ') && !c.is('\t') {
			n = len(v)
		}
	}

	if !ml {
		v = v[:n]
	}
	r.Value = string(v)
}

// skipSpaces skips blanks, blank lines and comment lines where a name is
// expected and returns the first other character.
func (p *Parser) skipSpaces() xchar {
	c := p.peek("manifest")
	start := c.column == 1
	for ; !c.eos(); c = p.peek("manifest") {
		switch {
		case c.is(' '), c.is('\t'):
		case c.is('\n'):
			if !start {
				return c
			}
		case c.is('#'):
			if !start {
				return c
			}
			p.s.getPeeked(c)
			for c = p.peek("manifest"); !c.eos() && !c.is('\n'); c = p.peek("manifest") {
				p.s.getPeeked(c)
			}
			continue
		default:
			return c
		}
		p.s.getPeeked(c)
	}
	return c
}
