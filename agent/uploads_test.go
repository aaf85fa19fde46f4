package agent

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/build2/bbot-agent-go/agent/controller"
	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/agent/journal"
	"github.com/build2/bbot-agent-go/machine"
)

// resultsByName indexes results by package.
func resultsByName(rs []controllertest.Result) map[string]controllertest.Result {
	m := map[string]controllertest.Result{}
	for _, r := range rs {
		m[r.Request.Result.Name] = r
	}
	return m
}

// agentLog is everything a result's logs say (the agent's notes are in
// the last operation's log, one "bbot-agent: " line each).
func agentLog(r controllertest.Result) string {
	var b strings.Builder
	for _, op := range r.Request.Result.Operations {
		b.WriteString(op.Log)
	}
	return b.String()
}

// noted reports whether one of the agent's notes in the result holds note.
func noted(r controllertest.Result, note string) bool {
	for _, line := range strings.Split(agentLog(r), "\n") {
		if strings.HasPrefix(line, "bbot-agent: ") && strings.Contains(line, note) {
			return true
		}
	}
	return false
}

// members reads a received archive: member name -> content ("" for a
// directory), in order.
func members(t *testing.T, archive []byte) ([]string, map[string][]byte) {
	t.Helper()
	var names []string
	content := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(archive))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, content
		}
		if err != nil {
			t.Fatalf("received archive: %v", err)
		}
		data, _ := io.ReadAll(tr)
		if h.Typeflag != tar.TypeDir && h.Typeflag != tar.TypeReg {
			t.Errorf("member %s of type %c", h.Name, h.Typeflag)
		}
		names = append(names, h.Name)
		content[h.Name] = data
	}
}

// TestUploads: the test guest's artifacts (bbot's upload.tar) reach a
// strict controller that authenticates the agent, as multipart uploads
// per type and instance, byte for byte with their sha256 and the signed
// challenge, each before its result; and every way they can fail is a
// note in the result, which is delivered all the same: an instance over
// the controller's upload-max-size (413), a type the task has no URL for,
// a symbolic link, a controller refusing (400), one failing until the
// upload window (min(--result-ttl, 15 min)) passes, a corrupt upload.tar,
// one over the agent's TFTP cap, and one still coming 5 s after the
// result (the grace; one coming within it is taken); and artifacts with
// no result are not uploaded, which the agent's abnormal result says.
func TestUploads(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	key, err := controller.LoadKey(filepath.Join(protocolDir, "test-agent-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	srv.RequireKey(&key.PublicKey)
	srv.UploadTypes = []string{"bindist"}
	srv.UploadMaxSize = 512 << 10 // the 600 KiB instance is over it
	srv.UploadAnswer = func(u controllertest.Upload) (int, string) {
		switch {
		case strings.Contains(u.Session, "/upload-refused/"):
			return 400, "package-config manifest value may not start with dot"
		case strings.Contains(u.Session, "/upload-expired/"):
			return 503, "upload service is busy"
		}
		return 0, ""
	}
	pkgs := []string{"upload", "upload-refused", "upload-expired", "badtar", "bigtar", "upload-late", "upload-stuck", "upload-noresult"}
	for _, pkg := range pkgs {
		srv.QueueTask(pkg, testMachine)
	}
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	e.opts.AuthKey = filepath.Join(protocolDir, "test-agent-key.pem")
	e.opts.ResultTTL = 6 * time.Second // the upload window: min(6 s, 15 min)
	e.maxUploadTar = 2 << 20
	var mu sync.Mutex
	var timings []taskTimings
	e.onTimings = func(tt taskTimings) { mu.Lock(); timings = append(timings, tt); mu.Unlock() }
	t0 := time.Now()
	e.start()
	results := srv.WaitResults(len(pkgs), 400*time.Second)
	t.Logf("%d results after %v", len(results), time.Since(t0).Round(time.Second))
	time.Sleep(time.Second) // an upload after its result, if any, would come now
	e.shutdown()

	byName := resultsByName(results)
	for _, pkg := range pkgs {
		want := "success"
		if pkg == "upload-noresult" {
			want = "abnormal"
		}
		r, ok := byName[pkg]
		if !ok || r.Request.Result.Status != want {
			t.Errorf("%s: result %+v", pkg, r.Request.Result)
		}
	}
	uploadsOf := map[string][]controllertest.Upload{}
	for _, u := range srv.Uploads() {
		pkg := strings.Split(u.Session, "/")[1]
		uploadsOf[pkg] = append(uploadsOf[pkg], u)
		// Every upload came before its result, with the result's signed
		// challenge.
		if r := byName[pkg]; !u.Received.Before(r.Received) || u.Challenge == "" || u.Challenge != r.Request.Challenge {
			t.Errorf("%s/%s: received %v, result %v, challenge %q vs %q", pkg, u.Instance, u.Received, r.Received, u.Challenge, r.Request.Challenge)
		}
		sum := sha256.Sum256(u.Archive)
		if hex.EncodeToString(sum[:]) != u.SHA256 || u.ArchiveName != u.Instance+".tar" {
			t.Errorf("%s/%s: sha256sum %s of %d bytes, archive %s", pkg, u.Instance, u.SHA256, len(u.Archive), u.ArchiveName)
		}
	}
	if d := srv.Drops(); len(d) != 0 {
		t.Errorf("the controller dropped: %v", d)
	}

	// upload: debian and fedora byte for byte (the guest lists each file's
	// size and sha256 in its log), big refused by the controller, the
	// other type and the symbolic link noted.
	r := byName["upload"]
	list := map[string]string{}
	for _, line := range strings.Split(r.Request.Result.Operations[0].Log, "\n") {
		if f := strings.Fields(line); len(f) == 3 && strings.HasPrefix(f[0], "upload/") {
			list[f[0]] = f[1] + " " + f[2]
		}
	}
	if len(list) != 5 {
		t.Fatalf("the guest's file list: %v", list)
	}
	wantMembers := map[string][]string{
		"debian": {"debian/", "debian/bindist-result.manifest", "debian/libhello_1.0.0_amd64.deb"},
		"fedora": {"fedora/", "fedora/sub/libhello-1.0.0.x86_64.rpm"},
	}
	var got []string
	for _, u := range uploadsOf["upload"] {
		got = append(got, u.Instance)
		names, content := members(t, u.Archive)
		if !slices.Equal(names, wantMembers[u.Instance]) || u.Status != 200 {
			t.Errorf("upload/%s: members %v (status %d), want %v", u.Instance, names, u.Status, wantMembers[u.Instance])
		}
		for _, n := range names[1:] {
			sum := sha256.Sum256(content[n])
			if want, have := list["upload/bindist/"+n], fmt.Sprintf("%d %x", len(content[n]), sum); want != have {
				t.Errorf("%s: %s, the guest sent %s", n, have, want)
			}
		}
	}
	if strings.Join(got, " ") != "debian fedora" {
		t.Errorf("upload: instances taken %v", got)
	}
	for _, note := range []string{
		"bindist upload of instance big (",
		"refused by the controller: 413 bindist upload size exceeds limit",
		"upload type other not uploaded (instance x, 1 file): the task has no other-upload-url",
		"upload.tar: entries that are neither files nor directories left out: upload/bindist/debian/current (symbolic link)",
	} {
		if !noted(r, note) {
			t.Errorf("upload: no note %q in\n%s", note, agentLog(r))
		}
	}
	if noted(r, "instance debian") || noted(r, "instance fedora") || noted(r, "instance empty") {
		t.Errorf("upload: notes for instances that went:\n%s", agentLog(r))
	}

	// upload-refused: the controller's 400 for each, noted with its message.
	r = byName["upload-refused"]
	for _, inst := range []string{"debian", "fedora"} {
		if !noted(r, "bindist upload of instance "+inst) || !noted(r, "refused by the controller: 400 package-config manifest value may not start with dot (reference ") {
			t.Errorf("upload-refused: no note for %s in\n%s", inst, agentLog(r))
		}
	}
	if n := len(uploadsOf["upload-refused"]); n != 2 {
		t.Errorf("upload-refused: %d uploads tried, want 2 (a 4xx is not retried)", n)
	}

	// upload-expired: 503 again and again until the window passed, then
	// the result.
	r = byName["upload-expired"]
	if !noted(r, "bindist upload of instance debian") || !noted(r, "not delivered within 6s; last error: 503 upload service is busy") {
		t.Errorf("upload-expired: notes\n%s", agentLog(r))
	}
	if n := len(uploadsOf["upload-expired"]); n < 3 {
		t.Errorf("upload-expired: %d tries", n)
	}

	// badtar, bigtar: no upload at all, and why.
	for pkg, note := range map[string]string{
		"badtar": "upload.tar is not a valid tar archive: unexpected EOF: no artifacts uploaded",
		"bigtar": "upload.tar refused by the agent (too large; it may be up to 2 MiB): no artifacts uploaded",
	} {
		if len(uploadsOf[pkg]) != 0 || !noted(byName[pkg], note) {
			t.Errorf("%s: uploads %d, notes\n%s", pkg, len(uploadsOf[pkg]), agentLog(byName[pkg]))
		}
	}

	// upload-noresult: no result, no artifacts (they go only with one).
	if r := byName["upload-noresult"]; len(uploadsOf["upload-noresult"]) != 0 || !noted(r, "upload.tar not uploaded: the task has no usable result") {
		t.Errorf("upload-noresult: uploads %d, notes\n%s", len(uploadsOf["upload-noresult"]), agentLog(r))
	}

	// upload-late: upload.tar done within the grace is taken; upload-stuck
	// is still coming after it: noted, and the result waited no longer.
	if u := uploadsOf["upload-late"]; len(u) != 1 || u[0].Instance != "debian" || noted(byName["upload-late"], "upload.tar") {
		t.Errorf("upload-late: uploads %d, notes\n%s", len(u), agentLog(byName["upload-late"]))
	}
	if len(uploadsOf["upload-stuck"]) != 0 || !noted(byName["upload-stuck"], "upload.tar was still being uploaded 5s after the result: no artifacts uploaded") {
		t.Errorf("upload-stuck: uploads %d, notes\n%s", len(uploadsOf["upload-stuck"]), agentLog(byName["upload-stuck"]))
	}
	// The stuck one held its result for the grace, and no longer; the
	// others (upload-late's finishing upload.tar) less.
	mu.Lock()
	var waits []time.Duration
	for _, tt := range timings {
		waits = append(waits, tt.Persisted.Sub(tt.Uploaded).Round(100*time.Millisecond))
	}
	mu.Unlock()
	slices.Sort(waits)
	t.Logf("result upload to persisted: %v", waits)
	full := 0
	for _, d := range waits {
		if d >= uploadGrace-100*time.Millisecond {
			full++
		}
	}
	if len(waits) != len(pkgs)-1 || full != 1 || slices.Max(waits) > uploadGrace+2*time.Second {
		t.Errorf("waits after the result %v: want one of about %v", waits, uploadGrace)
	}

	// Nothing is left in the journal: bodies, kept results, archives.
	for _, n := range []int{1} {
		if ents, _ := os.ReadDir(journal.Dir(e.opts.StateDir, n)); len(ents) != 1 {
			t.Errorf("journal %d: %v", n, ents)
		}
	}
}

// TestCompressedResults: a result uploaded as result.manifest.lz4 is
// taken (its 560 KB log whole); one that decompresses past the cap (24
// MiB in a few hundred KiB, the tests' cap being 8 MiB) is a guest fault:
// abnormal, the machine held.
func TestCompressedResults(t *testing.T) {
	srv := controllertest.New()
	defer srv.Close()
	srv.QueueTask("lz4", testMachine)
	srv.QueueTask("lz4bomb", testMachine)
	e := newE2E(t, controller.Controller{URL: srv.TaskURL()})
	held := 0
	e.onSuspend = func(*machine.Machine) { held++ }
	e.start()
	results := srv.WaitResults(2, 240*time.Second)
	e.shutdown()
	byName := resultsByName(results)
	r := byName["lz4"].Request.Result
	if r.Status != "success" || len(r.Operations) != 1 || r.Operations[0].Log != lz4Log() {
		t.Errorf("lz4: %s, %d operations", r.Status, len(r.Operations))
	}
	bomb := byName["lz4bomb"]
	if bomb.Request.Result.Status != "abnormal" || !noted(bomb, "result.manifest.lz4 decompresses to more than 8388608 bytes") {
		t.Errorf("lz4bomb: %s\n%s", bomb.Request.Result.Status, agentLog(bomb))
	}
	if held != 1 {
		t.Errorf("%d machines held, want 1 (the bomb's)", held)
	}
}

// lz4Log is the guest's LZ4Log.
func lz4Log() string {
	var b strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&b, "line %05d of the update log\n", i)
	}
	return b.String()
}
