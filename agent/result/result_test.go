package result

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/manifest"
)

var head = Head{Session: "abc123", Challenge: strings.Repeat("QUJD", 19) + "\n" + strings.Repeat("REVG", 10), AgentChecksum: "f00d"}

func upload(t testing.TB, r manifest.Result, extra ...manifest.NameValue) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := manifest.WriteStream(&b, "", append(r.Pairs(), extra...)); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// logText is n bytes of log lines.
func logText(n int, tag string) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "%s line %d: g++ -O2 -c foo.cxx -o foo.o warning: unused variable 'x' [-Wunused]\n", tag, i)
	}
	return b.String()[:n]
}

func write(t testing.TB, src []byte, task Task, notes string, limit int64) ([]byte, Summary, error) {
	var out bytes.Buffer
	s, err := Write(&out, bytes.NewReader(src), "manifest", head, task, notes, limit)
	return out.Bytes(), s, err
}

// strict checks that out is a request brep accepts.
func strict(t testing.TB, out []byte, limit int64) manifest.ResultRequest {
	t.Helper()
	if int64(len(out)) >= limit {
		t.Fatalf("request of %d bytes, limit %d", len(out), limit)
	}
	rr, err := manifest.ParseResultRequest(bytes.NewReader(out), "request")
	if err != nil {
		t.Fatalf("brep would refuse: %v", err)
	}
	return rr
}

func sample() manifest.Result {
	return manifest.Result{Name: "libfoo", Version: "1.2.3", Status: "warning",
		Operations: []manifest.OperationResult{
			{Operation: "configure", Status: "success", Log: "configured\n"},
			{Operation: "update", Status: "warning", Log: logText(5000, "u") + "tab\there \\ back\\slash\n\\\n  indented\nh\xc3\xa9 \xe2\x82\xac"},
			{Operation: "test", Status: "success"},
			{Operation: "install", Status: "success", Log: "x"},
		},
		DependencyChecksum: "dep", WorkerChecksum: "wrk"}
}

// expected is the in-memory path: the request with notes appended.
func expected(t *testing.T, r manifest.Result, notes []string) []byte {
	r.Operations = append([]manifest.OperationResult(nil), r.Operations...)
	if len(notes) > 0 {
		n := strings.Join(notes, "\n")
		if len(r.Operations) == 0 {
			r.Operations = append(r.Operations, manifest.OperationResult{Operation: "configure", Status: r.Status})
		}
		l := &r.Operations[len(r.Operations)-1].Log
		if *l != "" && !strings.HasSuffix(*l, "\n") {
			*l += "\n"
		}
		*l += n
	}
	var b bytes.Buffer
	rr := manifest.ResultRequest{Session: head.Session, Challenge: head.Challenge, AgentChecksum: head.AgentChecksum, Result: r}
	if err := rr.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestRoundTripMatchesInMemory(t *testing.T) {
	task := Task{"libfoo", "1.2.3"}
	r := sample()
	withUnknown := upload(t, r, manifest.NameValue{Name: "bogus", Value: "kept leniently, not sent"})

	out, sum, err := write(t, withUnknown, task, "", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	// The in-memory path of today: ParseResult, then Serialize.
	parsed, err := manifest.ParseResult(bytes.NewReader(withUnknown), "manifest")
	if err != nil {
		t.Fatal(err)
	}
	if want := expected(t, parsed, nil); !bytes.Equal(out, want) {
		t.Fatalf("differs from the in-memory path:\n%s\n---\n%s", out, want)
	}
	if sum.Cut+sum.Dropped != 0 || sum.Size != int64(len(out)) || sum.Operations != 4 || sum.Status != "warning" {
		t.Fatalf("summary %+v", sum)
	}
	strict(t, out, MaxRequest)

	// Notes go to the last operation's log; a wrong name is replaced.
	out, _, err = write(t, withUnknown, Task{"libbar", "2.0.0"}, "disk full\r\nretrying \x01", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	r2 := parsed
	r2.Name, r2.Version = "libbar", "2.0.0"
	want := expected(t, r2, []string{"bbot-agent: disk full", "bbot-agent: retrying \uFFFD", "bbot-agent: result for libfoo/1.2.3 replaced by the task's libbar/2.0.0"})
	if !bytes.Equal(out, want) {
		t.Fatalf("with notes:\n%s\n---\n%s", out, want)
	}
	strict(t, out, MaxRequest)

	// No operations: the notes become a configure log.
	bare := manifest.Result{Name: "libfoo", Version: "1.2.3", Status: "abnormal"}
	out, _, err = write(t, upload(t, bare), task, "machine died", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	if want := expected(t, bare, []string{"bbot-agent: machine died"}); !bytes.Equal(out, want) {
		t.Fatalf("no operations:\n%s\n---\n%s", out, want)
	}
	rr := strict(t, out, MaxRequest)
	if rr.Result.Operations[0].Operation != "configure" || rr.Result.Operations[0].Status != "abnormal" {
		t.Fatalf("%+v", rr.Result.Operations)
	}
}

func TestLogsOutOfOrder(t *testing.T) {
	r := sample()
	var pairs []manifest.NameValue
	for _, nv := range r.Pairs() {
		pairs = append(pairs, nv)
	}
	// Reverse the logs.
	var logs, rest []manifest.NameValue
	for _, nv := range pairs {
		if strings.HasSuffix(nv.Name, "-log") {
			logs = append([]manifest.NameValue{nv}, logs...)
		} else {
			rest = append(rest, nv)
		}
	}
	var b bytes.Buffer
	manifest.WriteStream(&b, "", append(rest[:len(rest)-2], append(logs, rest[len(rest)-2:]...)...))
	out, _, err := write(t, b.Bytes(), Task{"libfoo", "1.2.3"}, "", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	if want := expected(t, r, nil); !bytes.Equal(out, want) {
		t.Fatalf("out of order:\n%s\n---\n%s", out, want)
	}
}

func TestGuestFaults(t *testing.T) {
	cases := map[string]string{
		"log without status": ": 1\nname: a\nversion: 1\nstatus: success\nupdate-log: x\n",
		"duplicated status":  ": 1\nname: a\nversion: 1\nstatus: success\nstatus: error\n",
		"duplicated op":      ": 1\nname: a\nversion: 1\nstatus: success\nx-status: error\nx-status: error\n",
		"duplicated log":     ": 1\nname: a\nversion: 1\nstatus: success\nx-status: error\nx-log: a\nx-log: b\n",
		"invalid status":     ": 1\nname: a\nversion: 1\nstatus: fine\n",
		"invalid op status":  ": 1\nname: a\nversion: 1\nstatus: success\nx-status: fine\n",
		"empty name":         ": 1\nname:\nversion: 1\nstatus: success\n",
		"no version":         ": 1\nname: a\nstatus: success\n",
		"two manifests":      ": 1\nname: a\nversion: 1\nstatus: success\n:\nname: b\n",
		"empty":              "",
		"syntax":             ": 1\nname a\n",
		"bad utf-8":          ": 1\nname: a\nversion: 1\nstatus: success\nx-status: error\nx-log: \xff\n",
	}
	for what, src := range cases {
		_, lenient := manifest.ParseResult(strings.NewReader(src), "m")
		_, _, err := write(t, []byte(src), Task{"a", "1"}, "", MaxRequest)
		var gf *GuestFault
		if !errors.As(err, &gf) || lenient == nil {
			t.Errorf("%s: got %v (ParseResult: %v), want a GuestFault", what, err, lenient)
		}
	}
}

func TestTooManyOperations(t *testing.T) {
	var b bytes.Buffer
	b.WriteString(": 1\nname: a\nversion: 1\nstatus: success\n")
	for i := 0; i < 150000; i++ {
		fmt.Fprintf(&b, "op%d-status: success\n", i)
	}
	start := time.Now()
	_, _, err := write(t, b.Bytes(), Task{"a", "1"}, "", MaxRequest)
	var gf *GuestFault
	if !errors.As(err, &gf) || !strings.Contains(err.Error(), "more than 10000 operations") {
		t.Fatalf("got %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v", d)
	}
	// Exactly the maximum is fine.
	b.Reset()
	b.WriteString(": 1\nname: a\nversion: 1\nstatus: success\n")
	for i := 0; i < MaxOperations; i++ {
		fmt.Fprintf(&b, "op%d-status: success\n", i)
	}
	out, sum, err := write(t, b.Bytes(), Task{"a", "1"}, "", MaxRequest)
	if err != nil || sum.Operations != MaxOperations {
		t.Fatal(err, sum)
	}
	strict(t, out, MaxRequest)
}

func manyLogs(n, size int) manifest.Result {
	r := manifest.Result{Name: "a", Version: "1", Status: "error"}
	for i := 0; i < n; i++ {
		r.Operations = append(r.Operations, manifest.OperationResult{Operation: fmt.Sprintf("op%d", i), Status: "success", Log: logText(size, fmt.Sprint(i))})
	}
	return r
}

func TestManyLargeLogsCut(t *testing.T) {
	src := upload(t, manyLogs(1000, 32<<10))
	start := time.Now()
	out, sum, err := write(t, src, Task{"a", "1"}, "", MaxRequest)
	d := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	rr := strict(t, out, MaxRequest)
	if sum.Cut != 1000 || sum.Dropped != 0 || len(rr.Result.Operations) != 1000 {
		t.Fatalf("summary %+v", sum)
	}
	for _, o := range rr.Result.Operations {
		if !strings.Contains(o.Log, "bytes of this log cut to fit") {
			t.Fatalf("%s-log not cut", o.Operation)
		}
	}
	if MaxRequest-len(out) > 64<<10 {
		t.Errorf("request of %d bytes wastes too much of the limit", len(out))
	}
	t.Logf("1000 x 32 KiB: %d bytes in %v", len(out), d)
	if d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestManySmallLogsDropped(t *testing.T) {
	// 10000 logs (the most operations allowed) of 1700 bytes: 17 MB,
	// each too small to cut.
	src := upload(t, manyLogs(MaxOperations, 1700))
	out, sum, err := write(t, src, Task{"a", "1"}, "", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	rr := strict(t, out, MaxRequest)
	if sum.Dropped == 0 || sum.Cut != 0 {
		t.Fatalf("summary %+v", sum)
	}
	l := rr.Result.Operations[len(rr.Result.Operations)-1].Log
	if !strings.Contains(l, "dropped to fit the result request limit") || !strings.Contains(l, fmt.Sprintf("%d more logs", sum.Dropped-listed)) {
		t.Fatalf("drops not noted: %q", l[max(0, len(l)-2000):])
	}
	t.Logf("%+v", sum)

	// With a small limit even the last log (holding the notes) may go.
	out, sum, err = write(t, upload(t, manyLogs(50, 5000)), Task{"a", "1"}, "note", 20<<10)
	if err != nil {
		t.Fatal(err)
	}
	rr = strict(t, out, 20<<10)
	if !strings.Contains(rr.Result.Operations[49].Log, "bbot-agent: note") {
		t.Fatalf("notes lost: %+v", sum)
	}
}

func TestSingleHugeLog(t *testing.T) {
	r := manyLogs(1, 64<<20)
	orig := r.Operations[0].Log
	out, sum, err := write(t, upload(t, r), Task{"a", "1"}, "", MaxRequest)
	if err != nil {
		t.Fatal(err)
	}
	rr := strict(t, out, MaxRequest)
	l := rr.Result.Operations[0].Log
	i := strings.Index(l, "... [bbot-agent: ")
	if i < 0 || sum.Cut != 1 {
		t.Fatal("no marker")
	}
	j := strings.Index(l[i:], "\n") + i + 1
	if !strings.HasPrefix(orig, l[:i]) || !strings.HasSuffix(orig, l[j:]) || !strings.HasSuffix(l[:i], "\n") || !strings.HasPrefix(orig[len(orig)-len(l[j:])-1:], "\n") {
		t.Fatal("head/tail not kept at line boundaries")
	}
	if MaxRequest-len(out) > 64<<10 {
		t.Errorf("request of %d bytes wastes too much of the limit", len(out))
	}
}

func TestUTF8NeverSplit(t *testing.T) {
	for _, s := range []string{"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "a\xe2\x82\xac"} {
		for shift := 0; shift < 4; shift++ {
			log := strings.Repeat("x", shift) + strings.Repeat(s, 300000/len(s))
			r := manifest.Result{Name: "a", Version: "1", Status: "success",
				Operations: []manifest.OperationResult{{Operation: "update", Status: "success", Log: log}}}
			out, sum, err := write(t, upload(t, r), Task{"a", "1"}, "", 100<<10)
			if err != nil {
				t.Fatal(err)
			}
			rr := strict(t, out, 100<<10) // strict parsing validates UTF-8
			l := rr.Result.Operations[0].Log
			i := strings.Index(l, "\n... [bbot-agent")
			j := strings.LastIndex(l, "\n") + 1
			if sum.Cut != 1 || i < 0 || !strings.HasPrefix(log, l[:i]) || !strings.HasSuffix(log, l[j:]) {
				t.Fatalf("%q: bad cut", s)
			}
		}
	}
}

func TestFromMemory(t *testing.T) {
	r := manifest.Result{Name: "a", Version: "1", Status: "abnormal", Operations: []manifest.OperationResult{
		{Operation: "configure", Status: "abnormal", Log: "console \x07 " + logText(1<<20, "c")}}}
	var out bytes.Buffer
	sum, err := FromMemory(&out, head, r, "machine did not start", 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	rr := strict(t, out.Bytes(), 256<<10)
	if sum.Cut != 1 || !strings.HasSuffix(rr.Result.Operations[0].Log, "\nbbot-agent: machine did not start") {
		t.Fatalf("%+v", sum)
	}
}

func TestAbortForm(t *testing.T) {
	r := manifest.Result{Name: "a", Version: "1", Status: "interrupt"}
	for _, s := range manifest.ResultStatuses {
		r.Operations = append(r.Operations, manifest.OperationResult{Operation: "op-" + s, Status: s,
			Log: "status: interrupt\nop-x-status: interrupt\n"})
	}
	r.Operations = append(r.Operations, manifest.OperationResult{Operation: strings.Repeat("long", 12), Status: "interrupt"})
	var req, ab bytes.Buffer
	if _, err := FromMemory(&req, head, r, "", MaxRequest); err != nil {
		t.Fatal(err)
	}
	if err := AbortForm(&ab, bytes.NewReader(req.Bytes())); err != nil {
		t.Fatal(err)
	}
	got := strict(t, ab.Bytes(), MaxRequest)
	want := r
	want.Status = "abort"
	for i := range want.Operations {
		if want.Operations[i].Status == "interrupt" {
			want.Operations[i].Status = "abort"
		}
	}
	var wb bytes.Buffer
	manifest.ResultRequest{Session: head.Session, Challenge: head.Challenge, AgentChecksum: head.AgentChecksum, Result: want}.Serialize(&wb)
	if !bytes.Equal(ab.Bytes(), wb.Bytes()) {
		t.Fatalf("abort form:\n%s\n---\n%s", ab.Bytes(), wb.Bytes())
	}
	if got.Result.Status != "abort" {
		t.Fatal(got.Result.Status)
	}
}

// BenchmarkWrite64MiB parses, cuts and persists (to a file) a 64 MiB
// result of one huge log and many ordinary ones.
func BenchmarkWrite64MiB(b *testing.B) {
	r := manyLogs(200, 64<<10)
	r.Operations = append(r.Operations, manifest.OperationResult{Operation: "test", Status: "error", Log: logText(64<<20-200*(64<<10), "t")})
	dir := b.TempDir()
	src := filepath.Join(dir, "manifest")
	data := upload(b, r)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	data, r = nil, manifest.Result{}
	b.SetBytes(fileSize(b, src))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		f, _ := os.Open(src)
		out, _ := os.Create(filepath.Join(dir, "request"))
		sum, err := Write(out, f, "manifest", head, Task{"a", "1"}, "note", MaxRequest)
		if err == nil {
			err = out.Sync()
		}
		out.Close()
		f.Close()
		if err != nil || sum.Size >= MaxRequest {
			b.Fatal(err, sum)
		}
	}
}

func fileSize(b *testing.B, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return fi.Size()
}

var _ = io.Discard

// TestPeakRSSHelper measures one 64 MiB Write in a process of its own:
// BBOT_RESULT_RSS=file go test -run PeakRSSHelper creates the upload when
// file does not exist, and otherwise runs Write on it (measure that run,
// e.g. with /usr/bin/time -v).
func TestPeakRSSHelper(t *testing.T) {
	src := os.Getenv("BBOT_RESULT_RSS")
	if src == "" {
		t.Skip("BBOT_RESULT_RSS not set")
	}
	if _, err := os.Stat(src); err != nil {
		r := manyLogs(200, 64<<10)
		r.Operations = append(r.Operations, manifest.OperationResult{Operation: "test", Status: "error", Log: logText(64<<20-200*(64<<10), "t")})
		if os.Getenv("BBOT_RESULT_RSS_ONE") != "" {
			r = manyLogs(1, 64<<20) // one log: the cut copy is near 15 MiB
		}
		if err := os.WriteFile(src, upload(t, r), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out, err := os.Create(src + ".request")
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	start := time.Now()
	sum, err := Write(out, f, "manifest", head, Task{"a", "1"}, "note", MaxRequest)
	if err == nil {
		err = out.Sync()
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v in %v", sum, time.Since(start))
}
