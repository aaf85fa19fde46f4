package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/build2/bbot-agent-go/tftp"
)

// uploadTarName is the worker's artifacts archive (bbot's upload.tar,
// upload/<type>/<instance>/...), uploaded beside its result.
const uploadTarName = "upload.tar"

// maxUploadTar caps upload.tar over TFTP (the result files keep
// maxTaskUpload): room for the binary packages of several distributions;
// brep takes 10 MiB per type and upload by default (upload-max-size), and
// refuses what is over its own limit.
const maxUploadTar = 128 << 20

// uploadGrace bounds the wait, once the result is in, for uploads still in
// progress (upload.tar sent after or beside it) before the machine is
// forced down. Only taken while such a transfer is under way.
var uploadGrace = 5 * time.Second

// recordTransfer keeps what became of one of the session's extras: a
// completed upload stays completed (a failed repeat leaves the file in
// place).
func (s *session) recordTransfer(name string, e tftp.Event) {
	if e.Op != tftp.Put || (e.Kind != tftp.UploadCompleted && e.Kind != tftp.TransferFailed) {
		return
	}
	if s.transfers == nil {
		s.transfers = map[string]tftp.Event{}
	}
	if prev, ok := s.transfers[name]; ok && prev.Kind == tftp.UploadCompleted && e.Kind != tftp.UploadCompleted {
		return
	}
	s.transfers[name] = e
}

// noteEvent records e if it concerns one of the extras.
func (s *session) noteEvent(e tftp.Event) {
	if name, err := tftp.CleanName(e.Name); err == nil && containsString(s.extras, name) {
		s.recordTransfer(name, e)
	}
}

// finishTransfers runs once the result is in: uploads still in progress
// get up to uploadGrace to complete (while the machine runs), then the
// events that came meanwhile are recorded, and what is still being
// transferred is noted as such.
func (s *session) finishTransfers(ctx context.Context) {
	if s.mp == nil {
		return
	}
	var exited <-chan struct{}
	if s.m != nil {
		exited = s.m.Exited()
	}
	names, idle := s.mp.UploadsInFlight()
	if len(names) > 0 && !isClosed(exited) {
		s.v.Log.Info("result in, waiting for uploads still in progress", "uploads", names, "grace", uploadGrace)
		t := time.NewTimer(uploadGrace)
		h := heartOf(ctx)
	wait:
		for {
			select {
			case <-idle:
				break wait
			case <-t.C:
				break wait
			case <-exited:
				break wait
			case <-ctx.Done():
				break wait
			case <-h.beat():
			}
		}
		t.Stop()
	}
	for {
		e, ok := s.q.tryNext()
		if !ok {
			break
		}
		s.noteEvent(e)
	}
	s.inFlight, _ = s.mp.UploadsInFlight()
}

// tryNext returns the next queued event without waiting.
func (q *eventQueue) tryNext() (tftp.Event, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.events) == 0 {
		return tftp.Event{}, false
	}
	e := q.events[0]
	q.events = q.events[1:]
	return e, true
}

// extraUpload says whether the extra file name was uploaded completely and
// if not, what the result's notes say about it ("" when the worker sent
// none).
func (s *session) extraUpload(name string) (bool, string) {
	e, seen := s.transfers[name]
	complete := seen && e.Kind == tftp.UploadCompleted
	for _, n := range s.inFlight {
		if c, err := tftp.CleanName(n); err == nil && c == name && !complete {
			return false, fmt.Sprintf("%s was still being uploaded %s after the result: no artifacts uploaded", name, uploadGrace)
		}
	}
	switch {
	case !seen || complete:
		return complete, ""
	case e.Fault == tftp.FaultRefused:
		return false, fmt.Sprintf("%s refused by the agent (%v; it may be up to %d MiB): no artifacts uploaded", name, e.Cause, s.maxSizes[name]>>20)
	}
	return false, fmt.Sprintf("%s transfer failed after %d bytes (%v): no artifacts uploaded", name, e.Size, e.Cause)
}
