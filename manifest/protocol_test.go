package manifest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var protocolDir = filepath.Join("..", "testdata", "conformance", "protocol")

// TestProtocolSamplesRoundTrip parses every brep sample into its typed
// manifest and requires the re-serialization to be byte-identical.
func TestProtocolSamplesRoundTrip(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(protocolDir, "*.manifest"))
	if len(files) == 0 {
		t.Fatal("no protocol samples")
	}
	for _, f := range files {
		base := filepath.Base(f)
		t.Run(base, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			switch {
			case strings.HasPrefix(base, "task-request"):
				v, err := ParseTaskRequest(bytes.NewReader(data), base)
				if err != nil {
					t.Fatal(err)
				}
				if err := v.Serialize(&out); err != nil {
					t.Fatal(err)
				}
			case strings.HasPrefix(base, "task-response"):
				v, err := ParseTaskResponse(bytes.NewReader(data), base)
				if err != nil {
					t.Fatal(err)
				}
				if err := v.Serialize(&out); err != nil {
					t.Fatal(err)
				}
			case strings.HasPrefix(base, "result-request"):
				v, err := ParseResultRequest(bytes.NewReader(data), base)
				if err != nil {
					t.Fatal(err)
				}
				if err := v.Serialize(&out); err != nil {
					t.Fatal(err)
				}
			default:
				// Upload responses only need to parse generically.
				if _, err := ReadAll(bytes.NewReader(data), base); err != nil {
					t.Fatal(err)
				}
				return
			}
			if out.String() != string(data) {
				t.Errorf("re-serialized differs:\n got:\n%s\nwant:\n%s", out.String(), data)
			}
		})
	}
}

// TestProtocolSamplesParsed compares the generic parse of every sample with
// libbutl's parse of it (parsed/NAME.out).
func TestProtocolSamplesParsed(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(protocolDir, "*.manifest"))
	if len(files) == 0 {
		t.Fatal("no protocol samples")
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(filepath.Join(protocolDir, "parsed", strings.TrimSuffix(filepath.Base(f), ".manifest")+".out"))
		if err != nil {
			t.Fatal(err)
		}
		if got := parseTrace(data); got != string(want) {
			t.Errorf("%s: got\n%s\nwant\n%s", f, got, want)
		}
	}
}

func TestTaskResponseValues(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(protocolDir, "task-response.manifest"))
	if err != nil {
		t.Fatal(err)
	}
	r, err := ParseTaskResponse(bytes.NewReader(data), "task-response.manifest")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Session(), "/libhello/1.2.3/x86_64-linux-gnu/linux_debian_12-gcc_13/default/public/0.17.0/1784542530123456789"; got != want {
		t.Errorf("session %q, want %q (continuations joined)", got, want)
	}
	if u := r.UploadURLs(); len(u) != 1 || u[0] != [2]string{"bindist", "https://ci.example.org/?upload=bindist"} {
		t.Errorf("upload urls %v", u)
	}
	if r.Task == nil || r.Task.Name() != "libhello" || r.Task.Machine() != "linux_debian_12-gcc_13" {
		t.Fatalf("task %+v", r.Task)
	}
	if got := r.Task.Fields.All("trust"); len(got) != 1 || !strings.HasPrefix(got[0], "86:BA") {
		t.Errorf("trust %v", got)
	}
}
