package manifest

import (
	"errors"
	"math"
	"strconv"
	"strings"

	"github.com/Masterminds/semver/v3"
)

// StandardVersion is a build2 standard version:
//
//	[+<epoch>-]<maj>.<min>.<patch>[-(a|b).<num>[.<snapsn>[.<snapid>]]][+<rev>]
//	0[+<rev>]  (stub)
//
// Ordering is libbutl's: epoch, then the release/pre-release/snapshot number
// (compared through semver with the snapshot id dropped, which libbutl never
// compares), then revision.
type StandardVersion struct {
	Epoch               uint16 // 1 by default, 0 for a stub
	Major, Minor, Patch uint32
	PreKind             byte   // 'a', 'b' or 0 for a release
	PreNum              uint16 // pre-release number
	SnapshotSN          uint64 // 0: no snapshot; LatestSnapshot: "z"
	SnapshotID          string
	Revision            uint16
	Stub                bool
}

// LatestSnapshot is the snapshot number written as "z".
const LatestSnapshot = math.MaxUint64

// ParseStandardVersion parses s with libbutl's grammar and error texts.
func ParseStandardVersion(s string) (StandardVersion, error) {
	v := StandardVersion{Epoch: 1}
	p := 0
	at := func() byte { // s[p] with libbutl's NUL past the end
		if p < len(s) {
			return s[p]
		}
		return 0
	}
	num := func(min, max uint64) (uint64, bool) {
		e := p
		for e < len(s) && s[e] >= '0' && s[e] <= '9' {
			e++
		}
		if e == p {
			return 0, false
		}
		n, err := strconv.ParseUint(s[p:e], 10, 64)
		if err != nil || n < min || n > max {
			return 0, false
		}
		p = e
		return n, true
	}
	bail := func(why string) (StandardVersion, error) {
		return StandardVersion{}, errors.New(why)
	}

	hasEpoch := at() == '+'
	if hasEpoch {
		p++
		e, ok := num(1, math.MaxUint16)
		if !ok {
			return bail("invalid epoch")
		}
		v.Epoch = uint16(e)
		if at() != '-' {
			return bail("'-' expected after epoch")
		}
		p++
	}
	major, ok := num(0, 99999)
	if !ok {
		return bail("invalid major version")
	}
	if !hasEpoch && major == 0 && (p == len(s) || at() == '+') {
		v.Stub, v.Epoch = true, 0
	} else {
		if at() != '.' {
			return bail("'.' expected after major version")
		}
		p++
		minor, ok := num(0, 99999)
		if !ok {
			return bail("invalid minor version")
		}
		if at() != '.' {
			return bail("'.' expected after minor version")
		}
		p++
		patch, ok := num(0, 99999)
		if !ok {
			return bail("invalid patch version")
		}
		if major == 0 && minor == 0 && patch == 0 {
			return bail("0.0.0 version")
		}
		v.Major, v.Minor, v.Patch = uint32(major), uint32(minor), uint32(patch)
		if at() == '-' {
			p++
			k := at()
			if k != 'a' && k != 'b' {
				return bail("'a' or 'b' expected in pre-release")
			}
			p++
			if at() != '.' {
				return bail("'.' expected after pre-release letter")
			}
			p++
			n, ok := num(0, 499)
			if !ok {
				return bail("invalid pre-release")
			}
			v.PreKind, v.PreNum = k, uint16(n)
			if at() == '.' {
				p++
				if at() == 'z' {
					p++
					v.SnapshotSN = LatestSnapshot
				} else {
					sn, ok := num(1, LatestSnapshot-1)
					if !ok {
						return bail("invalid snapshot number")
					}
					v.SnapshotSN = sn
					if at() == '.' {
						p++
						start := p
						for p < len(s) && isAlnum(s[p]) {
							p++
						}
						if id := s[start:p]; id == "" || len(id) > 16 {
							return bail("invalid snapshot id")
						} else {
							v.SnapshotID = id
						}
					}
				}
			} else if n == 0 {
				return bail("invalid final pre-release")
			}
		}
	}
	if at() == '+' {
		p++
		r, ok := num(1, math.MaxUint16)
		if !ok {
			return bail("invalid revision")
		}
		v.Revision = uint16(r)
	}
	if p != len(s) {
		return bail("junk after version")
	}
	return v, nil
}

func isAlnum(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// String renders the version the way libbutl does.
func (v StandardVersion) String() string {
	var b strings.Builder
	if v.Stub {
		b.WriteString("0")
	} else {
		if v.Epoch != 1 {
			b.WriteString("+" + strconv.Itoa(int(v.Epoch)) + "-")
		}
		b.WriteString(v.core())
		if v.PreKind != 0 {
			b.WriteString("-" + v.preRelease())
			if v.SnapshotID != "" {
				b.WriteString("." + v.SnapshotID)
			}
		}
	}
	if v.Revision != 0 {
		b.WriteString("+" + strconv.Itoa(int(v.Revision)))
	}
	return b.String()
}

func (v StandardVersion) core() string {
	return strconv.FormatUint(uint64(v.Major), 10) + "." +
		strconv.FormatUint(uint64(v.Minor), 10) + "." +
		strconv.FormatUint(uint64(v.Patch), 10)
}

// preRelease is the pre-release part without the snapshot id.
func (v StandardVersion) preRelease() string {
	s := string(v.PreKind) + "." + strconv.Itoa(int(v.PreNum))
	switch v.SnapshotSN {
	case 0:
	case LatestSnapshot:
		s += ".z"
	default:
		s += "." + strconv.FormatUint(v.SnapshotSN, 10)
	}
	return s
}

// semver maps the middle part of the ordering onto semver; the mapping keeps
// build2's order: a.N < a.N.SN < a.N.z < a.N+1 < b.* < release.
func (v StandardVersion) semver() *semver.Version {
	pre := ""
	if v.PreKind != 0 {
		pre = v.preRelease()
	}
	sv, err := semver.NewVersion(v.core())
	if err != nil {
		panic("manifest: unmappable version " + v.String())
	}
	if pre != "" {
		// "z" sorts above every numeric snapshot number in semver too
		// (alphanumeric identifiers are greater than numeric ones).
		w, err := sv.SetPrerelease(pre)
		if err != nil {
			panic("manifest: unmappable pre-release " + pre)
		}
		sv = &w
	}
	return sv
}

// Compare returns -1, 0 or +1 as v sorts before, with or after w.
func (v StandardVersion) Compare(w StandardVersion) int {
	if v.Epoch != w.Epoch {
		return cmpInt(int(v.Epoch), int(w.Epoch))
	}
	if v.Stub != w.Stub {
		if v.Stub {
			return -1
		}
		return 1
	}
	if !v.Stub {
		if c := v.semver().Compare(w.semver()); c != 0 {
			return c
		}
	}
	return cmpInt(int(v.Revision), int(w.Revision))
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
