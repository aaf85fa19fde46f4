package manifest

import (
	"sort"
	"strings"
	"unicode/utf8"
)

// codepointType mirrors libbutl's codepoint_types so that the error texts
// ("invalid Unicode codepoint (control)") and the set of accepted codepoints
// match the C++ tools exactly. libbutl deliberately uses small range tables
// (Unicode 12) instead of the full property database, and treats everything
// not listed as graphic; Go's unicode tables would disagree on newer
// codepoints, so the tables are reproduced here.
type codepointType uint8

const (
	cpNone codepointType = iota
	cpGraphic
	cpFormat
	cpControl
	cpPrivateUse
	cpNonCharacter
	cpReserved
)

func (t codepointType) String() string {
	switch t {
	case cpGraphic:
		return "graphic"
	case cpFormat:
		return "format"
	case cpControl:
		return "control"
	case cpPrivateUse:
		return "private-use"
	case cpNonCharacter:
		return "noncharacter"
	case cpReserved:
		return "reserved"
	}
	return ""
}

type cpRange struct{ lo, hi rune }

var cpTables = []struct {
	typ    codepointType
	ranges []cpRange
}{
	{cpControl, []cpRange{{0x00, 0x1F}, {0x7F, 0x9F}}},
	{cpFormat, []cpRange{
		{0x000AD, 0x000AD}, {0x00600, 0x00605}, {0x0061C, 0x0061C},
		{0x006DD, 0x006DD}, {0x0070F, 0x0070F}, {0x008E2, 0x008E2},
		{0x0180E, 0x0180E}, {0x0200B, 0x0200F}, {0x0202A, 0x0202E},
		{0x02060, 0x02064}, {0x02066, 0x0206F}, {0x0FEFF, 0x0FEFF},
		{0x0FFF9, 0x0FFFB}, {0x110BD, 0x110BD}, {0x110CD, 0x110CD},
		{0x13430, 0x13438}, {0x1BCA0, 0x1BCA3}, {0x1D173, 0x1D17A},
		{0xE0001, 0xE0001}, {0xE0020, 0xE007F},
	}},
	{cpPrivateUse, []cpRange{{0x00E000, 0x00F8FF}, {0x0F0000, 0x10FFFF}}},
	{cpNonCharacter, []cpRange{{0xFDD0, 0xFDEF}}},
	{cpReserved, []cpRange{
		{0x30000, 0xE0000}, {0xE0002, 0xE001F}, {0xE0080, 0xE00FF},
		{0xE01F0, 0xEFFFF},
	}},
}

func typeOfCodepoint(c rune) codepointType {
	switch {
	case c >= 0x20 && c <= 0x7E:
		return cpGraphic
	case c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF):
		return cpNone
	case c&0xFFFF >= 0xFFFE:
		return cpNonCharacter
	}
	for _, t := range cpTables {
		i := sort.Search(len(t.ranges), func(i int) bool { return t.ranges[i].hi >= c })
		if i < len(t.ranges) && t.ranges[i].lo <= c {
			return t.typ
		}
	}
	return cpGraphic
}

// utf8Validator validates a byte stream one byte at a time, accepting only
// graphic codepoints plus TAB, CR and LF, with libbutl's error wording.
type utf8Validator struct {
	seqSize, seqIndex int
	codepoint         rune
	lo2, hi2          byte // allowed range of the sequence's second byte
}

// validate returns (byte valid, sequence complete) and, when invalid, why.
func (v *utf8Validator) validate(b byte) (bool, bool, string) {
	byteError := func() string {
		names := [...]string{"first", "second", "third", "forth"}
		const digits = "0123456789ABCDEF"
		s := "invalid UTF-8 sequence " + names[v.seqIndex] + " byte (0x" +
			string([]byte{digits[b>>4], digits[b&0xF]})
		if b >= 0x20 && b <= 0x7E {
			s += " '" + string([]byte{b}) + "'"
		}
		return s + ")"
	}

	if v.seqIndex == 0 {
		switch {
		case b < 0x80:
			v.seqSize, v.codepoint = 1, rune(b)
		case b < 0xE0:
			v.seqSize, v.codepoint = 2, rune(b&0x1F)
		case b < 0xF0:
			v.seqSize, v.codepoint = 3, rune(b&0x0F)
		case b < 0xF8:
			v.seqSize, v.codepoint = 4, rune(b&0x07)
		case b < 0xFC:
			return false, false, "5-byte length UTF-8 sequence"
		case b < 0xFE:
			return false, false, "6-byte length UTF-8 sequence"
		default:
			return false, false, byteError()
		}
	}

	in := func(lo, hi byte) bool { return b >= lo && b <= hi }
	valid := false
	switch v.seqSize {
	case 1:
		valid = true
	case 2:
		if v.seqIndex == 0 {
			if valid = in(0xC2, 0xDF); valid {
				v.lo2, v.hi2 = 0x80, 0xBF
			}
		} else {
			valid = in(v.lo2, v.hi2)
		}
	case 3:
		switch v.seqIndex {
		case 0:
			valid = true
			switch {
			case b == 0xE0:
				v.lo2, v.hi2 = 0xA0, 0xBF
			case in(0xE1, 0xEC), in(0xEE, 0xEF):
				v.lo2, v.hi2 = 0x80, 0xBF
			case b == 0xED:
				v.lo2, v.hi2 = 0x80, 0x9F
			default:
				valid = false
			}
		case 1:
			valid = in(v.lo2, v.hi2)
		default:
			valid = in(0x80, 0xBF)
		}
	case 4:
		switch v.seqIndex {
		case 0:
			valid = true
			switch {
			case b == 0xF0:
				v.lo2, v.hi2 = 0x90, 0xBF
			case in(0xF1, 0xF3):
				v.lo2, v.hi2 = 0x80, 0xBF
			case b == 0xF4:
				v.lo2, v.hi2 = 0x80, 0x8F
			default:
				valid = false
			}
		case 1:
			valid = in(v.lo2, v.hi2)
		default:
			valid = in(0x80, 0xBF)
		}
	}
	if !valid {
		return false, false, byteError()
	}

	if v.seqIndex != 0 {
		v.codepoint = v.codepoint<<6 | rune(b&0x3F)
	}
	v.seqIndex++
	if v.seqIndex != v.seqSize {
		return true, false, ""
	}
	v.seqIndex = 0

	switch c := v.codepoint; c {
	case '\n', '\r', '\t':
		return true, true, ""
	default:
		if t := typeOfCodepoint(c); t != cpGraphic {
			return false, true, "invalid Unicode codepoint (" + t.String() + ")"
		}
	}
	return true, true, ""
}

// checkUTF8 validates a whole string the way libbutl's utf8() does.
func checkUTF8(s string) (codepoints int, why string, ok bool) {
	var v utf8Validator
	complete := true
	for i := 0; i < len(s); i++ {
		valid, last, what := v.validate(s[i])
		if !valid {
			return 0, what, false
		}
		complete = last
		if last {
			codepoints++
		}
	}
	if !complete {
		return 0, "incomplete UTF-8 sequence", false
	}
	return codepoints, "", true
}

// Sanitize returns s with everything a manifest value may not hold (bytes
// that are not UTF-8, control characters other than TAB, CR and LF, and the
// other non-graphic codepoints) replaced by U+FFFD, so that text from
// outside (console logs, error messages off the wire) always serializes.
func Sanitize(s string) string {
	if _, _, ok := checkUTF8(s); ok {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t' || r == '\r':
			b.WriteRune(r)
		case r == utf8.RuneError || typeOfCodepoint(r) != cpGraphic:
			b.WriteRune(utf8.RuneError)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
