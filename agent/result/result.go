// Package result turns a worker's uploaded result manifest into the result
// request the agent POSTs to brep, streaming: the upload is read twice (sizes
// first, then the request is written), at most one log value (and its cut
// copy) is held in memory, and the request always stays below the limit:
// logs are cut in the middle, and whole logs dropped (largest first, noted)
// when cutting is not enough.
package result

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"github.com/build2/bbot-agent-go/manifest"
)

const (
	// MaxRequest is brep's limit: a request must be strictly smaller.
	MaxRequest = 15 << 20
	// MaxOperations is the most operations an upload may report.
	MaxOperations = 10000

	minCut    = 2 << 10  // a log is never cut below this (pair bytes)
	maxValue  = 64 << 10 // longest non-log value accepted from a worker
	maxPasses = 8        // writing passes over logs uploaded out of order
	listed    = 10       // dropped logs named one by one in the notes
	notePfx   = "bbot-agent: "
)

// Head is the request's first manifest.
type Head struct{ Session, Challenge, AgentChecksum string }

// Task is the build's package name and version, forced into the result
// (brep rejects others).
type Task struct{ Name, Version string }

// Summary describes a written request.
type Summary struct {
	Status     string
	Operations int
	Size       int64 // bytes written
	Cut        int   // logs cut in the middle
	Dropped    int   // logs dropped whole
}

// GuestFault means the upload is malformed, unreadable or too large to
// describe (more than MaxOperations operations): the guest is at fault.
// Nothing useful was written; the caller sends an abnormal result instead.
type GuestFault struct{ Err error }

func (e *GuestFault) Error() string { return "invalid result manifest: " + e.Err.Error() }
func (e *GuestFault) Unwrap() error { return e.Err }

func guestFault(format string, args ...any) error {
	return &GuestFault{Err: fmt.Errorf(format, args...)}
}

// op is one operation as found in pass 1.
type op struct {
	name, status string
	logRaw       int64 // raw bytes of the log value (0: none or empty)
	logSize      int64 // serialized size of the log pair as uploaded
	prefixBody   int64 // multi-line body bytes of the log plus a final newline
	logPos       int   // order of the log in the upload
}

type scanned struct {
	name, version, status, depSum, workerSum string
	ops                                      []op
	index                                    map[string]int
	logs                                     int
}

// capWriter collects a short value, failing past maxValue.
type capWriter struct{ b []byte }

var errTooLong = errors.New("value too long")

func (w *capWriter) Write(p []byte) (int, error) {
	if len(w.b)+len(p) > maxValue {
		return 0, errTooLong
	}
	w.b = append(w.b, p...)
	return len(p), nil
}

func isStatus(s string) bool { return slices.Contains(manifest.ResultStatuses, s) }

func logOp(name string) (string, bool) {
	o, ok := strings.CutSuffix(name, "-log")
	return o, ok && o != ""
}

// scan is pass 1: it validates the upload as the lenient parser does
// (manifest.ParseResult) and records every operation's status and log size.
func scan(src io.Reader, srcName string) (*scanned, error) {
	p := manifest.NewParser(bufio.NewReaderSize(src, 64<<10), srcName)
	sc := &scanned{index: map[string]int{}}
	seen := map[string]bool{}
	var cw capWriter
	var sizer pairSizer
	pick := func(name string) io.Writer {
		if _, ok := logOp(name); ok {
			sizer.reset(name)
			return &sizer
		}
		switch name {
		case "name", "version", "status", "dependency-checksum", "worker-checksum":
		default:
			if o, ok := strings.CutSuffix(name, "-status"); !ok || o == "" {
				return io.Discard // unknown: kept leniently, never sent
			}
		}
		cw.b = cw.b[:0]
		return &cw
	}
	fault := func(nv manifest.NameValue, format string, args ...any) error {
		return guestFault("%s:%d:%d: %s", srcName, nv.NameLine, nv.NameColumn, fmt.Sprintf(format, args...))
	}
	manifests := 0
	var end manifest.NameValue
	for {
		nv, err := p.NextTo(pick)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, &GuestFault{Err: err}
		}
		if nv.Name == "" {
			if nv.Value != "" {
				if manifests++; manifests > 1 {
					return nil, fault(nv, "single manifest expected, got %d", manifests)
				}
			} else {
				end = nv
			}
			continue
		}
		if _, ok := logOp(nv.Name); ok {
			o, _ := logOp(nv.Name)
			if seen[nv.Name] {
				return nil, fault(nv, "%s redefinition", nv.Name)
			}
			seen[nv.Name] = true
			i, ok := sc.index[o]
			if !ok {
				return nil, fault(nv, "%s without %s-status", nv.Name, o)
			}
			r := &sc.ops[i]
			r.logRaw, r.logSize, r.logPos = sizer.raw, sizer.size(), sc.logs
			r.prefixBody = sizer.prefixBody()
			sc.logs++
			continue
		}
		v := string(cw.b)
		known := true
		switch nv.Name {
		case "name", "version", "status", "dependency-checksum", "worker-checksum":
		default:
			o, ok := strings.CutSuffix(nv.Name, "-status")
			known = ok && o != ""
		}
		if !known {
			continue
		}
		if seen[nv.Name] {
			return nil, fault(nv, "%s redefinition", nv.Name)
		}
		seen[nv.Name] = true
		if v == "" {
			return nil, guestFault("%s:%d:%d: empty %s", srcName, nv.ValueLine, nv.ValueColumn, nv.Name)
		}
		switch nv.Name {
		case "name":
			sc.name = v
		case "version":
			sc.version = v
		case "status":
			if !isStatus(v) {
				return nil, fault(nv, "invalid status '%s'", v)
			}
			sc.status = v
		case "dependency-checksum":
			sc.depSum = v
		case "worker-checksum":
			sc.workerSum = v
		default:
			o, _ := strings.CutSuffix(nv.Name, "-status")
			if !isStatus(v) {
				return nil, fault(nv, "invalid %s '%s'", nv.Name, v)
			}
			if len(sc.ops) == MaxOperations {
				return nil, fault(nv, "more than %d operations", MaxOperations)
			}
			sc.index[o] = len(sc.ops)
			sc.ops = append(sc.ops, op{name: o, status: v})
		}
	}
	if manifests == 0 {
		return nil, guestFault("%s:1:1: start of manifest expected", srcName)
	}
	for _, n := range []string{"name", "version", "status"} {
		if !seen[n] {
			return nil, guestFault("%s:%d:%d: no %s specified", srcName, end.NameLine, end.NameColumn, n)
		}
	}
	return sc, nil
}

// prefixBody returns the multi-line body bytes of the value followed by a
// newline (the value is not ended: more may be written).
func (z *pairSizer) prefixBody() int64 {
	if z.raw == 0 {
		return 0
	}
	if z.last == '\n' {
		return z.mlN
	}
	ml := z.ml
	ml.win = append([]byte(nil), z.ml.win...)
	return z.mlN + ml.finish() + 1
}

// mlBody is the body size of value in the multi-line form.
func mlBody(value string) int64 {
	z := newPairSizer("x")
	z.WriteString(value)
	return z.prefixBody() - 1
}

// Write reads the uploaded result from src (from its start, twice), forces
// t's name and version, appends notes (the agent's diagnostics, each line
// sanitized and prefixed "bbot-agent: ") to the last operation's log (or
// adds a "configure" operation with the result's status when there are no
// operations), and writes the result request to dst: h, then the result in
// brep's order, strictly smaller than limit bytes. Logs are cut in the
// middle (with a marker line) and dropped whole, largest first, with a
// note, when cutting is not enough. A malformed or unreadable upload, or one
// of more than MaxOperations operations, returns a *GuestFault.
func Write(dst io.Writer, src io.ReadSeeker, srcName string, h Head, t Task, notes string, limit int64) (Summary, error) {
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return Summary{}, &GuestFault{Err: err}
	}
	sc, err := scan(src, srcName)
	if err != nil {
		return Summary{}, err
	}
	var base []string
	if sc.name != t.Name || sc.version != t.Version {
		base = append(base, notePfx+fmt.Sprintf("result for %s/%s replaced by the task's %s/%s", sc.name, sc.version, t.Name, t.Version))
		sc.name, sc.version = t.Name, t.Version
	}
	base = append(splitNotes(notes), base...)
	if len(sc.ops) == 0 && len(base) > 0 {
		sc.index["configure"] = 0
		sc.ops = append(sc.ops, op{name: "configure", status: sc.status})
	}
	pl, err := makePlan(h, sc, base, limit)
	if err != nil {
		return Summary{}, err
	}
	return pl.write(dst, src, srcName)
}

// splitNotes sanitizes the notes and prefixes each line.
func splitNotes(notes string) []string {
	notes = strings.TrimRight(strings.ReplaceAll(strings.ReplaceAll(manifest.Sanitize(notes), "\r\n", "\n"), "\r", "\n"), "\n")
	if notes == "" {
		return nil
	}
	var lines []string
	for _, l := range strings.Split(notes, "\n") {
		if !strings.HasPrefix(l, notePfx) {
			l = notePfx + l
		}
		lines = append(lines, l)
	}
	return lines
}

type plan struct {
	h       Head
	sc      *scanned
	limit   int64
	notes   string // the notes appended to the last operation's log
	drop    []bool
	cap     []int64 // target pair size of a cut log (0: not cut)
	passes  int
	summary Summary
}

func countingSize(f func(io.Writer) error) (int64, error) {
	var c counter
	err := f(&c)
	return c.n, err
}

type counter struct {
	w io.Writer
	n int64
}

func (c *counter) Write(p []byte) (int, error) {
	if c.w == nil {
		c.n += int64(len(p))
		return len(p), nil
	}
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

func (pl *plan) request() manifest.ResultRequest {
	sc := pl.sc
	r := manifest.Result{Name: sc.name, Version: sc.version, Status: sc.status,
		DependencyChecksum: sc.depSum, WorkerChecksum: sc.workerSum}
	r.Operations = make([]manifest.OperationResult, len(sc.ops))
	for i, o := range sc.ops {
		r.Operations[i] = manifest.OperationResult{Operation: o.name, Status: o.status}
	}
	return manifest.ResultRequest{Session: pl.h.Session, Challenge: pl.h.Challenge, AgentChecksum: pl.h.AgentChecksum, Result: r}
}

// makePlan decides which logs are dropped and where the others are capped.
func makePlan(h Head, sc *scanned, base []string, limit int64) (*plan, error) {
	pl := &plan{h: h, sc: sc, limit: limit, drop: make([]bool, len(sc.ops)), cap: make([]int64, len(sc.ops))}
	rr := pl.request()
	fixed, err := countingSize(rr.Serialize)
	if err != nil {
		return nil, guestFault("%v", err)
	}
	last := len(sc.ops) - 1
	// notesFor returns the notes when the logs in dropped are dropped.
	notesFor := func(dropped []int) string {
		lines := slices.Clone(base)
		var more, moreBytes int64
		for j, i := range dropped {
			if j < listed {
				lines = append(lines, fmt.Sprintf("%s%s-log (%d bytes) dropped to fit the result request limit", notePfx, sc.ops[i].name, sc.ops[i].logRaw))
			} else {
				more++
				moreBytes += sc.ops[i].logRaw
			}
		}
		if more > 0 {
			lines = append(lines, fmt.Sprintf("%s%d more logs (%d bytes) dropped to fit the result request limit", notePfx, more, moreBytes))
		}
		return strings.Join(lines, "\n")
	}
	// sizes returns the notes log's own size (n0) and every log's size
	// beyond it (the notes operation's log counts without the notes).
	d := make([]int64, len(sc.ops))
	sizes := func(notes string) (n0 int64) {
		for i, o := range sc.ops {
			d[i] = o.logSize
			if o.logRaw == 0 {
				d[i] = 0
			}
		}
		if notes == "" || last < 0 {
			return 0
		}
		o := sc.ops[last]
		n0 = pairSize(o.name+"-log", notes)
		if o.logRaw > 0 {
			full := int64(len(o.name)+len("-log")) + 2 + 3 + o.prefixBody + mlBody(notes) + 2
			d[last] = full - n0
		}
		return n0
	}
	var order []int // droppable logs, largest first
	sizes(notesFor(nil))
	for i := range sc.ops {
		if d[i] > 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(a, b int) int { return int(d[b] - d[a]) })

	var notes string
	var budget int64
	k := 0
	for ; ; k++ {
		notes = notesFor(order[:k])
		n0 := sizes(notes)
		budget = limit - 1 - fixed - n0
		var need int64
		for _, i := range order[k:] {
			need += min(d[i], minCut)
		}
		if need <= budget {
			break
		}
		if k == len(order) {
			return nil, guestFault("result request of %d bytes without logs does not fit in %d bytes", fixed+n0, limit)
		}
		// Skip ahead while the largest remaining log alone cannot make up
		// the difference (keeps this linear for many small logs).
		for over := need - budget; k+1 < len(order) && over > 0; {
			over -= min(d[order[k]], minCut)
			if over <= 0 {
				break
			}
			k++
		}
	}
	for _, i := range order[:k] {
		pl.drop[i] = true
	}
	pl.notes = notes
	pl.summary.Dropped = k

	// Water-filling: the largest cap C with sum(min(d, C)) <= budget.
	rest := order[k:]
	var total int64
	for _, i := range rest {
		total += d[i]
	}
	if total > budget {
		tail := total
		for j := 1; j <= len(rest); j++ {
			tail -= d[rest[j-1]]
			c := (budget - tail) / int64(j)
			if j == len(rest) || c >= d[rest[j]] {
				for _, i := range rest[:j] {
					pl.cap[i] = max(c, minCut)
				}
				pl.summary.Cut = j
				break
			}
		}
	}

	// Logs are written in operation order; an upload with logs in another
	// order is read once per run of ascending logs.
	prev := -1
	pl.passes = 1
	for i, o := range sc.ops {
		if o.logRaw == 0 || pl.drop[i] {
			continue
		}
		if o.logPos < prev {
			pl.passes++
		}
		prev = o.logPos
	}
	if pl.passes > maxPasses {
		return nil, guestFault("logs uploaded out of operation order")
	}
	pl.summary.Status = sc.status
	pl.summary.Operations = len(sc.ops)
	return pl, nil
}

// headTail keeps the first and the last bytes of a value.
type headTail struct {
	head     []byte
	ring     []byte
	n        int64 // bytes written
	hcap, rp int
}

func newHeadTail(h, t int) *headTail {
	return &headTail{head: make([]byte, 0, h), ring: make([]byte, 0, t), hcap: h}
}

func (w *headTail) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	q := p
	if k := min(w.hcap-len(w.head), len(q)); k > 0 {
		w.head = append(w.head, q[:k]...)
	}
	if c := cap(w.ring); c > 0 {
		if len(q) >= c {
			w.ring = append(w.ring[:0], q[len(q)-c:]...)
			w.rp = 0
			return len(p), nil
		}
		for len(q) > 0 {
			if len(w.ring) < c {
				k := min(c-len(w.ring), len(q))
				w.ring = append(w.ring, q[:k]...)
				q = q[k:]
				continue
			}
			k := copy(w.ring[w.rp:], q)
			w.rp = (w.rp + k) % c
			q = q[k:]
		}
	}
	return len(p), nil
}

func (w *headTail) tail() []byte {
	return append(slices.Clone(w.ring[w.rp:]), w.ring[:w.rp]...)
}

// cutValue returns the value cut to at most keep bytes of head and tail,
// with a marker line, at line boundaries when near, never in UTF-8.
func cutValue(head, tail []byte, total int64, keep int) string {
	h := min(keep/2, len(head))
	if h < len(head) {
		near := min(4096, h/4)
		if j := bytes.LastIndexByte(head[:h], '\n'); j >= 0 && h-(j+1) <= near {
			h = j + 1
		} else {
			for h > 0 && head[h]&0xC0 == 0x80 {
				h--
			}
		}
	}
	t := min(keep-h, len(tail))
	ts := tail[len(tail)-t:]
	if t < len(tail) || int64(len(head)+len(tail)) < total {
		near := min(4096, t/4)
		if j := bytes.IndexByte(ts, '\n'); j >= 0 && j < near {
			ts = ts[j+1:]
		} else {
			for len(ts) > 0 && ts[0]&0xC0 == 0x80 {
				ts = ts[1:]
			}
		}
	}
	var b strings.Builder
	b.Grow(h + len(ts) + 100)
	b.Write(head[:h])
	if h > 0 && head[h-1] != '\n' {
		b.WriteByte('\n')
	}
	b.WriteString("... [bbot-agent: " + strconv.FormatInt(total-int64(h)-int64(len(ts)), 10) + " bytes of this log cut to fit the result request limit] ...")
	if len(ts) > 0 {
		b.WriteByte('\n')
		b.Write(ts)
	}
	return b.String()
}

func (pl *plan) withNotes(i int, v string) string {
	if i != len(pl.sc.ops)-1 || pl.notes == "" {
		return v
	}
	if v == "" {
		return pl.notes
	}
	if !strings.HasSuffix(v, "\n") {
		v += "\n"
	}
	return v + pl.notes
}

// write is pass 2 (and more passes for logs out of order).
func (pl *plan) write(dst io.Writer, src io.ReadSeeker, srcName string) (Summary, error) {
	sc := pl.sc
	cw := &counter{w: dst}
	s := manifest.NewSerializer(cw, "")
	rr := pl.request()
	if err := manifest.WriteManifest(s, rr.Pairs()); err != nil {
		return Summary{}, err
	}
	rp := rr.Result.Pairs() // no logs: statuses then checksums
	nfixed := 3 + len(sc.ops)
	if err := s.Next("", "1"); err != nil {
		return Summary{}, err
	}
	for _, nv := range rp[:nfixed] {
		if err := s.Next(nv.Name, nv.Value); err != nil {
			return Summary{}, err
		}
	}
	last := len(sc.ops) - 1
	var slack int64 // planned bytes not used by logs written so far
	emit := func(i int, v string, _ int64) error {
		v = pl.withNotes(i, v)
		if v == "" {
			return nil
		}
		// planned is exact for a log that is not cut: slack is unchanged.
		return s.Next(sc.ops[i].name+"-log", v)
	}
	notesSize := int64(0)
	if pl.notes != "" && last >= 0 {
		notesSize = pairSize(sc.ops[last].name+"-log", pl.notes)
	}
	// fromFile tells whether operation i's log comes from the upload.
	fromFile := func(i int) bool { return sc.ops[i].logRaw > 0 && !pl.drop[i] }
	plannedOf := func(i int) int64 {
		o := sc.ops[i]
		p := int64(0)
		if fromFile(i) {
			p = o.logSize
			if pl.cap[i] > 0 {
				p = pl.cap[i]
			}
		}
		if i == last && pl.notes != "" {
			if fromFile(i) && pl.cap[i] == 0 {
				p = int64(len(o.name)+len("-log")) + 2 + 3 + o.prefixBody + mlBody(pl.notes) + 2
			} else {
				p += notesSize
			}
		}
		return p
	}
	next := 0
	// flushVirtual writes the logs up to the next one to read.
	flushVirtual := func() error {
		for ; next < len(sc.ops) && !fromFile(next); next++ {
			if err := emit(next, "", plannedOf(next)); err != nil {
				return err
			}
		}
		return nil
	}
	if err := flushVirtual(); err != nil {
		return Summary{}, err
	}
	var buf []byte
	collect := &appendWriter{}
	for pass := 0; next < len(sc.ops); pass++ {
		if pass == pl.passes {
			return Summary{}, errors.New("result upload changed while it was read")
		}
		if _, err := src.Seek(0, io.SeekStart); err != nil {
			return Summary{}, &GuestFault{Err: err}
		}
		p := manifest.NewParser(bufio.NewReaderSize(src, 64<<10), srcName)
		var ht *headTail
		var cur = -1
		pick := func(name string) io.Writer {
			cur = -1
			o, ok := logOp(name)
			if !ok {
				return io.Discard
			}
			i := sc.index[o]
			if next >= len(sc.ops) || i != next {
				return io.Discard
			}
			cur = i
			if c := pl.cap[i]; c > 0 {
				keep := int(c+slack) - len(name) - 7 - 100
				if i == last {
					keep -= len(pl.notes) + 1
				}
				keep = max(keep, 0)
				ht = newHeadTail(keep/2+4, keep-keep/2)
				return ht
			}
			buf = buf[:0]
			if int64(cap(buf)) < sc.ops[i].logRaw {
				buf = make([]byte, 0, sc.ops[i].logRaw)
			}
			collect.b = buf
			return collect
		}
		for {
			nv, err := p.NextTo(pick)
			if err == io.EOF {
				break
			}
			if err != nil {
				return Summary{}, &GuestFault{Err: err}
			}
			if cur < 0 || nv.Name == "" {
				continue
			}
			i := cur
			cur = -1
			o := sc.ops[i]
			if c := pl.cap[i]; c > 0 {
				if ht.n != o.logRaw {
					return Summary{}, errors.New("result upload changed while it was read")
				}
				target := c + slack
				if i == last {
					target += notesSize
				}
				tail := ht.tail()
				keep := len(ht.head) + len(tail)
				var v string
				for {
					v = pl.withNotes(i, cutValue(ht.head, tail, o.logRaw, keep))
					over := pairSize(nv.Name, v) - target
					if over <= 0 || keep == 0 {
						break
					}
					keep = max(0, keep-int(over)-16)
				}
				ht = nil
				slack = target - pairSize(nv.Name, v)
				if err := s.Next(nv.Name, v); err != nil {
					return Summary{}, err
				}
			} else {
				buf = collect.b
				if int64(len(buf)) != o.logRaw {
					return Summary{}, errors.New("result upload changed while it was read")
				}
				if err := emit(i, string(buf), plannedOf(i)); err != nil {
					return Summary{}, err
				}
			}
			next++
			if err := flushVirtual(); err != nil {
				return Summary{}, err
			}
		}
	}
	for _, nv := range rp[nfixed:] {
		if err := s.Next(nv.Name, nv.Value); err != nil {
			return Summary{}, err
		}
	}
	if err := s.Next("", ""); err != nil {
		return Summary{}, err
	}
	if err := s.Next("", ""); err != nil {
		return Summary{}, err
	}
	pl.summary.Size = cw.n
	if cw.n >= pl.limit {
		return pl.summary, fmt.Errorf("result request of %d bytes does not fit in %d", cw.n, pl.limit)
	}
	return pl.summary, nil
}

type appendWriter struct{ b []byte }

func (w *appendWriter) Write(p []byte) (int, error) {
	w.b = append(w.b, p...)
	return len(p), nil
}

// FromMemory writes the request for a result the agent built itself
// (abort, abnormal, interrupt), with notes, cut like Write's.
func FromMemory(dst io.Writer, h Head, r manifest.Result, notes string, limit int64) (Summary, error) {
	r.Unknown = nil
	r.Operations = slices.Clone(r.Operations)
	for i := range r.Operations {
		r.Operations[i].Log = manifest.Sanitize(r.Operations[i].Log)
	}
	var b bytes.Buffer
	if err := r.Serialize(&b); err != nil {
		return Summary{}, err
	}
	sum, err := Write(dst, bytes.NewReader(b.Bytes()), "result", h, Task{r.Name, r.Version}, notes, limit)
	var gf *GuestFault
	if errors.As(err, &gf) {
		err = gf.Err
	}
	return sum, err
}

// AbortForm rewrites a serialized result request with status interrupt as
// abort (older controllers refuse interrupt): the overall status and every
// <op>-status that says interrupt.
func AbortForm(dst io.Writer, src io.Reader) error {
	p := manifest.NewParser(bufio.NewReaderSize(src, 64<<10), "request")
	s := manifest.NewSerializer(dst, "")
	var w appendWriter
	pick := func(string) io.Writer { w.b = w.b[:0]; return &w }
	n := 0
	for {
		nv, err := p.NextTo(pick)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		v := nv.Value
		if nv.Name != "" {
			v = string(w.b)
		} else if v != "" {
			n++
		}
		if n == 2 && v == "interrupt" && (nv.Name == "status" || strings.HasSuffix(nv.Name, "-status")) {
			v = "abort"
		}
		if err := s.Next(nv.Name, v); err != nil {
			return err
		}
	}
}
