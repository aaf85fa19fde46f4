package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/build2/bbot-agent-go/manifest"
	"github.com/build2/bbot-agent-go/tftp"
)

// ResultNames are the names a worker may upload its result manifest as.
var ResultNames = []string{"manifest", "result.manifest"}

// TaskDirs are the TFTP directories of one task: GET serves Get, PUT
// writes Put (SPEC §5: <tftp>/build/<toolchain>/get and put).
type TaskDirs struct{ Root, Get, Put string }

// NewTaskDirs returns the task directories under the TFTP root.
func NewTaskDirs(tftpRoot, toolchain string) TaskDirs {
	base := filepath.Join(tftpRoot, "build", toolchain)
	return TaskDirs{Root: tftpRoot, Get: filepath.Join(base, "get"), Put: filepath.Join(base, "put")}
}

// Create makes both directories empty (leftovers of a crashed run are
// removed) and writes the worker's task as "manifest" and "task.manifest".
func (d TaskDirs) Create(task *manifest.Task) error {
	if err := d.Remove(); err != nil {
		return err
	}
	for _, p := range []string{d.Get, d.Put} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			return err
		}
	}
	var b bytes.Buffer
	if err := task.Serialize(&b); err != nil {
		return err
	}
	for _, n := range []string{"manifest", "task.manifest"} {
		if err := WriteFileAtomic(filepath.Join(d.Get, n), b.Bytes(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Remove deletes both directories (only inside Root).
func (d TaskDirs) Remove() error {
	return errors.Join(removeOwned(d.Root, d.Get), removeOwned(d.Root, d.Put))
}

// EventQueue collects TFTP events without ever blocking a transfer and lets
// one consumer wait for them.
type EventQueue struct {
	mu     sync.Mutex
	events []tftp.Event
	signal chan struct{}
	// lastUpload is when the last completed upload was reported.
	lastUpload time.Time
}

func NewEventQueue() *EventQueue { return &EventQueue{signal: make(chan struct{}, 1)} }

// Notify is a tftp.Mapping.Notify function.
func (q *EventQueue) Notify(e tftp.Event) {
	q.mu.Lock()
	q.events = append(q.events, e)
	if e.Kind == tftp.UploadCompleted {
		q.lastUpload = e.Time
	}
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

func (q *EventQueue) uploadTime() time.Time {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.lastUpload
}

// Next returns the next event, waiting until one comes or ctx ends.
func (q *EventQueue) Next(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, true) }

// peek waits for an event without consuming it.
func (q *EventQueue) peek(ctx context.Context) (tftp.Event, error) { return q.wait(ctx, false) }

func (q *EventQueue) wait(ctx context.Context, consume bool) (tftp.Event, error) {
	for {
		q.mu.Lock()
		if len(q.events) > 0 {
			e := q.events[0]
			if consume {
				q.events = q.events[1:]
			}
			q.mu.Unlock()
			return e, nil
		}
		q.mu.Unlock()
		select {
		case <-q.signal:
		case <-ctx.Done():
			return tftp.Event{}, ctx.Err()
		}
	}
}

// ErrStartupTimeout means the machine never talked to the TFTP server.
var ErrStartupTimeout = errors.New("no TFTP request from the machine within the startup timeout")

// ErrBuildTimeout means no result arrived within the build timeout.
var ErrBuildTimeout = errors.New("no result uploaded within the build timeout")

// WaitUpload waits for the first request (within startup; 0 = no limit)
// and then for a completed upload of one of names (within total, counted
// from the call). The upload's completion event ends the wait: there is no
// polling. It returns the uploaded name.
func WaitUpload(ctx context.Context, q *EventQueue, names []string, startup, total time.Duration) (string, error) {
	deadline := time.Now().Add(total)
	startDeadline := deadline
	if startup > 0 && startup < total {
		startDeadline = time.Now().Add(startup)
	}
	alive := false
	for {
		d := deadline
		if !alive {
			d = startDeadline
		}
		waitCtx, cancel := context.WithDeadline(ctx, d)
		e, err := q.Next(waitCtx)
		cancel()
		if err != nil {
			switch {
			case ctx.Err() != nil:
				return "", ctx.Err()
			case !alive:
				return "", ErrStartupTimeout
			}
			return "", ErrBuildTimeout
		}
		alive = true
		if e.Kind != tftp.UploadCompleted {
			continue
		}
		if name, err := tftp.CleanName(e.Name); err == nil && slices.Contains(names, name) {
			return name, nil
		}
	}
}

// ReadResult parses the uploaded result leniently and forces the task's
// name and version (brep rejects anything else). An unreadable or malformed
// result becomes an abnormal one; the error says why.
func ReadResult(path string, task *manifest.Task) (manifest.Result, error) {
	res := manifest.Result{Name: task.Name(), Version: task.Version(), Status: "abnormal"}
	f, err := os.Open(path)
	if err != nil {
		return res, err
	}
	defer f.Close()
	r, err := manifest.ParseResult(f, filepath.Base(path))
	if err != nil {
		return res, err
	}
	if r.Name != task.Name() || r.Version != task.Version() {
		err = fmt.Errorf("result for %s/%s replaced by the task's %s/%s", r.Name, r.Version, task.Name(), task.Version())
	}
	r.Name, r.Version = task.Name(), task.Version()
	return r, err
}
