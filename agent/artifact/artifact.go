// Package artifact splits the worker's upload.tar (bbot's layout
// upload/<type>/<instance>/...) into the archives brep's upload handler
// takes: one plain tar per upload type and instance, holding that
// instance's directory as <instance>/... . brep saves the archive under
// the name the agent gives it and its handlers unpack it with
// "tar -xf <archive> -C <dir>" and read <dir>/<instance>/... (brep's
// upload-bindist; its test upload is archive.tar for instance "archive").
// The archive is not compressed: what it carries (binary packages) is
// compressed already, and a plain tar is what every handler can read.
package artifact

import (
	"archive/tar"
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
)

// MaxArchives bounds the type/instance directories taken from one
// upload.tar (each becomes an open file and a POST).
const MaxArchives = 64

// maxListed bounds the entries named one by one in a note.
const maxListed = 10

// maxNoteName bounds a name quoted in a note.
const maxNoteName = 200

// Archive is one type/instance archive written by Split.
type Archive struct {
	Type, Instance string
	Path           string // the archive file
	Size           int64
	SHA256         string // lowercase hex, as brep compares it
	Files          int    // regular files in it
}

// Name is the file name the archive is sent as (brep stores it so).
func (a Archive) Name() string { return a.Instance + ".tar" }

// CorruptError means upload.tar is not a valid tar archive: none of it is
// uploaded (the worker's fault, noted in the result; the result stands).
type CorruptError struct{ Err error }

func (e *CorruptError) Error() string {
	return "upload.tar is not a valid tar archive: " + e.Err.Error()
}
func (e *CorruptError) Unwrap() error { return e.Err }

// validName is what a type or instance may be named: it becomes a form
// field, a file name and, on the controller, a directory name.
var validName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$`)

// Split reads upload.tar from r and writes one archive per instance with
// at least one file, for the types accept takes, to path(k) (k counting
// from 0; each written atomically, fsynced). Entries outside
// upload/<type>/<instance>/, of other kinds than files and directories,
// of types accept refuses and beyond MaxArchives are left out, each kind
// said in a note. A malformed upload.tar is a *CorruptError; other errors
// (reading r, writing the archives) are the host's. On any error nothing
// is left written. The archives are returned by type, then instance.
func Split(r io.Reader, accept func(typ string) bool, path func(k int) string) ([]Archive, []string, error) {
	in := &recordingReader{r: r}
	s := &splitter{accept: accept, path: path, open: map[key]*output{}, refused: map[key]int{}, in: in}
	err := s.read(tar.NewReader(bufio.NewReaderSize(in, 64<<10)))
	switch {
	case in.err != nil:
		err = fmt.Errorf("reading upload.tar: %w", in.err)
	case err != nil && !errors.As(err, new(*writeError)):
		err = &CorruptError{Err: err}
	}
	if err == nil {
		err = s.finish()
	}
	if err != nil {
		s.discard()
		return nil, nil, err
	}
	return s.done, s.notes(), nil
}

type key struct{ typ, instance string }

type output struct {
	Archive
	tmp  string
	f    *os.File
	buf  *bufio.Writer
	tw   *tar.Writer
	hash hash.Hash
	n    *countingWriter
}

type splitter struct {
	accept func(string) bool
	path   func(int) string
	open   map[key]*output
	order  []*output
	done   []Archive

	refused  map[key]int // files of types without an upload URL
	outside  []string    // entries not under upload/<type>/<instance>/
	kinds    []string    // entries neither files nor directories
	badNames []string    // type or instance names that cannot be used
	tooMany  []string    // instances beyond MaxArchives

	in      *recordingReader
	written int64 // file bytes written to the archives
}

// errExpands: the archives would hold more than upload.tar itself (a
// sparse file, which archive/tar expands, zeros and all): a bomb.
var errExpands = errors.New("upload.tar expands beyond its own size (a sparse file?)")

// expansionGuard fails a copy once more file bytes were written than were
// read: an honest tar's data comes from its own bytes.
type expansionGuard struct {
	w io.Writer
	s *splitter
}

func (g expansionGuard) Write(p []byte) (int, error) {
	// bufio reads ahead at most its 64 KiB: 1 MiB of slack is plenty.
	if g.s.written+int64(len(p)) > g.s.in.n+1<<20 {
		return 0, errExpands
	}
	n, err := g.w.Write(p)
	g.s.written += int64(n)
	return n, err
}

// writeError marks a failure writing an archive (the host's).
type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func (s *splitter) read(tr *tar.Reader) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag == tar.TypeXGlobalHeader {
			continue // PAX defaults for what follows: nothing of its own
		}
		typ, instance, rest, ok := split(h.Name)
		if !ok {
			s.outside = append(s.outside, printable(h.Name))
			continue
		}
		isDir := h.Typeflag == tar.TypeDir
		isFile := (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeRegA) && !sparse(h)
		switch {
		case instance == "" && isDir:
			continue // upload/ or upload/<type>/
		case instance == "" || (rest == "" && !isDir):
			s.outside = append(s.outside, printable(h.Name))
			continue
		case !isDir && !isFile:
			s.kinds = append(s.kinds, fmt.Sprintf("%s (%s)", printable(h.Name), kind(h.Typeflag)))
			continue
		case !validName.MatchString(typ) || !validName.MatchString(instance):
			s.badNames = append(s.badNames, printable(h.Name))
			continue
		}
		k := key{typ, instance}
		if !s.accept(typ) {
			if isFile {
				s.refused[k]++
			}
			continue
		}
		o, err := s.output(k, h, rest == "")
		if err != nil {
			return hostOr(o, err)
		}
		if o == nil {
			if isFile {
				s.tooMany = append(s.tooMany, typ+"/"+instance)
			}
			continue
		}
		if rest == "" {
			continue // the instance directory: written when opened
		}
		oh := &tar.Header{Name: instance + "/" + rest, Mode: h.Mode & 0o777, ModTime: h.ModTime, Typeflag: tar.TypeReg}
		if isDir {
			oh.Typeflag, oh.Name = tar.TypeDir, oh.Name+"/"
		} else {
			oh.Size = h.Size
			o.Files++
		}
		if err := o.tw.WriteHeader(oh); err != nil {
			return hostOr(o, err)
		}
		if isFile {
			if _, err := io.Copy(expansionGuard{o.tw, s}, tr); err != nil {
				if errors.Is(err, errExpands) {
					return err
				}
				return hostOr(o, err) // else upload.tar ended inside the file
			}
		}
	}
}

// hostOr returns err as the host's when writing o's file failed, else as
// it is: a failure of upload.tar (a truncated file) or of what it holds
// (a header the archive cannot carry).
func hostOr(o *output, err error) error {
	if o != nil && o.n.err != nil {
		return &writeError{err}
	}
	return err
}

// split parses upload/<type>/<instance>/<rest> (rest may be ""; instance
// too, for upload/<type>/). ok is false for anything else, and for names
// that are absolute, hold ".." or control characters.
func split(name string) (typ, instance, rest string, ok bool) {
	name = strings.TrimPrefix(name, "./")
	if name == "" || strings.HasPrefix(name, "/") || strings.ContainsFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return "", "", "", false
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return "", "", "", false
		}
	}
	parts := strings.SplitN(strings.TrimSuffix(path.Clean(name), "/"), "/", 4)
	if parts[0] != "upload" {
		return "", "", "", false
	}
	switch len(parts) {
	case 1:
		return "", "", "", true
	case 2:
		return parts[1], "", "", true
	case 3:
		return parts[1], parts[2], "", true
	}
	return parts[1], parts[2], parts[3], true
}

// output returns the archive of k, opening it (with its <instance>/
// entry, from h when h is the instance directory) on first use; nil when
// MaxArchives are open already.
func (s *splitter) output(k key, h *tar.Header, instanceDir bool) (*output, error) {
	if o := s.open[k]; o != nil {
		return o, nil
	}
	if len(s.order) == MaxArchives {
		return nil, nil
	}
	p := s.path(len(s.order))
	// The journal's sweep removes ".*.tmp*" names left by a crash.
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, &writeError{err}
	}
	o := &output{Archive: Archive{Type: k.typ, Instance: k.instance, Path: p}, tmp: tmp, f: f, hash: sha256.New()}
	o.n = &countingWriter{w: f}
	o.buf = bufio.NewWriterSize(io.MultiWriter(o.n, o.hash), 64<<10)
	o.tw = tar.NewWriter(o.buf)
	s.open[k] = o
	s.order = append(s.order, o)
	dir := &tar.Header{Typeflag: tar.TypeDir, Name: k.instance + "/", Mode: 0o755, ModTime: h.ModTime}
	if instanceDir {
		dir.Mode = h.Mode & 0o777
	}
	return o, o.tw.WriteHeader(dir)
}

// finish completes the archives with content, drops the others (only
// directories) and syncs the directory.
func (s *splitter) finish() error {
	var dirs []string
	for _, o := range s.order {
		if o.Files == 0 {
			o.f.Close()
			os.Remove(o.tmp)
			o.f = nil
			continue
		}
		err := errors.Join(o.tw.Close(), o.buf.Flush())
		if err == nil {
			err = o.f.Sync()
		}
		if cerr := o.f.Close(); err == nil {
			err = cerr
		}
		o.f = nil
		if err == nil {
			err = os.Rename(o.tmp, o.Path)
		}
		if err != nil {
			return fmt.Errorf("writing the %s/%s archive: %w", o.Type, o.Instance, err)
		}
		o.Size, o.SHA256 = o.n.n, hex.EncodeToString(o.hash.Sum(nil))
		s.done = append(s.done, o.Archive)
		if d := filepath.Dir(o.Path); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	for _, d := range dirs {
		fsx.SyncDir(d)
	}
	slices.SortFunc(s.done, func(a, b Archive) int {
		return strings.Compare(a.Type+"/"+a.Instance, b.Type+"/"+b.Instance)
	})
	return nil
}

// discard removes whatever was written.
func (s *splitter) discard() {
	for _, o := range s.order {
		if o.f != nil {
			o.f.Close()
		}
		os.Remove(o.tmp)
		os.Remove(o.Path)
	}
	s.done = nil
}

// notes says what was left out, one line per kind.
func (s *splitter) notes() []string {
	var notes []string
	var refused []key
	for k := range s.refused {
		refused = append(refused, k)
	}
	slices.SortFunc(refused, func(a, b key) int { return strings.Compare(a.typ+"/"+a.instance, b.typ+"/"+b.instance) })
	for i, k := range refused {
		if i == maxListed {
			notes = append(notes, fmt.Sprintf("and %d more instances of types without an upload URL", len(refused)-maxListed))
			break
		}
		notes = append(notes, fmt.Sprintf("upload type %s not uploaded (instance %s, %s): the task has no %s-upload-url", k.typ, k.instance, files(s.refused[k]), k.typ))
	}
	add := func(list []string, what string) {
		if len(list) > 0 {
			notes = append(notes, fmt.Sprintf("upload.tar: %s left out: %s", what, listed(list)))
		}
	}
	add(s.outside, "entries not under upload/<type>/<instance>/")
	add(s.kinds, "entries that are neither files nor directories")
	add(s.badNames, "entries whose type or instance name cannot be used (letters, digits, _ . + -, at most 64)")
	add(slices.Compact(s.tooMany), fmt.Sprintf("instances beyond the first %d", MaxArchives))
	return notes
}

func files(n int) string {
	if n == 1 {
		return "1 file"
	}
	return fmt.Sprintf("%d files", n)
}

func listed(names []string) string {
	if len(names) <= maxListed {
		return strings.Join(names, ", ")
	}
	return strings.Join(names[:maxListed], ", ") + fmt.Sprintf(" and %d more", len(names)-maxListed)
}

func kind(t byte) string {
	switch t {
	case tar.TypeSymlink:
		return "symbolic link"
	case tar.TypeLink:
		return "hard link"
	case tar.TypeChar, tar.TypeBlock:
		return "device"
	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse:
		return "sparse file"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", t)
}

func printable(s string) string {
	// A name may be long (a PAX path): the notes go into the result's log.
	if len(s) > maxNoteName {
		s = strings.ToValidUTF8(s[:maxNoteName], "") + "..."
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

// recordingReader keeps the first read error of upload.tar's file (the
// host's), so that it is not taken for a malformed archive.
type recordingReader struct {
	r   io.Reader
	err error
	n   int64 // bytes read
}

// sparse reports a sparse file (old GNU or PAX GNU.sparse records):
// archive/tar would expand its holes into data of the full size.
func sparse(h *tar.Header) bool {
	if h.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range h.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

func (r *recordingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.n += int64(n)
	if err != nil && !errors.Is(err, io.EOF) && r.err == nil {
		r.err = err
	}
	return n, err
}

type countingWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}
