// Package journal is the agent's task journal, which is also its result
// outbox: one entry per task session, written and fsynced when the task is
// received (before any snapshot), holding the result request that will be
// sent for it. Whatever moment the agent dies at, the entry says what to
// send: the signed "interrupt" request written at receipt, or the real
// result once it was persisted. An entry goes
//
//	received -> held (guest fault: outcome final, machine kept) -> sendable -> removed
//	received -> sendable -> removed (after the controller's 2xx)
//
// Entries live under a per-instance directory that the owning process
// flocks, so a starting agent recovers only entries no live process holds.
//
// A sendable entry may hold artifact uploads (bbot's upload.tar, split per
// type and instance): their archives are files of the entry, sent before
// the result (Sender.SendUploads), each recorded as sent or failed as it
// settles; a failed one becomes a note in the result, whose body is then
// written again from the worker's result kept beside it.
package journal

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/agent/internal/fsx"
)

// FormatVersion is the entry format; entries of the older outbox format
// (results/*.json) are imported at start-up.
const FormatVersion = 2

// State is where an entry is in its life.
type State string

const (
	// Received: the task was taken; the body is the signed interrupt
	// request, unless a later step already replaced it.
	Received State = "received"
	// Held: a guest fault; the body is the final abort/abnormal result,
	// sent once the hold ends (QEMU exit, suspend timeout, shutdown).
	Held State = "held"
	// Sendable: the body is final and is being sent.
	Sendable State = "sendable"
)

// Entry is one task session's record. The request body is a file of its
// own (<id>.req) so that it can be streamed to the controller.
type Entry struct {
	Version int    `json:"version"`
	ID      string `json:"id"`
	State   State  `json:"state"`
	// URL is the controller's result-url.
	URL string `json:"url"`
	// Created is when the task was received; Settled is when the body
	// became final (the result TTL counts from it).
	Created time.Time `json:"created"`
	Settled time.Time `json:"settled,omitzero"`

	// What recovery needs to rebuild the request from a result the worker
	// had completely uploaded before the agent died.
	Session        string `json:"session"`
	Challenge      string `json:"challenge,omitempty"` // signed, base64
	AgentChecksum  string `json:"agent-checksum,omitempty"`
	Package        string `json:"package"`
	PackageVersion string `json:"package-version"`

	// Where the task ran, for recovery's clean-up.
	MachineDir string `json:"machine-dir,omitempty"`
	Snapshot   string `json:"snapshot,omitempty"`
	Put        string `json:"put,omitempty"` // TFTP PUT dir of the task

	// Status is the result status in the body; Reason says why (for held
	// entries and logs).
	Status string `json:"status"`
	Reason string `json:"reason,omitempty"`

	// UploadURLs are the task's <type>-upload-url values by type, so that
	// recovery can take a crashed agent's uploads too.
	UploadURLs map[string]string `json:"upload-urls,omitempty"`
	// Uploads are the artifact archives to send before the result; Notes,
	// while one is pending, are the agent's notes the body was written
	// with (a rewrite adds the failed uploads' notes to them).
	Uploads []Upload `json:"uploads,omitempty"`
	Notes   string   `json:"notes,omitempty"`
}

// Journal is one instance's directory of entries, flocked by its owner.
type Journal struct {
	dir  string
	lock *os.File
}

// Dir returns the instance directory below stateDir.
func Dir(stateDir string, instance int) string {
	return filepath.Join(stateDir, "journal", strconv.Itoa(instance))
}

// ErrBusy means another live process holds the instance.
var ErrBusy = errors.New("journal instance is held by another process")

// Open creates (0700) and flocks the instance directory dir.
func Open(dir string) (*Journal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", dir, ErrBusy)
		}
		return nil, err
	}
	j := &Journal{dir: dir, lock: f}
	j.sweep()
	return j, nil
}

// Close releases the instance.
func (j *Journal) Close() error { return j.lock.Close() }

// Path returns the directory.
func (j *Journal) Path() string { return j.dir }

func (j *Journal) metaPath(id string) string { return filepath.Join(j.dir, id+".json") }

// BodyPath is the file holding the entry's result request.
func (j *Journal) BodyPath(id string) string { return filepath.Join(j.dir, id+".req") }

// SourcePath is the file keeping the worker's result (decompressed) while
// the entry's uploads are pending.
func (j *Journal) SourcePath(id string) string { return filepath.Join(j.dir, id+".src") }

// UploadPath is the file of the entry's k-th upload archive.
func (j *Journal) UploadPath(id string, k int) string {
	return filepath.Join(j.dir, id+".up"+strconv.Itoa(k)+".tar")
}

// entryOf returns the entry a file of the journal belongs to: its body,
// kept result or an upload archive (not its .json).
func entryOf(name string) (string, bool) {
	for _, suffix := range []string{".req", ".src"} {
		if id, ok := strings.CutSuffix(name, suffix); ok && id != "" {
			return id, true
		}
	}
	if rest, ok := strings.CutSuffix(name, ".tar"); ok {
		if i := strings.LastIndex(rest, ".up"); i > 0 {
			if _, err := strconv.Atoi(rest[i+3:]); err == nil {
				return rest[:i], true
			}
		}
	}
	return "", false
}

// files lists the files of entry id besides its .json, by name.
func (j *Journal) files(id string) []string {
	ents, _ := os.ReadDir(j.dir)
	var names []string
	for _, de := range ents {
		if owner, ok := entryOf(de.Name()); ok && owner == id {
			names = append(names, de.Name())
		}
	}
	return names
}

// RemoveExtras removes the entry's kept result and upload archives (its
// uploads are settled, or never to be sent).
func (j *Journal) RemoveExtras(id string) {
	for _, n := range j.files(id) {
		if !strings.HasSuffix(n, ".req") {
			os.Remove(filepath.Join(j.dir, n))
		}
	}
}

// sweep removes temporary files of interrupted writes and the files of
// entries that are gone (removed after delivery).
func (j *Journal) sweep() {
	ents, _ := os.ReadDir(j.dir)
	for _, e := range ents {
		n := e.Name()
		if strings.HasPrefix(n, ".") && strings.Contains(n, ".tmp") {
			os.Remove(filepath.Join(j.dir, n))
			continue
		}
		if id, ok := entryOf(n); ok {
			if _, err := os.Stat(j.metaPath(id)); errors.Is(err, os.ErrNotExist) {
				os.Remove(filepath.Join(j.dir, n))
			}
		}
	}
}

// NewID returns a fresh entry id, ordered by time.
func NewID() string {
	var b [4]byte
	rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405.000000000") + "-" + hex.EncodeToString(b[:])
}

// Receive writes a new entry in state Received with body as its request
// (the signed interrupt result): body first, then the entry, each fsynced.
func (j *Journal) Receive(e *Entry, body []byte) error {
	if e.ID == "" {
		e.ID = NewID()
	}
	e.Version, e.State = FormatVersion, Received
	if e.Created.IsZero() {
		e.Created = time.Now().UTC()
	}
	if err := fsx.WriteFileAtomic(j.BodyPath(e.ID), body, 0o600); err != nil {
		return err
	}
	return j.save(e)
}

// Settle replaces the entry's body with what write produces (nil keeps the
// body) and moves it to state with the body's status. The body is renamed
// into place before the entry changes, so a crash leaves the old state with
// the old or the new body, never a torn one.
func (j *Journal) Settle(e *Entry, state State, status, reason string, write func(io.Writer) error) error {
	if write != nil {
		if err := fsx.WriteAtomic(j.BodyPath(e.ID), 0o600, write); err != nil {
			return err
		}
	}
	e.State, e.Status, e.Reason = state, status, reason
	if state == Sendable && e.Settled.IsZero() {
		e.Settled = time.Now().UTC()
	}
	if err := j.save(e); err != nil {
		if write != nil {
			// The new body is in place: it is what will be sent.
			return fmt.Errorf("%w: %w", ErrStateNotSaved, err)
		}
		return err
	}
	return nil
}

// ErrStateNotSaved: Settle replaced the body but could not record the new
// state; the new body is what will be sent (recovery sends it).
var ErrStateNotSaved = errors.New("journal: body replaced, state not saved")

func (j *Journal) save(e *Entry) error {
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	return fsx.WriteFileAtomic(j.metaPath(e.ID), append(data, '\n'), 0o600)
}

// Remove deletes a delivered entry: the entry first, so that a crash in
// between leaves only orphan files (swept), never a resend.
func (j *Journal) Remove(id string) error {
	files := j.files(id)
	if err := os.Remove(j.metaPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fsx.SyncDir(j.dir)
	for _, n := range files {
		os.Remove(filepath.Join(j.dir, n))
	}
	return nil
}

// Entries lists the entries, oldest first. Unreadable entries are
// returned as errors beside the readable ones.
func (j *Journal) Entries() ([]*Entry, error) { return ReadEntries(j.dir) }

// ReadEntries returns the entries in the journal directory dir by id,
// without taking the instance (for --results beside a running agent).
func ReadEntries(dir string) ([]*Entry, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []*Entry
	var errs []error
	for _, de := range ents {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") {
			continue
		}
		e, err := readEntry(filepath.Join(dir, de.Name()), id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, e)
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, errors.Join(errs...)
}

// Fail moves an entry that cannot be delivered to failedDir, with a .why
// file saying why; nothing is deleted.
func (j *Journal) Fail(e *Entry, failedDir, why string) error {
	if err := os.MkdirAll(failedDir, 0o700); err != nil {
		return err
	}
	err := errors.Join(
		os.Rename(j.BodyPath(e.ID), filepath.Join(failedDir, e.ID+".req")),
		fsx.WriteFileAtomic(filepath.Join(failedDir, e.ID+".why"), []byte(why+"\n"), 0o600),
	)
	if err != nil {
		return err
	}
	j.RemoveExtras(e.ID) // the uploads went before the result, or never will
	return os.Rename(j.metaPath(e.ID), filepath.Join(failedDir, e.ID+".json"))
}

// Adopt moves every entry of from (another instance's journal, left by a
// dead process) into j, so that from's instance is free again at once
// while j sends them. Its files (body, kept result, upload archives) are
// linked first and the entry renamed after: a crash in between leaves the
// entry whole in from (and unreferenced files in j, swept), never lost.
// It returns the ids of the entries it moved.
func (j *Journal) Adopt(from *Journal) ([]string, error) {
	ents, err := os.ReadDir(from.dir)
	if err != nil {
		return nil, err
	}
	var moved []string
	var errs []error
	for _, de := range ents {
		id, ok := strings.CutSuffix(de.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") {
			continue
		}
		files := from.files(id)
		var lerr error
		for _, f := range files {
			if err := os.Link(filepath.Join(from.dir, f), filepath.Join(j.dir, f)); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, os.ErrNotExist) {
				lerr = err
				break
			}
		}
		if lerr != nil {
			errs = append(errs, lerr)
			continue
		}
		fsx.SyncDir(j.dir)
		if err := os.Rename(from.metaPath(id), j.metaPath(id)); err != nil {
			errs = append(errs, err)
			continue
		}
		fsx.SyncDir(j.dir)
		fsx.SyncDir(from.dir)
		for _, f := range files {
			os.Remove(filepath.Join(from.dir, f))
		}
		moved = append(moved, id)
	}
	return moved, errors.Join(errs...)
}

// Orphans opens the instance directories below stateDir/journal that no
// live process holds (for recovery), each opened and flocked.
func Orphans(stateDir string) ([]*Journal, error) {
	ents, err := os.ReadDir(filepath.Join(stateDir, "journal"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Journal
	for _, de := range ents {
		if !de.IsDir() {
			continue
		}
		j, err := Open(filepath.Join(stateDir, "journal", de.Name()))
		if errors.Is(err, ErrBusy) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, j)
	}
	return out, nil
}

// Counts are the journal entries below a state directory, by state, and
// the entries in failed/; read without taking any instance (for --status
// beside a running agent).
type Counts struct {
	ByState map[State]int
	Failed  int
}

// Count reads the counts of every instance below stateDir.
func Count(stateDir string) (Counts, error) {
	c := Counts{ByState: map[State]int{}}
	dirs, err := os.ReadDir(filepath.Join(stateDir, "journal"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return c, err
	}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		n, err := CountStates(filepath.Join(stateDir, "journal", d.Name()))
		if err != nil {
			return c, err
		}
		for st, k := range n {
			c.ByState[st] += k
		}
	}
	c.Failed, err = CountFailed(filepath.Join(stateDir, "failed"))
	return c, err
}

// CountStates counts the entries in dir (a Dir) by state, read-only and
// without the flock, so that any process may look (metrics, status). An
// entry changing meanwhile is counted as it was or as it became; one that
// cannot be read is not counted. A missing dir has none.
func CountStates(dir string) (map[State]int, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[State]int{}, nil
	}
	if err != nil {
		return nil, err
	}
	n := map[State]int{}
	for _, de := range ents {
		name := de.Name()
		if !strings.HasSuffix(name, ".json") || strings.HasPrefix(name, ".") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			continue // delivered and removed meanwhile
		}
		var e struct {
			State State `json:"state"`
		}
		if json.Unmarshal(data, &e) == nil {
			n[e.State]++
		}
	}
	return n, nil
}

// CountFailed counts the results kept in a failed/ directory (see Fail).
func CountFailed(failedDir string) (int, error) {
	ents, err := os.ReadDir(failedDir)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, de := range ents {
		if name := de.Name(); strings.HasSuffix(name, ".json") && !strings.HasPrefix(name, ".") {
			n++
		}
	}
	return n, nil
}
