package journal

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
	"github.com/build2/bbot-agent-go/agent/internal/logx"
	"github.com/build2/bbot-agent-go/manifest"
)

// MaxUploadTime bounds how long a task's uploads are tried, counted from
// the result's settling, whatever the result TTL: brep takes uploads only
// until the result arrives, and the result must not wait for long.
const MaxUploadTime = 15 * time.Minute

// UploadState is where an upload is.
type UploadState string

const (
	UploadPending UploadState = "pending"
	UploadSent    UploadState = "sent"
	// UploadFailed: refused by the controller or not delivered in time;
	// Note says which, for the result.
	UploadFailed UploadState = "failed"
)

// Upload is one artifact archive of an entry: what the multipart POST to
// URL carries, and how it went.
type Upload struct {
	Type     string      `json:"type"`
	Instance string      `json:"instance"`
	URL      string      `json:"url"`
	File     string      `json:"file"` // in the journal directory
	Name     string      `json:"name"` // the archive's file name in the form
	Size     int64       `json:"size"`
	SHA256   string      `json:"sha256"`
	State    UploadState `json:"state"`
	Note     string      `json:"note,omitempty"`
}

func (u *Upload) what() string {
	return fmt.Sprintf("%s upload of instance %s (%d bytes)", u.Type, u.Instance, u.Size)
}

// uploadWindow is how long an entry's uploads are tried.
func (s *Sender) uploadWindow() time.Duration {
	if s.TTL > 0 && s.TTL < MaxUploadTime {
		return s.TTL
	}
	return MaxUploadTime
}

// SendUploads sends the entry's pending uploads, one after another, each
// retried on network errors, redirects, 429 and 5xx until min(TTL,
// MaxUploadTime) from the entry's settling has passed; another 4xx fails
// it at once. Each outcome is saved as it comes. Once none is pending,
// the body is written again with the failed uploads' notes (Finalize) and
// the archives are removed. It reports false when ctx ended first: the
// entry stays for the next start.
func (s *Sender) SendUploads(ctx context.Context, j *Journal, e *Entry) bool {
	settled := e.Settled
	if settled.IsZero() {
		settled = e.Created
	}
	deadline := settled.Add(s.uploadWindow())
	for i := range e.Uploads {
		u := &e.Uploads[i]
		if u.State != UploadPending {
			continue
		}
		if !s.sendUpload(ctx, j, e, u, deadline) {
			return false
		}
		if err := j.save(e); err != nil {
			// Sent again after a restart, at worst: brep keeps both.
			s.Log.Error("recording an upload's outcome in the journal", "id", e.ID, "error", err)
		}
	}
	s.finalize(ctx, j, e)
	return true
}

func (s *Sender) sendUpload(ctx context.Context, j *Journal, e *Entry, u *Upload, deadline time.Time) bool {
	why := ""
	for attempt := 0; ; attempt++ {
		if !time.Now().Before(deadline) {
			u.State = UploadFailed
			u.Note = fmt.Sprintf("%s not delivered within %s; last error: %s", u.what(), s.uploadWindow(), why)
			if attempt == 0 {
				why = "the uploads' time had passed"
				u.Note = fmt.Sprintf("%s not tried: the uploads' time (%s) had passed", u.what(), s.uploadWindow())
			}
			s.Log.Error("upload not delivered in time: noted in the result", "id", e.ID, "type", u.Type, "instance", u.Instance, "why", why)
			return true
		}
		uncover := s.cover(ctx)
		pctx, cancel := context.WithDeadline(ctx, deadline)
		status, answer, err := s.postUpload(pctx, j, e, u)
		cancel()
		uncover()
		if ctx.Err() != nil {
			return false
		}
		switch {
		case err == nil && status/100 == 2:
			if s.UploadDelivered != nil {
				s.UploadDelivered(e)
			}
			u.State = UploadSent
			s.Log.Log(context.Background(), logx.LevelNotice, "upload delivered", "id", e.ID, "package", e.Package, "type", u.Type, "instance", u.Instance, "size", u.Size, "answer", answer)
			return true
		case err == nil && status/100 == 4 && status != http.StatusTooManyRequests:
			u.State = UploadFailed
			u.Note = fmt.Sprintf("%s refused by the controller: %s", u.what(), answer)
			s.Log.Warn("upload refused: noted in the result", "id", e.ID, "type", u.Type, "instance", u.Instance, "answer", answer)
			return true
		case err != nil:
			why = err.Error()
		default:
			why = answer
		}
		delay := min(Backoff(attempt, s.Min, s.Max), time.Until(deadline))
		s.Log.Warn("upload failed, retrying", "id", e.ID, "type", u.Type, "instance", u.Instance, "error", why, "retry-in", delay.Round(time.Millisecond))
		if !s.sleep(ctx, delay) {
			return false
		}
	}
}

// postUpload POSTs one archive as brep's upload handler takes it:
// multipart/form-data with session, instance, sha256sum, challenge (the
// result's signature, when the task had one) and the archive as a file
// part, streamed from the journal with its length known. It returns the
// HTTP status and the answer: the upload result manifest's "<status>
// <message>" (and reference), or the body's first line.
func (s *Sender) postUpload(ctx context.Context, j *Journal, e *Entry, u *Upload) (int, string, error) {
	f, err := os.Open(j.pathOf(u.File))
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	var head bytes.Buffer
	mw := multipart.NewWriter(&head)
	fields := [][2]string{{"session", e.Session}, {"instance", u.Instance}, {"sha256sum", u.SHA256}}
	if e.Challenge != "" {
		fields = append(fields, [2]string{"challenge", e.Challenge})
	}
	for _, fv := range fields {
		if err := mw.WriteField(fv[0], fv[1]); err != nil {
			return 0, "", err
		}
	}
	ph := textproto.MIMEHeader{}
	ph.Set("Content-Disposition", multipart.FileContentDisposition("archive", u.Name))
	ph.Set("Content-Type", "application/x-tar")
	if _, err := mw.CreatePart(ph); err != nil {
		return 0, "", err
	}
	tail := "\r\n--" + mw.Boundary() + "--\r\n"
	body := io.MultiReader(bytes.NewReader(head.Bytes()), io.LimitReader(f, u.Size), strings.NewReader(tail))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.URL, body)
	if err != nil {
		return 0, "", err
	}
	req.ContentLength = int64(head.Len()) + u.Size + int64(len(tail))
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := s.do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 == 3 {
		return 0, "", fmt.Errorf("HTTP %d redirect to %q: not followed", resp.StatusCode, resp.Header.Get("Location"))
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, uploadAnswer(resp.StatusCode, data), nil
}

// uploadAnswer renders brep's upload result manifest (status, message,
// reference), or the first line of another answer.
func uploadAnswer(status int, data []byte) string {
	var msg, ref string
	p := manifest.NewParser(bytes.NewReader(data), "upload result")
	ok := false
	for {
		nv, err := p.Next()
		if err != nil {
			break
		}
		switch nv.Name {
		case "message":
			msg, ok = nv.Value, true
		case "reference":
			ref = nv.Value
		}
	}
	if !ok {
		line, _, _ := strings.Cut(strings.TrimSpace(string(data)), "\n")
		return fmt.Sprintf("HTTP %d: %s", status, manifest.Sanitize(line))
	}
	answer := fmt.Sprintf("%d %s", status, msg)
	if ref != "" {
		answer += " (reference " + ref + ")"
	}
	return answer
}

// finalize ends the entry's uploads: if some failed, the body is written
// again from the kept result with their notes after the agent's own, then
// the kept result and the archives are removed. A crash in between
// repeats it (the same notes, the same body). Without Finalize, or if the
// rewrite fails, the body goes as it is and the notes are logged.
func (s *Sender) finalize(ctx context.Context, j *Journal, e *Entry) {
	// The rewrite reads at most the capped result twice.
	defer s.cover(ctx)()
	src := j.SourcePath(e.ID)
	if _, err := os.Stat(src); err != nil {
		j.RemoveExtras(e.ID)
		return
	}
	var failed []string
	for _, u := range e.Uploads {
		if u.State == UploadFailed {
			failed = append(failed, u.Note)
		}
	}
	if len(failed) > 0 {
		notes := strings.Join(failed, "\n")
		if e.Notes != "" {
			notes = e.Notes + "\n" + notes
		}
		err := fmt.Errorf("no result pipeline to rewrite it with")
		if s.Finalize != nil {
			err = fsx.WriteAtomic(j.BodyPath(e.ID), 0o600, func(w io.Writer) error {
				f, err := os.Open(src)
				if err != nil {
					return err
				}
				defer f.Close()
				return s.Finalize(w, f, e, notes)
			})
		}
		if err != nil {
			s.Log.Error("the result is sent without the notes of its failed uploads", "id", e.ID, "notes", strings.Join(failed, "; "), "error", err)
		}
	}
	j.RemoveExtras(e.ID)
}

// pathOf is a file of the journal named in an entry (only ever a base
// name there).
func (j *Journal) pathOf(name string) string { return filepath.Join(j.dir, filepath.Base(name)) }
