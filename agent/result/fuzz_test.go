package result

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/build2/bbot-agent-go/manifest"
)

// FuzzWrite: whatever the worker uploads, Write does not panic and either
// refuses the upload with a *GuestFault or writes a request smaller than
// the limit that brep's strict parser accepts, for the task's package.
// The limit is 1 byte to 1 MiB, so cutting and dropping logs are reached.
func FuzzWrite(f *testing.F) {
	r := sample()
	f.Add(upload(f, r), "", uint32(MaxRequest))
	f.Add(upload(f, r, manifest.NameValue{Name: "bogus", Value: "x"}), "disk full\r\nretrying \x01", uint32(6000))
	f.Add(upload(f, r), "note", uint32(2500))
	f.Add(upload(f, manyLogs(6, 3000)), "note\n\nmore", uint32(9000))
	f.Add(upload(f, manifest.Result{Name: "libfoo", Version: "1.2.3", Status: "abnormal"}), "machine died", uint32(1000))
	f.Add([]byte(": 1\nname: a\nversion: 1\nstatus: success\nx-status: error\nx-log: \xff\n"), "", uint32(4000))
	f.Add([]byte(": 1\nname: a\nversion: 1\nstatus: success\nb-status: error\na-status: warning\na-log: "+strings.Repeat("a", 3000)+"\nb-log: x\n"), "n", uint32(3500))
	f.Add([]byte(""), "", uint32(100))
	task := Task{"libfoo", "1.2.3"}
	f.Fuzz(func(t *testing.T, src []byte, notes string, l uint32) {
		limit := 1 + int64(l%(1<<20))
		var out bytes.Buffer
		sum, err := Write(&out, bytes.NewReader(src), "manifest", head, task, notes, limit)
		if err != nil {
			var gf *GuestFault
			if !errors.As(err, &gf) {
				t.Fatalf("limit %d: not a GuestFault: %v", limit, err)
			}
			return
		}
		if int64(out.Len()) >= limit || sum.Size != int64(out.Len()) {
			t.Fatalf("request of %d bytes (summary %d), limit %d", out.Len(), sum.Size, limit)
		}
		rr, err := manifest.ParseResultRequest(bytes.NewReader(out.Bytes()), "request")
		if err != nil {
			t.Fatalf("brep would refuse: %v\n%q", err, out.Bytes())
		}
		if rr.Session != head.Session || rr.Result.Name != task.Name || rr.Result.Version != task.Version || rr.Result.Status != sum.Status {
			t.Fatalf("request %+v, summary %+v", rr, sum)
		}
	})
}
