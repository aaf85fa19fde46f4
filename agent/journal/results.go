package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
)

// ResendDir is the journal directory where --resend queues failed results
// for the agent to take over and send (a journal of its own, flocked while
// it is written or emptied).
func ResendDir(stateDir string) string { return filepath.Join(stateDir, "resend") }

// FailedDir is where results that could not be delivered are kept.
func FailedDir(stateDir string) string { return filepath.Join(stateDir, "failed") }

// Failed is a result kept in failed/: its entry, why it failed and when.
type Failed struct {
	ID       string
	Entry    *Entry // nil if its .json cannot be read (Err says why)
	Err      error
	Why      string
	FailedAt time.Time // the .why file's modification time
}

// idPattern is what NewID makes; only such names are ever acted on in
// failed/.
var idPattern = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}\.[0-9]{9}-[0-9a-f]{8}$`)

// ListFailed returns the results in failedDir, oldest first.
func ListFailed(failedDir string) ([]Failed, error) {
	ents, err := os.ReadDir(failedDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []Failed
	for _, de := range ents {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || !idPattern.MatchString(id) {
			continue
		}
		f := Failed{ID: id}
		f.Entry, f.Err = readEntry(filepath.Join(failedDir, de.Name()), id)
		why := filepath.Join(failedDir, id+".why")
		if data, err := os.ReadFile(why); err == nil {
			f.Why = strings.TrimSpace(string(data))
		}
		if fi, err := os.Stat(why); err == nil {
			f.FailedAt = fi.ModTime()
		} else if fi, err := de.Info(); err == nil {
			f.FailedAt = fi.ModTime()
		}
		out = append(out, f)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, nil
}

func readEntry(path, id string) (*Entry, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil {
		return nil, fmt.Errorf("journal entry %s: %w", id, err)
	}
	if e.Version > FormatVersion {
		return nil, fmt.Errorf("journal entry %s: format %d is newer than this agent's %d", id, e.Version, FormatVersion)
	}
	e.ID = id
	return &e, nil
}

// ErrNotFailed means failed/ holds no result of that id.
var ErrNotFailed = errors.New("no such result in failed/")

// ErrQueued means the result is already queued for sending.
var ErrQueued = errors.New("already queued for sending")

// Resend moves the failed result id from failedDir into the resend
// journal, sendable afresh: its result TTL counts from now. Its body is
// linked there first, the entry written next, the failed/ files removed
// last: a crash leaves it in failed/, or queued (and still in failed/,
// which a second Resend reports as ErrQueued).
func Resend(failedDir, resendDir, id string) (*Entry, error) {
	if !idPattern.MatchString(id) {
		return nil, fmt.Errorf("%q is not a result id (as --results lists them)", id)
	}
	e, err := readEntry(filepath.Join(failedDir, id+".json"), id)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", id, ErrNotFailed)
	}
	if err != nil {
		return nil, err
	}
	j, err := Open(resendDir)
	if err != nil {
		return nil, err
	}
	defer j.Close()
	if _, err := os.Stat(j.metaPath(id)); err == nil {
		return nil, fmt.Errorf("%s: %w", id, ErrQueued)
	}
	// Taken over by an agent already (its journal is beside failed/).
	if taken, _ := filepath.Glob(filepath.Join(filepath.Dir(failedDir), "journal", "*", id+".json")); len(taken) > 0 {
		return nil, fmt.Errorf("%s: %w", id, ErrQueued)
	}
	if err := os.Link(filepath.Join(failedDir, id+".req"), j.BodyPath(id)); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, err
	}
	fsx.SyncDir(j.dir)
	// Its upload archives were removed when it failed.
	e.State, e.Settled, e.Uploads = Sendable, time.Now().UTC(), nil
	if err := j.save(e); err != nil {
		os.Remove(j.BodyPath(id))
		return nil, err
	}
	for _, suffix := range []string{".json", ".req", ".why"} {
		os.Remove(filepath.Join(failedDir, id+suffix))
	}
	fsx.SyncDir(failedDir)
	return e, nil
}

// PurgeFailed removes the results that failed longer than ttl before now
// (by their .why file's time) and returns their ids. Only files named
// after an entry id are touched.
func PurgeFailed(failedDir string, ttl time.Duration, now time.Time) ([]string, error) {
	failed, err := ListFailed(failedDir)
	if err != nil {
		return nil, err
	}
	var purged []string
	var errs []error
	for _, f := range failed {
		if f.FailedAt.IsZero() || now.Sub(f.FailedAt) < ttl {
			continue
		}
		// The entry last: a crash leaves it listed, and the next purge
		// finds it again (by the entry's own time then).
		for _, suffix := range []string{".req", ".why", ".json"} {
			if err := os.Remove(filepath.Join(failedDir, f.ID+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		purged = append(purged, f.ID)
	}
	return purged, errors.Join(errs...)
}
