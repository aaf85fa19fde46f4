package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestOptionsFile: options files expand in place, as bbot's do.
func TestOptionsFile(t *testing.T) {
	for _, c := range []struct {
		name  string
		files map[string]string // under a temporary directory, the working one
		args  []string
		want  []string // or
		err   string   // with $D for the directory
	}{
		{"comments, blank lines, whitespace",
			map[string]string{"a.options": "# the build host\n\n   \n  --cpu 4  \n\t--verbose\t \t3\r\n# --cpu 8\n--systemd-daemon\n"},
			[]string{"--options-file", "a.options"},
			[]string{"--cpu", "4", "--verbose", "3", "--systemd-daemon"}, ""},
		{"= form",
			map[string]string{"a.options": "--toolchain-id=a b\n--systemd-daemon=false\n--toolchain-name= x\n"},
			[]string{"--options-file=a.options"},
			[]string{"--toolchain-id=a b", "--systemd-daemon=false", "--toolchain-name= x"}, ""},
		{"quotes",
			map[string]string{"a.options": "--toolchain-id \"  a b  \"\n--toolchain-id ''\n--toolchain-id a\"b\n--toolchain-id '\"x\"'\n--toolchain-id=\"c=d\"\n"},
			[]string{"--options-file", "a.options"},
			[]string{"--toolchain-id", "  a b  ", "--toolchain-id", "", "--toolchain-id", `a"b`, "--toolchain-id", `"x"`, "--toolchain-id=c=d"}, ""},
		{"arguments",
			map[string]string{"a.options": "--cpu 2\nhttps://ci.cppget.org/?build-task\n1100=https://ci.example.org/?build-task\n"},
			[]string{"--verbose", "2", "--options-file", "a.options"},
			[]string{"--verbose", "2", "--cpu", "2", "https://ci.cppget.org/?build-task", "1100=https://ci.example.org/?build-task"}, ""},
		{"nested, relative to the including file",
			map[string]string{
				"etc/outer.options": "--cpu 2\n--options-file inner.options\n--verbose 3\n",
				"etc/inner.options": "--cpu 4\n--options-file=/dev/null\n",
				"inner.options":     "--cpu 99\n", // the working directory's: not this one
			},
			[]string{"--options-file", "etc/outer.options", "--cpu", "8"},
			[]string{"--cpu", "2", "--cpu", "4", "--verbose", "3", "--cpu", "8"}, ""},
		{"repeated",
			map[string]string{"a.options": "--cpu 2\n", "b.options": "--cpu 3\n"},
			[]string{"--options-file", "a.options", "--options-file", "b.options"},
			[]string{"--cpu", "2", "--cpu", "3"}, ""},
		{"one dash",
			map[string]string{"a.options": "-options-file b.options\n", "b.options": "--cpu 3\n"},
			[]string{"-options-file", "a.options"},
			[]string{"--cpu", "3"}, ""},
		{"none after --",
			map[string]string{"a.options": "--cpu 2\n--\n--options-file b.options\n"},
			[]string{"--options-file", "a.options", "--options-file", "c.options"},
			[]string{"--cpu", "2", "--", "--options-file", "b.options", "--options-file", "c.options"}, ""},
		{"-- on the command line",
			nil,
			[]string{"--cpu", "2", "--", "--options-file", "a.options"},
			[]string{"--cpu", "2", "--", "--options-file", "a.options"}, ""},

		{"unmatched quote",
			map[string]string{"a.options": "--cpu 2\n\n# 'a\n--toolchain-id \"abc\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:4: error: unmatched quote in "abc`},
		{"unmatched quotes differ",
			map[string]string{"a.options": "--toolchain-id 'abc\"\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:1: error: unmatched quote in 'abc"`},
		{"lone quote argument",
			map[string]string{"a.options": "\"\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:1: error: unmatched quote in "`},
		{"syntax error in a nested file",
			map[string]string{"a.options": "--cpu 2\n--options-file b.options\n", "b.options": "\n\n--toolchain-id 'x\n"},
			[]string{"--options-file", "a.options"},
			nil, `b.options:3: error: unmatched quote in 'x`},
		{"missing file",
			nil,
			[]string{"--options-file", "none.options"},
			nil, `--options-file: open none.options: no such file or directory`},
		{"missing nested file",
			map[string]string{"a.options": "\n--options-file none.options\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:2: error: --options-file: open none.options: no such file or directory`},
		{"missing file name",
			nil,
			[]string{"--cpu", "2", "--options-file"},
			nil, `--options-file: FILE expected`},
		{"empty file name",
			map[string]string{"a.options": "--options-file ''\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:1: error: --options-file: FILE expected`},
		{"loop",
			map[string]string{"a.options": "--options-file b.options\n", "b.options": "--cpu 2\n--options-file a.options\n"},
			[]string{"--options-file", "a.options"},
			nil, `b.options:2: error: invalid --options-file value 'a.options': options files include each other: $D/a.options includes $D/b.options includes $D/a.options`},
		{"self",
			map[string]string{"a.options": "--options-file ./a.options\n"},
			[]string{"--options-file", "a.options"},
			nil, `a.options:1: error: invalid --options-file value 'a.options': options files include each other: $D/a.options includes $D/a.options`},
		{"too deep",
			deepOptionsFiles(maxOptionsFileDepth + 1),
			[]string{"--options-file", "1.options"},
			nil, fmt.Sprintf("%d.options:1: error: invalid --options-file value '%d.options': options files nested more than %d deep", maxOptionsFileDepth, maxOptionsFileDepth+1, maxOptionsFileDepth)},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir)
			for name, content := range c.files {
				if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(name, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := expandOptionsFiles(c.args, isTestBool)
			if c.err != "" {
				want := strings.ReplaceAll(c.err, "$D", dir)
				if err == nil || !strings.HasSuffix(err.Error(), want) {
					t.Fatalf("error %v, want one ending %q", err, want)
				}
				return
			}
			if err != nil || !slices.Equal(got, c.want) {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

// deepOptionsFiles is n files, each including the next.
func deepOptionsFiles(n int) map[string]string {
	files := map[string]string{}
	for i := 1; i <= n; i++ {
		files[fmt.Sprintf("%d.options", i)] = fmt.Sprintf("--options-file %d.options\n", i+1)
	}
	files[fmt.Sprintf("%d.options", n+1)] = "--cpu 2\n"
	return files
}

// TestOptionsFileOverrides: the expanded options parse in order, so the
// last one given wins, whether in a file or on the command line.
func TestOptionsFileOverrides(t *testing.T) {
	f := filepath.Join(t.TempDir(), "host.options")
	if err := os.WriteFile(f, []byte("--cpu 4\n--toolchain-id 'from the file'\n--systemd-daemon\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		cpu  int
		id   string
	}{
		{[]string{"--options-file", f}, 4, "from the file"},
		{[]string{"--cpu", "8", "--options-file", f}, 4, "from the file"},
		{[]string{"--options-file", f, "--cpu", "8", "--toolchain-id", "x"}, 8, "x"},
	} {
		args, err := expandOptionsFiles(c.args, isTestBool)
		if err != nil {
			t.Fatal(err)
		}
		o, err := parseFlags(t, args...)
		if err != nil || o.CPU != c.cpu || o.ToolchainID != c.id || !o.SystemdDaemon {
			t.Errorf("%q: %v, cpu %d, id %q, systemd-daemon %v", c.args, err, o.CPU, o.ToolchainID, o.SystemdDaemon)
		}
	}
}

func isTestBool(option string) bool { return option == "--systemd-daemon" || option == "--fake-build" }

// TestOptionsFileBoolean: "--systemd-daemon true" in a file is the boolean
// set, not the option followed by a URL "true"; another word is an error
// at its line.
func TestOptionsFileBoolean(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("--systemd-daemon true\n--fake-build false\n--cpu 4\n"), 0o644)
	got, err := expandOptionsFiles([]string{"--options-file", good}, isTestBool)
	if want := []string{"--systemd-daemon=true", "--fake-build=false", "--cpu", "4"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("got %q, %v; want %q", got, err, want)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("# x\n--systemd-daemon yes\n"), 0o644)
	_, err = expandOptionsFiles([]string{"--options-file", bad}, isTestBool)
	if err == nil || !strings.Contains(err.Error(), bad+":2: error: --systemd-daemon takes no value but true or false, not 'yes'") {
		t.Fatalf("error %v", err)
	}
}
