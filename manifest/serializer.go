package manifest

import (
	"bufio"
	"io"
	"strings"
)

// SerializeError is a manifest serialization error.
type SerializeError struct {
	Name        string
	Description string
}

func (e *SerializeError) Error() string {
	if e.Name != "" {
		return e.Name + ": error: " + e.Description
	}
	return "error: " + e.Description
}

// Serializer writes name/value pairs as a manifest stream, byte-exact with
// libbutl's manifest_serializer.
type Serializer struct {
	// LongLines disables wrapping of values at 78 columns.
	LongLines bool

	w       *bufio.Writer
	name    string
	state   parserState
	version string
	err     error
}

// NewSerializer returns a serializer writing to w; name is used in errors.
func NewSerializer(w io.Writer, name string) *Serializer {
	return &Serializer{w: bufio.NewWriter(w), name: name}
}

func (s *Serializer) fail(description string) error {
	return &SerializeError{Name: s.name, Description: description}
}

// Next writes one pair, following the same start/end pair protocol as
// Parser.Next. Output is buffered per pair and flushed at the end of each
// manifest (and by Comment); a pair that fails validation writes nothing.
func (s *Serializer) Next(name, value string) error {
	if s.err != nil {
		return s.err
	}
	switch s.state {
	case stateStart:
		if name != "" {
			return s.fail("format version pair expected")
		}
		if value == "" {
			s.state = stateEnd
			return s.flush()
		}
		if value != "1" {
			return s.fail("unsupported format version " + value)
		}
		s.w.WriteByte(':')
		if value != s.version {
			s.w.WriteString(" " + value)
			s.version = value
		}
		s.w.WriteByte('\n')
		s.state = stateBody
	case stateBody:
		if name == "" {
			s.state = stateStart
			if value != "" {
				// The end-of-manifest pair may be omitted before a start pair.
				return s.Next(name, value)
			}
			return s.flush()
		}
		var b strings.Builder
		width, err := s.writeName(&b, name)
		if err != nil {
			return err
		}
		b.WriteByte(':')
		if value != "" {
			if err := s.writeValue(&b, value, width+1); err != nil {
				return err
			}
		}
		b.WriteByte('\n')
		s.w.WriteString(b.String())
	case stateEnd:
		return s.fail("serialization after eos")
	}
	return nil
}

func (s *Serializer) flush() error {
	if err := s.w.Flush(); err != nil {
		s.err = err
		return err
	}
	return nil
}

// Comment writes "# text" (or "#" for an empty text) and flushes, like
// libbutl's comment (which ends the line with std::endl): a comment is on
// the writer when Comment returns, whatever comes next (more comments only,
// or a failing pair). A comment that fails validation writes nothing.
func (s *Serializer) Comment(text string) error {
	if s.err != nil {
		return s.err
	}
	if s.state == stateEnd {
		return s.fail("serialization after eos")
	}
	if _, why, ok := checkUTF8(text); !ok {
		return s.fail("invalid comment: " + why)
	}
	s.w.WriteByte('#')
	if text != "" {
		s.w.WriteString(" " + text)
	}
	s.w.WriteByte('\n')
	return s.flush()
}

// writeName validates and writes a name, returning its width in code points.
func (s *Serializer) writeName(b *strings.Builder, name string) (int, error) {
	if name == "" {
		return 0, s.fail("empty name")
	}
	if name[0] == '#' {
		return 0, s.fail("name starts with '#'")
	}
	var v utf8Validator
	width, complete := 0, true
	for i := 0; i < len(name); i++ {
		c := name[i]
		valid, last, why := v.validate(c)
		if !valid {
			return 0, s.fail("invalid name: " + why)
		}
		complete = last
		if last {
			switch c {
			case ' ', '\t', '\r', '\n':
				return 0, s.fail("name contains whitespace")
			case ':':
				return 0, s.fail("name contains ':'")
			}
			width++
		}
	}
	if !complete {
		return 0, s.fail("invalid name: incomplete UTF-8 sequence")
	}
	b.WriteString(name)
	return width, nil
}

// writeValue writes a non-empty value after "name:" at the given column
// offset, choosing the multi-line form when the simple one cannot represent
// the value or would start too far right.
func (s *Serializer) writeValue(b *strings.Builder, v string, column int) error {
	isBlank := func(c byte) bool { return c == ' ' || c == '\t' }
	if column+1 > 39 || strings.ContainsAny(v, "\r\n") || isBlank(v[0]) || isBlank(v[len(v)-1]) {
		b.WriteString("\n\\\n")
		for i := 0; ; {
			p := strings.IndexAny(v[i:], "\r\n")
			if p < 0 {
				if err := s.writeChunk(b, v[i:], 0); err != nil {
					return err
				}
				break
			}
			p += i
			if err := s.writeChunk(b, v[i:p], 0); err != nil {
				return err
			}
			b.WriteByte('\n')
			i = p + 1
			if v[p] == '\r' && p+1 < len(v) && v[p+1] == '\n' {
				i++
			}
		}
		b.WriteString("\n\\")
		return nil
	}
	b.WriteByte(' ')
	return s.writeChunk(b, v, column+1)
}

// writeChunk writes a newline-free piece of a value, breaking lines so they
// stay within 78 columns: at a blank once past column 57, otherwise hard at
// column 77, never right after a backslash or inside a UTF-8 sequence.
func (s *Serializer) writeChunk(b *strings.Builder, v string, column int) error {
	var val utf8Validator
	var c byte
	seqStart := true
	for i := 0; i < len(v); i++ {
		prev := c
		c = v[i]
		valid, last, why := val.validate(c)
		if !valid {
			return s.fail("invalid value: " + why)
		}
		if prev != '\\' && seqStart && !s.LongLines {
			breakLine := false
			if c == ' ' || c == '\t' {
				// Break here if the next word would not fit on this line.
				for w := i + 1; ; w++ {
					if w == len(v) || v[w] == ' ' || v[w] == '\t' {
						limit := 77
						if w == len(v) {
							limit = 78
						}
						if column+(w-i) > limit {
							breakLine = column > 57
						}
						break
					}
				}
			}
			limit := 77
			if i+1 == len(v) {
				limit = 78 // the last character may take the backslash's place
			}
			if column >= limit {
				breakLine = true
			}
			if breakLine {
				b.WriteString("\\\n")
				column = 0
			}
		}
		b.WriteByte(c)
		seqStart = last
		if last {
			column++
		}
	}
	if !seqStart {
		return s.fail("invalid value: incomplete UTF-8 sequence")
	}
	if c == '\\' {
		b.WriteByte('\\')
	}
	return nil
}
