package manifest

import (
	"bufio"
	"io"
)

// Special xchar values: libbutl's parser works byte by byte with a look-ahead
// of one peeked and two "ungot" characters; errors and positions depend on
// exactly when a byte is validated, so the scanner keeps the same shape.
const (
	xEOS     = -1
	xInvalid = -2
)

type xchar struct {
	v            int // byte value, xEOS or xInvalid
	line, column uint64
}

// is reports whether c is the byte b (false for EOS and invalid).
func (c xchar) is(b byte) bool { return c.v == int(b) }
func (c xchar) eos() bool      { return c.v == xEOS }

type ungotChar struct {
	xchar
	line, column uint64 // scanner position to restore when re-got
}

type scanner struct {
	r *bufio.Reader

	line, column uint64

	val       utf8Validator
	decoded   bool // the peeked byte completes its UTF-8 sequence
	validated bool // the next stream byte has been validated already
	what      string

	ungot  [2]ungotChar
	nUngot int

	unpeek  bool // a lone CR was seen: the next peek yields a newline
	unpeekC xchar
	atEOS   bool
}

func newScanner(r io.Reader) *scanner {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	return &scanner{r: br, line: 1, column: 1, decoded: true}
}

// rawPeek returns the next stream byte without consuming it, or xEOS.
// Read errors other than io.EOF end the stream like EOF; the caller sees an
// "unexpected end of stream" only if a sequence was cut.
func (s *scanner) rawPeek() int {
	b, err := s.r.Peek(1)
	if err != nil || len(b) == 0 {
		return xEOS
	}
	return int(b[0])
}

func (s *scanner) rawGet() {
	s.r.ReadByte()
	s.validated = false
}

func (s *scanner) peek() xchar {
	if s.nUngot != 0 {
		return s.ungot[s.nUngot-1].xchar
	}
	if s.unpeek {
		return s.unpeekC
	}
	if s.atEOS {
		return xchar{xEOS, s.line, s.column}
	}

	v := s.rawPeek()
	if v == xEOS {
		if !s.decoded {
			s.what = "unexpected end of stream"
			v = xInvalid
		}
		s.atEOS = true
		return xchar{v, s.line, s.column}
	}

	valid := true
	if !s.validated {
		var what string
		valid, s.decoded, what = s.val.validate(byte(v))
		s.validated = true
		if !valid {
			s.what = what
		}
	}
	if !valid {
		v = xInvalid
	} else if v == '\r' {
		// CR LF and runs of CR read as one LF.
		var v1 int
		for {
			s.rawGet()
			v1 = s.rawPeek()
			if v1 != '\r' {
				break
			}
		}
		if v1 != '\n' {
			s.unpeek = true
			s.unpeekC = xchar{'\n', s.line, s.column}
			if v1 == xEOS {
				s.atEOS = true
			}
		}
		v = '\n'
	}
	return xchar{v, s.line, s.column}
}

// getPeeked consumes the character just returned by peek.
func (s *scanner) getPeeked(c xchar) {
	if s.nUngot != 0 {
		s.nUngot--
		u := s.ungot[s.nUngot]
		s.line, s.column = u.line, u.column
		return
	}
	if s.unpeek {
		s.unpeek = false
	} else if !c.eos() {
		s.rawGet()
	}
	if !c.eos() {
		if c.v == '\n' {
			s.line++
			s.column = 1
		} else if s.decoded {
			s.column++
		}
	}
}

func (s *scanner) get() xchar {
	if s.nUngot != 0 {
		s.nUngot--
		u := s.ungot[s.nUngot]
		s.line, s.column = u.line, u.column
		return u.xchar
	}
	c := s.peek()
	s.getPeeked(c)
	return c
}

func (s *scanner) unget(c xchar) {
	s.ungot[s.nUngot] = ungotChar{c, s.line, s.column}
	s.nUngot++
	s.line, s.column = c.line, c.column
}
