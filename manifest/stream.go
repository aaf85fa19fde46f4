package manifest

import "io"

// Manifest is one manifest of a stream: its pairs in order, with positions,
// and the position of its end (for "missing value" errors).
type Manifest struct {
	Pairs []NameValue
	// End is where the manifest ends: the position reported when a
	// required value is missing.
	EndLine, EndColumn uint64
}

// ReadManifest reads the next manifest from p. It returns io.EOF at the end
// of the stream.
func ReadManifest(p *Parser) (*Manifest, error) {
	nv, err := p.Next()
	if err != nil {
		return nil, err
	}
	if nv.IsEnd() {
		if _, err := p.Next(); err != io.EOF && err != nil {
			return nil, err
		}
		return nil, io.EOF
	}
	m := &Manifest{}
	for {
		nv, err := p.Next()
		if err != nil {
			return nil, err
		}
		if nv.IsEnd() {
			m.EndLine, m.EndColumn = nv.NameLine, nv.NameColumn
			return m, nil
		}
		m.Pairs = append(m.Pairs, nv)
	}
}

// ReadAll reads every manifest of a stream.
func ReadAll(r io.Reader, name string) ([]*Manifest, error) {
	p := NewParser(r, name)
	var ms []*Manifest
	for {
		m, err := ReadManifest(p)
		if err == io.EOF {
			return ms, nil
		}
		if err != nil {
			return nil, err
		}
		ms = append(ms, m)
	}
}

// WriteManifest writes one manifest (start pair, pairs, end pair).
func WriteManifest(s *Serializer, pairs []NameValue) error {
	if err := s.Next("", "1"); err != nil {
		return err
	}
	for _, nv := range pairs {
		if err := s.Next(nv.Name, nv.Value); err != nil {
			return err
		}
	}
	return s.Next("", "")
}

// WriteStream writes the manifests as one stream and ends it.
func WriteStream(w io.Writer, name string, manifests ...[]NameValue) error {
	s := NewSerializer(w, name)
	for _, m := range manifests {
		if err := WriteManifest(s, m); err != nil {
			return err
		}
	}
	return s.Next("", "")
}
