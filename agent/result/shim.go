// Package result: temporary in-memory stand-in, replaced by the streaming pipeline.
package result

import (
	"bytes"
	"io"
	"strings"

	"github.com/build2/bbot-agent-go/manifest"
)

const MaxRequest = 15 << 20
const MaxOperations = 10000

type Head struct{ Session, Challenge, AgentChecksum string }
type Task struct{ Name, Version string }
type Summary struct {
	Status     string
	Operations int
	Size       int64
}

type GuestFault struct{ Err error }

func (g *GuestFault) Error() string { return g.Err.Error() }
func (g *GuestFault) Unwrap() error { return g.Err }

func withNotes(res manifest.Result, notes string) manifest.Result {
	if notes == "" {
		return res
	}
	d := "bbot-agent: " + manifest.Sanitize(strings.TrimRight(notes, "\n")) + "\n"
	if len(res.Operations) == 0 {
		res.Operations = []manifest.OperationResult{{Operation: "configure", Status: res.Status, Log: d}}
		return res
	}
	ops := append([]manifest.OperationResult(nil), res.Operations...)
	ops[len(ops)-1].Log += d
	res.Operations = ops
	return res
}

func Write(dst io.Writer, src io.ReadSeeker, srcName string, h Head, t Task, notes string, limit int64) (Summary, error) {
	r, err := manifest.ParseResult(src, srcName)
	if err != nil {
		return Summary{}, &GuestFault{err}
	}
	r.Name, r.Version = t.Name, t.Version
	return FromMemory(dst, h, r, notes, limit)
}

func FromMemory(dst io.Writer, h Head, r manifest.Result, notes string, limit int64) (Summary, error) {
	r = withNotes(r, notes)
	rr := manifest.ResultRequest{Session: h.Session, Challenge: h.Challenge, AgentChecksum: h.AgentChecksum, Result: r}
	var b bytes.Buffer
	if err := rr.Serialize(&b); err != nil {
		return Summary{}, err
	}
	n, err := dst.Write(b.Bytes())
	return Summary{Status: r.Status, Operations: len(r.Operations), Size: int64(n)}, err
}

func AbortForm(dst io.Writer, src io.Reader) error {
	rr, err := manifest.ParseResultRequest(src, "request")
	if err != nil {
		return err
	}
	if rr.Result.Status == "interrupt" {
		rr.Result.Status = "abort"
	}
	for i := range rr.Result.Operations {
		if rr.Result.Operations[i].Status == "interrupt" {
			rr.Result.Operations[i].Status = "abort"
		}
	}
	return rr.Serialize(dst)
}
