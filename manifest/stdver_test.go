package manifest

import "testing"

func TestStandardVersionRoundTrip(t *testing.T) {
	for _, s := range []string{
		"1.2.3", "1.2.3-a.1", "1.2.3-b.1", "1.2.3-a.1.z", "1.2.3-a.0.456",
		"1.2.3-a.1.456.340c0a26a5ef", "1.2.3+4", "1.2.3-a.4+5", "1.2.3-a.4.z+5",
		"1.2.3-a.4.567.340c0a26a5ef+8", "+4-1.2.3", "0", "0+1", "99999.99999.99999",
		"0.18.0-a.0.20240101120000.012345678901",
	} {
		v, err := ParseStandardVersion(s)
		if err != nil {
			t.Errorf("%q: %v", s, err)
			continue
		}
		if v.String() != s {
			t.Errorf("%q printed as %q", s, v.String())
		}
	}
}

func TestStandardVersionInvalid(t *testing.T) {
	for in, want := range map[string]string{
		"+1+":                   "'-' expected after epoch",
		"a":                     "invalid major version",
		"1":                     "'.' expected after major version",
		"1.a":                   "invalid minor version",
		"1.2":                   "'.' expected after minor version",
		"1.2.a":                 "invalid patch version",
		"+1-0.0.0":              "0.0.0 version",
		"1.2.3-k":               "'a' or 'b' expected in pre-release",
		"1.2.3-a":               "'.' expected after pre-release letter",
		"1.2.3-a.b":             "invalid pre-release",
		"1.2.3-b.0":             "invalid final pre-release",
		"1.2.3-a.1.0":           "invalid snapshot number",
		"1.2.3-a.1.1.@":         "invalid snapshot id",
		"1.2.3+a":               "invalid revision",
		"1.2.3-a.0.1.83jdgsf+0": "invalid revision",
		"1.2.3-+1":              "'a' or 'b' expected in pre-release",
		"1.2.3-a.1.z.a":         "junk after version",
		"1.2.3-a.1.z+1a":        "junk after version",
		"100000.0.0":            "invalid major version",
		"":                      "invalid major version",
	} {
		_, err := ParseStandardVersion(in)
		if err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %q", in, err, want)
		}
	}
}

func TestStandardVersionCompare(t *testing.T) {
	// Each version sorts strictly before the next.
	order := []string{
		"0", "0+1", "0.0.1", "1.2.3-a.1", "1.2.3-a.1.5", "1.2.3-a.1.z", "1.2.3-a.2",
		"1.2.3-a.9", "1.2.3-a.10", "1.2.3-a.99", "1.2.3-b.0.5", "1.2.3-b.1",
		"1.2.3", "1.2.3+1", "1.2.3+2", "9.9.9", "+2-1.0.0",
	}
	for i := range order {
		for j := range order {
			a, _ := ParseStandardVersion(order[i])
			b, err := ParseStandardVersion(order[j])
			if err != nil {
				t.Fatal(err)
			}
			want := cmpInt(i, j)
			if got := a.Compare(b); got != want {
				t.Errorf("compare(%s, %s) = %d, want %d", order[i], order[j], got, want)
			}
		}
	}
	// The snapshot id is never compared.
	a, _ := ParseStandardVersion("1.2.3-a.0.5.aaaa")
	b, _ := ParseStandardVersion("1.2.3-a.0.5.0123")
	if a.Compare(b) != 0 {
		t.Errorf("snapshot ids compared")
	}
}
