package controllertest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/build2/bbot-agent-go/manifest"
)

// upload is brep's ?upload=<type> handler (mod/mod-upload.cxx), checked in
// its order: the type, the size limit, the required fields, the values'
// text, the session (expired: 200 and dropped), the challenge (failed:
// 200 and dropped), then the archive and its checksum (422).
func (s *Server) upload(w http.ResponseWriter, r *http.Request, typ string) {
	s.mu.Lock()
	types, limit, answer := slices.Clone(s.UploadTypes), s.UploadMaxSize, s.UploadAnswer
	s.mu.Unlock()
	if limit == 0 {
		limit = 10 << 20
	}
	switch {
	case len(types) == 0:
		s.uploadAnswer(w, 404, "upload disabled", "")
		return
	case typ == "":
		s.uploadAnswer(w, 400, "upload type expected", "")
		return
	case !slices.Contains(types, typ):
		s.uploadAnswer(w, 404, typ+" upload disabled", "")
		return
	}
	body, ok := readBody(r, limit)
	if !ok {
		s.uploadAnswer(w, 413, typ+" upload size exceeds limit", "")
		return
	}
	form, archive, why := parseForm(r.Header.Get("Content-Type"), body)
	if why != "" {
		s.uploadAnswer(w, 400, why, "")
		return
	}
	u := Upload{Type: typ, Session: form["session"], Instance: form["instance"], ArchiveName: form["archive"],
		SHA256: form["sha256sum"], Challenge: form["challenge"], Fields: map[string]string{}, Received: time.Now()}
	_, hasChallenge := form["challenge"]
	for n, v := range form {
		if !slices.Contains([]string{"session", "instance", "archive", "sha256sum", "challenge"}, n) {
			u.Fields[n] = v
		}
	}
	switch {
	case u.Session == "":
		s.uploadAnswer(w, 400, "upload session expected", "")
		return
	case hasChallenge && !validBase64(u.Challenge):
		s.uploadAnswer(w, 400, "invalid challenge", "")
		return
	case u.Instance == "":
		s.uploadAnswer(w, 400, "upload instance expected", "")
		return
	case u.ArchiveName == "":
		s.uploadAnswer(w, 400, "upload archive expected", "")
		return
	case u.SHA256 == "":
		s.uploadAnswer(w, 400, "upload archive checksum expected", "")
		return
	case len(u.SHA256) != 64:
		s.uploadAnswer(w, 400, "invalid upload archive checksum", "")
		return
	}
	for n, v := range form {
		if what := graphicText(v); what != "" {
			s.uploadAnswer(w, 400, "invalid parameter "+n+": "+what, "")
			return
		}
	}
	ref := newReference()
	s.mu.Lock()
	is, known := s.issued[u.Session]
	late := s.resulted[u.Session]
	s.mu.Unlock()
	switch {
	case late:
		// brep takes uploads only while the build is being built.
		s.recordDrop("upload for session " + u.Session + " after its result: package configuration state is built")
		s.uploadAnswer(w, 200, typ+" upload is queued", ref)
		return
	case !known:
		s.recordDrop("upload for session " + u.Session + ": no package build")
		s.uploadAnswer(w, 200, typ+" upload is queued", ref)
		return
	}
	if is.challenge != "" || hasChallenge {
		if why := s.verify(is.challenge, u.Challenge); why != "" {
			s.recordDrop("upload for session " + u.Session + ": " + why)
			s.uploadAnswer(w, 200, typ+" upload is queued", ref)
			return
		}
	}
	if archive == nil {
		s.uploadAnswer(w, 400, "archive upload expected", ref)
		return
	}
	u.Archive = archive
	sum := sha256.Sum256(archive)
	if hex.EncodeToString(sum[:]) != u.SHA256 {
		s.uploadAnswer(w, 422, "upload archive checksum mismatch", ref)
		return
	}
	u.Status, u.Machine = 200, is.task.Machine()
	msg := typ + " upload is queued"
	if answer != nil {
		if st, m := answer(u); st != 0 {
			u.Status, msg = st, m
		}
	}
	s.mu.Lock()
	s.uploads = append(s.uploads, u)
	s.mu.Unlock()
	s.uploadAnswer(w, u.Status, msg, ref)
}

// parseForm reads the multipart form as brep's parameters: each field
// once; archive is the file part, its value the file name stripped of
// directories (as brep stores it). why is the 400 message.
func parseForm(contentType string, body []byte) (form map[string]string, archive []byte, why string) {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "multipart/form-data" || params["boundary"] == "" {
		return nil, nil, "invalid parameter"
	}
	form = map[string]string{}
	mr := multipart.NewReader(bytes.NewReader(body), params["boundary"])
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return form, archive, ""
		}
		if err != nil {
			return nil, nil, "invalid parameter"
		}
		name := p.FormName()
		if _, dup := form[name]; dup || name == "" {
			return nil, nil, "invalid parameter"
		}
		data, err := io.ReadAll(p)
		if err != nil {
			return nil, nil, "invalid parameter"
		}
		if name == "archive" && p.FileName() != "" {
			fn := p.FileName()
			if i := strings.LastIndexByte(fn, '/'); i >= 0 {
				fn = fn[i+1:]
			}
			form[name], archive = fn, data
			continue
		}
		form[name] = string(data)
	}
}

// graphicText is libbutl's utf8 check of a parameter value (graphic
// characters plus TAB, CR and LF); it returns what is wrong, or "".
func graphicText(v string) string {
	if !utf8.ValidString(v) {
		return "invalid UTF-8 sequence"
	}
	for _, r := range v {
		if r != '\t' && r != '\r' && r != '\n' && !unicode.IsGraphic(r) {
			return fmt.Sprintf("invalid code point %U", r)
		}
	}
	return ""
}

// validBase64 is libbutl's base64_decode's acceptance: newlines between
// groups of 4, nothing after the padding.
func validBase64(v string) bool {
	_, err := base64.StdEncoding.DecodeString(strings.ReplaceAll(v, "\n", ""))
	return err == nil && v != ""
}

func newReference() string {
	var b [16]byte
	rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// uploadAnswer is brep's upload result manifest, its status the HTTP one.
func (s *Server) uploadAnswer(w http.ResponseWriter, status int, message, ref string) {
	if status/100 != 2 {
		s.mu.Lock()
		s.errors = append(s.errors, fmt.Sprintf("%d %s", status, message))
		s.mu.Unlock()
	}
	pairs := []manifest.NameValue{{Name: "status", Value: fmt.Sprint(status)}, {Name: "message", Value: message}}
	if ref != "" {
		pairs = append(pairs, manifest.NameValue{Name: "reference", Value: ref})
	}
	w.Header().Set("Content-Type", "text/manifest;charset=utf-8")
	w.WriteHeader(status)
	manifest.WriteStream(w, "", pairs)
}
