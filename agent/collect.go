package agent

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/build2/bbot-agent-go/agent/artifact"
	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/agent/result"
)

// collected is what a worker left in its put dir, for collect.
type collected struct {
	put, name string   // the put dir and the result's name in it
	uploads   bool     // upload.tar is in put, complete
	notes     []string // the agent's notes so far
	maxResult int64    // cap of the result, decompressed
}

// collect turns the worker's result and artifacts into the entry's final
// body and uploads: a compressed result is decompressed into the journal
// (the cap applies to what it decompresses to), upload.tar is split into
// one archive per type and instance there, and the result request is
// written with the notes (what the split left out, types without an
// upload URL). With uploads to send, the result is kept beside them
// (journal.SourcePath) so that the body can be written again with the
// notes of uploads that fail; the entry holds the archives before it is
// sendable, so that a crash loses none. A *result.GuestFault means the
// result is unusable (nothing was written); other errors are the host's.
func (a *Agent) collect(j *journal.Journal, e *journal.Entry, c collected) (result.Summary, error) {
	f, err := os.Open(filepath.Join(c.put, c.name))
	if err != nil {
		return result.Summary{}, fmt.Errorf("reading the uploaded result: %w", err) // it was stored: the host's fault
	}
	defer f.Close()
	var src *os.File = f
	kept := false // src is the journal's copy
	if strings.HasSuffix(c.name, result.CompressedSuffix) {
		if err := fsx.WriteAtomic(j.SourcePath(e.ID), 0o600, func(w io.Writer) error {
			_, err := result.Decompress(w, f, c.maxResult)
			return err
		}); err != nil {
			var gf *result.GuestFault
			if errors.As(err, &gf) {
				return result.Summary{}, err
			}
			return result.Summary{}, fmt.Errorf("decompressing the uploaded result: %w", err)
		}
		if src, err = os.Open(j.SourcePath(e.ID)); err != nil {
			j.RemoveExtras(e.ID)
			return result.Summary{}, fmt.Errorf("reading the decompressed result: %w", err)
		}
		defer src.Close()
		kept = true
	}
	notes := c.notes
	var uploads []journal.Upload
	if c.uploads {
		var more []string
		uploads, more = a.splitUploads(j, e, filepath.Join(c.put, uploadTarName))
		notes = append(notes, more...)
		if len(uploads) > 0 && !kept {
			if err := copyFile(j.SourcePath(e.ID), src); err != nil {
				a.Log.Error("keeping the result beside its uploads failed: the uploads are dropped", "entry", e.ID, "error", err)
				notes = append(notes, fmt.Sprintf("the artifacts could not be stored on the host (%v): none uploaded", err))
				uploads = nil
			}
		}
	}
	text := strings.Join(notes, "\n")
	// The uploads are in the entry when it first becomes sendable.
	e.Uploads, e.Notes = uploads, ""
	if len(uploads) > 0 {
		e.Notes = text
	}
	hr := &hostReader{f: src}
	var sum result.Summary
	var werr error
	err = j.Settle(e, journal.Sendable, "", "", func(w io.Writer) error {
		sum, werr = result.Write(w, hr, c.name, entryHead(e), entryTask(e), text, result.MaxRequest)
		if hr.err != nil {
			// The manifest parser reads a failing read as the end of the
			// stream: the upload may look malformed, but the host failed.
			return fmt.Errorf("reading the uploaded result: %w", hr.err)
		}
		return werr
	})
	switch {
	case hr.err != nil:
		err = fmt.Errorf("reading the uploaded result: %w", hr.err)
	case werr != nil:
		err = werr // a guest fault: nothing was written
	}
	if err != nil {
		e.Uploads, e.Notes = nil, ""
		j.RemoveExtras(e.ID)
		return sum, err
	}
	if len(uploads) == 0 {
		j.RemoveExtras(e.ID) // a decompressed result needs keeping only for uploads
	}
	e.Status = sum.Status
	return sum, j.Settle(e, journal.Sendable, sum.Status, "", nil)
}

// splitUploads splits upload.tar into the entry's archives, for the types
// the task has an upload URL for; what cannot be uploaded is said in the
// notes, never dropped silently.
func (a *Agent) splitUploads(j *journal.Journal, e *journal.Entry, path string) ([]journal.Upload, []string) {
	f, err := os.Open(path)
	if err != nil {
		a.Log.Error("reading upload.tar", "error", err)
		return nil, []string{fmt.Sprintf("upload.tar could not be read on the host (%v): no artifacts uploaded", err)}
	}
	defer f.Close()
	archives, notes, err := artifact.Split(f,
		func(typ string) bool { _, ok := e.UploadURLs[typ]; return ok },
		func(k int) string { return j.UploadPath(e.ID, k) })
	var ce *artifact.CorruptError
	switch {
	case errors.As(err, &ce):
		return nil, []string{ce.Error() + ": no artifacts uploaded"}
	case err != nil:
		a.Log.Error("storing the artifacts of upload.tar failed", "entry", e.ID, "error", err)
		return nil, []string{fmt.Sprintf("the artifacts could not be stored on the host (%v): none uploaded", err)}
	}
	var ups []journal.Upload
	for _, ar := range archives {
		ups = append(ups, journal.Upload{Type: ar.Type, Instance: ar.Instance, URL: e.UploadURLs[ar.Type],
			File: filepath.Base(ar.Path), Name: ar.Name(), Size: ar.Size, SHA256: ar.SHA256, State: journal.UploadPending})
	}
	return ups, notes
}

// copyFile writes src, from its start, to path atomically.
func copyFile(path string, src io.ReadSeeker) error {
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	return fsx.WriteAtomic(path, 0o600, func(w io.Writer) error {
		_, err := io.Copy(w, src)
		return err
	})
}

// entryHead is the result request's head as the entry records it.
func entryHead(e *journal.Entry) result.Head {
	return result.Head{Session: e.Session, Challenge: e.Challenge, AgentChecksum: e.AgentChecksum}
}

func entryTask(e *journal.Entry) result.Task {
	return result.Task{Name: e.Package, Version: e.PackageVersion}
}

// finalizeBody is the journal's Finalize: the result pipeline again, over
// the kept result, with the agent's and the failed uploads' notes.
func finalizeBody(dst io.Writer, src io.ReadSeeker, e *journal.Entry, notes string) error {
	_, err := result.Write(dst, src, "result", entryHead(e), entryTask(e), notes, result.MaxRequest)
	return err
}
