package manifest

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestTypedErrors(t *testing.T) {
	tests := []struct {
		name  string
		parse func(string) error
		input string
		want  string
	}{
		{"header missing summary", func(s string) error { _, err := ParseMachineHeader(strings.NewReader(s), "h"); return err },
			": 1\nid: x\nname: a-b\n§", "no summary specified"},
		{"header unknown", func(s string) error { _, err := ParseMachineHeader(strings.NewReader(s), "h"); return err },
			": 1\nid: x\n§bogus: 1\n", "unknown name 'bogus' in machine header manifest"},
		{"header redefinition", func(s string) error { _, err := ParseMachineHeader(strings.NewReader(s), "h"); return err },
			": 1\nid: x\n§id: y\n", "id redefinition"},
		{"header ram", func(s string) error { _, err := ParseMachineHeader(strings.NewReader(s), "h"); return err },
			": 1\nid: x\nname: a-b\nsummary: s\nram-minimum: §lots\n", "invalid ram-minimum: unsigned integer expected"},
		{"machine type", func(s string) error { _, err := ParseMachine(strings.NewReader(s), "m"); return err },
			": 1\nid: x\nname: a-b\nsummary: s\ntype: §vmware\n", "unknown machine type 'vmware'"},
		{"machine no type", func(s string) error { _, err := ParseMachine(strings.NewReader(s), "m"); return err },
			": 1\nid: x\nname: a-b\nsummary: s\n§", "no type specified"},
		{"task missing machine", func(s string) error { _, err := ParseTask(strings.NewReader(s), "t"); return err },
			": 1\nname: a\nversion: 1\nrepository-url: u\ntarget: x\n§", "no machine specified"},
		{"task bad host", func(s string) error { _, err := ParseTask(strings.NewReader(s), "t"); return err },
			": 1\nname: a\nhost: §maybe\n", "invalid host value 'maybe'"},
		{"task two manifests", func(s string) error { _, err := ParseTask(strings.NewReader(s), "t"); return err },
			": 1\nname: a\n:\nname: b\n§", "single manifest expected, got 2"},
		{"request version", func(s string) error { _, err := ParseTaskRequest(strings.NewReader(s), "r"); return err },
			": 1\nagent: a\ntoolchain-name: t\ntoolchain-version: §1.2\n", "invalid toolchain-version: '.' expected after minor version"},
		{"request no machines", func(s string) error { _, err := ParseTaskRequest(strings.NewReader(s), "r"); return err },
			": 1\nagent: a\ntoolchain-name: t\ntoolchain-version: 1.2.3\n§", "no build machines specified"},
		{"result status", func(s string) error { _, err := ParseResult(strings.NewReader(s), "res"); return err },
			": 1\nname: a\nversion: 1\nstatus: §great\n", "invalid status 'great'"},
		{"result log first", func(s string) error { _, err := ParseResult(strings.NewReader(s), "res"); return err },
			": 1\nname: a\n§update-log: x\n", "update-log without update-status"},
		{"bootstrap version", func(s string) error { _, err := ParseBootstrap(strings.NewReader(s), "b"); return err },
			": 1\nbbot-version: §x\n", "invalid bbot-version: invalid major version"},
		{"bootstrap no bbot", func(s string) error { _, err := ParseBootstrap(strings.NewReader(s), "b"); return err },
			": 1\nlibbutl-version: 0.17.0\n§", "no bbot-version specified"},
		{"response no task", func(s string) error { _, err := ParseTaskResponse(strings.NewReader(s), "resp"); return err },
			": 1\nsession: s\nresult-url: u\n§", "task manifest expected"},
	}
	for _, tc := range tests {
		input, line, col := makePositions(tc.input)
		err := tc.parse(input)
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Errorf("%s: got %v, want ParseError", tc.name, err)
			continue
		}
		if pe.Line != line || pe.Column != col || pe.Description != tc.want {
			t.Errorf("%s: got %s, want %d:%d: %s", tc.name, pe, line, col, tc.want)
		}
	}
}

func TestTaskLenientAndTrust(t *testing.T) {
	in := ": 1\nname: a\nversion: 1.0.0\nrepository-url: u\ntrust: AA\nfuture-field: kept\nmachine: m\ntrust: BB\ntarget: x\nworker-checksum: w\n"
	task, err := ParseTask(strings.NewReader(in), "t")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := task.Serialize(&out); err != nil {
		t.Fatal(err)
	}
	if out.String() != in {
		t.Fatalf("lenient round trip:\n%s", out.String())
	}
	task.Fields.Replace("trust", []string{"CC", "DD"}, TaskOrder)
	task.Fields.Delete("worker-checksum")
	out.Reset()
	task.Serialize(&out)
	want := ": 1\nname: a\nversion: 1.0.0\nrepository-url: u\ntrust: CC\ntrust: DD\nfuture-field: kept\nmachine: m\ntarget: x\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
	// A task without trust gets the values at brep's place for them.
	task.Fields.Delete("trust")
	task.Fields.Replace("trust", []string{"EE"}, TaskOrder)
	if task.Fields[3].Name != "trust" {
		t.Errorf("trust inserted at %v", task.Fields)
	}
}

func TestBootstrappedMachineRoundTrip(t *testing.T) {
	v, _ := ParseStandardVersion("0.17.0")
	bm := BootstrappedMachine{
		Machine: Machine{
			MachineHeader: MachineHeader{ID: "abc", Name: "x86_64-linux_test", Summary: "test machine"},
			Type:          "kvm",
			Options:       `-kernel vmlinuz -append "console=ttyS0"`,
		},
		Toolchain: Toolchain{ID: "tc1"},
		Bootstrap: Bootstrap{Versions: []PackageVersion{{"bbot", v}, {"libbutl", v}}},
	}
	var b bytes.Buffer
	if err := bm.Serialize(&b); err != nil {
		t.Fatal(err)
	}
	got, err := ParseBootstrappedMachine(&b, "bm")
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	if got.Machine != bm.Machine || got.Toolchain != bm.Toolchain || len(got.Bootstrap.Versions) != 2 {
		t.Errorf("got %+v", got)
	}
	if bv, ok := got.Bootstrap.Version("bbot"); !ok || bv.Compare(v) != 0 {
		t.Errorf("bbot version %v", bv)
	}
}
