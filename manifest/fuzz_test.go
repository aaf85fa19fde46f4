package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// typedSeeds are the brep protocol samples, the parse vectors and a few
// hand-made task and result manifests.
func typedSeeds(f *testing.F) {
	f.Helper()
	var files []string
	for _, g := range []string{filepath.Join(protocolDir, "*.manifest"), filepath.Join(conformanceDir, "*.in")} {
		m, _ := filepath.Glob(g)
		files = append(files, m...)
	}
	if len(files) == 0 {
		f.Fatal("no seed files")
	}
	for _, p := range files {
		data, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	for _, s := range []string{
		": 1\nname: a\nversion: 1.0.0\nrepository-url: u\ntrust: AA\nfuture-field: kept\nmachine: m\ntrust: BB\ntarget: x\nworker-checksum: w\n",
		": 1\nname: a\nversion: 1\nrepository-url: u\nmachine: m\ntarget: t\nhost: true\nrepository-type: git\n",
		": 1\nsession:\n",
		": 1\nsession: s\nresult-url: u\nbindist-upload-url: b\n:\nname: a\nversion: 1\nrepository-url: u\nmachine: m\ntarget: t\n",
		": 1\nname: a\nversion: 1\nstatus: warning\nupdate-status: warning\ntest-status: success\nupdate-log: x\\\n\\\ny\nbogus: kept\n",
		": 1\nsession: s\nchallenge: c\nagent-checksum: a\n:\nname: a\nversion: 1\nstatus: abort\nx-status: abort\nx-log:\\\n  indented\n\\\ndependency-checksum: d\nworker-checksum: w\n",
	} {
		f.Add([]byte(s))
	}
}

// pairsOnly drops the positions.
func pairsOnly(f Fields) []NameValue {
	r := make([]NameValue, len(f))
	for i, nv := range f {
		r[i] = NameValue{Name: nv.Name, Value: nv.Value}
	}
	return r
}

// reserialize checks that v re-serializes, that the result parses again
// into an equal value (compared by eq) and that serializing that gives the
// same bytes.
func reserialize[T any](t *testing.T, what string, v T, ser func(T, *bytes.Buffer) error, parse func([]byte) (T, error), eq func(a, b T) bool) {
	t.Helper()
	var out bytes.Buffer
	if err := ser(v, &out); err != nil {
		t.Fatalf("%s: parsed %+v does not serialize: %v", what, v, err)
	}
	v2, err := parse(out.Bytes())
	if err != nil {
		t.Fatalf("%s: re-parsing %q: %v", what, out.Bytes(), err)
	}
	if !eq(v, v2) {
		t.Fatalf("%s: re-parse differs:\n%+v\n%+v\nvia %q", what, v, v2, out.Bytes())
	}
	var again bytes.Buffer
	if err := ser(v2, &again); err != nil || !bytes.Equal(again.Bytes(), out.Bytes()) {
		t.Fatalf("%s: second serialization differs (%v):\n%q\n%q", what, err, out.Bytes(), again.Bytes())
	}
}

// FuzzTypedTask: ParseTask and ParseTaskResponse never panic, and what they
// accept re-serializes and parses back to the same pairs.
func FuzzTypedTask(f *testing.F) {
	typedSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if task, err := ParseTask(bytes.NewReader(data), "task"); err == nil {
			reserialize(t, "task", task,
				func(v *Task, b *bytes.Buffer) error { return v.Serialize(b) },
				func(b []byte) (*Task, error) { return ParseTask(bytes.NewReader(b), "task") },
				func(a, b *Task) bool { return reflect.DeepEqual(pairsOnly(a.Fields), pairsOnly(b.Fields)) })
		}
		if resp, err := ParseTaskResponse(bytes.NewReader(data), "response"); err == nil {
			reserialize(t, "task response", resp,
				func(v *TaskResponse, b *bytes.Buffer) error { return v.Serialize(b) },
				func(b []byte) (*TaskResponse, error) { return ParseTaskResponse(bytes.NewReader(b), "response") },
				func(a, b *TaskResponse) bool {
					if !reflect.DeepEqual(pairsOnly(a.Fields), pairsOnly(b.Fields)) || (a.Task == nil) != (b.Task == nil) {
						return false
					}
					return a.Task == nil || reflect.DeepEqual(pairsOnly(a.Task.Fields), pairsOnly(b.Task.Fields))
				})
		}
	})
}

// FuzzTypedResult: ParseResult and ParseResultRequest never panic, and what
// they accept re-serializes (unknown names of a lenient result dropped) and
// parses back equal.
func FuzzTypedResult(f *testing.F) {
	typedSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if res, err := ParseResult(bytes.NewReader(data), "result"); err == nil {
			res.Unknown = nil // not serialized
			reserialize(t, "result", res,
				func(v Result, b *bytes.Buffer) error { return v.Serialize(b) },
				func(b []byte) (Result, error) { return ParseResult(bytes.NewReader(b), "result") },
				func(a, b Result) bool { return reflect.DeepEqual(a, b) })
		}
		if rr, err := ParseResultRequest(bytes.NewReader(data), "request"); err == nil {
			reserialize(t, "result request", rr,
				func(v ResultRequest, b *bytes.Buffer) error { return v.Serialize(b) },
				func(b []byte) (ResultRequest, error) { return ParseResultRequest(bytes.NewReader(b), "request") },
				func(a, b ResultRequest) bool { return reflect.DeepEqual(a, b) })
		}
	})
}
