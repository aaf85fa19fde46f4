package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/build2/bbot-agent-go/agent"
)

// maxOptionsFileDepth bounds options files reading options files: deeper is
// a mistake, or a loop through names that differ (links).
const maxOptionsFileDepth = 10

// optionsFileError is a mistake at a line of an options file.
type optionsFileError struct {
	File string
	Line int
	Err  error
}

func (e *optionsFileError) Error() string {
	return fmt.Sprintf("%s:%d: error: %v", e.File, e.Line, e.Err)
}
func (e *optionsFileError) Unwrap() error { return e.Err }

// expandOptionsFiles replaces each --options-file FILE (or
// --options-file=FILE) in args with the arguments FILE holds, as bbot's
// command line does (build2's CLI), so that its options parse exactly as if
// given in its place: a later option overrides it, it overrides earlier
// ones. After a "--" argument nothing is expanded.
//
// A file holds one option or argument per line, leading and trailing
// whitespace ignored; empty lines and lines starting with # are ignored. A
// line starting with - is an option, with its value after the first space,
// tab or =; any other line is one argument (a controller URL). A value (or
// argument) starting or ending with a quote must be wrapped in one pair of
// "..." or '...', which is removed: quotes keep leading and trailing spaces
// and give empty values; quotes inside are part of the value. A boolean
// option (isBool) in a file may be followed by true or false, as in
// "--systemd-daemon true".
func expandOptionsFiles(args []string, isBool func(option string) bool) ([]string, error) {
	x := optionsExpansion{isBool: isBool}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if x.ended {
			x.out = append(x.out, a)
			continue
		}
		name, file, hasFile := strings.Cut(a, "=")
		if !isOptionsFileOption(name) {
			x.out = append(x.out, a)
			x.ended = a == "--"
			continue
		}
		if !hasFile {
			if i+1 == len(args) {
				return nil, errOptionsFileMissing
			}
			i++
			file = args[i]
		}
		if err := x.read(file); err != nil {
			return nil, err
		}
	}
	return x.out, nil
}

var errOptionsFileMissing = &agent.OptionError{Option: "options-file", Reason: "FILE expected"}

// isOptionsFileOption is true for --options-file, and for -options-file,
// which the flag package would take as the same option.
func isOptionsFileOption(name string) bool {
	return name == "--options-file" || name == "-options-file"
}

type optionsExpansion struct {
	isBool func(option string) bool
	out    []string
	files  []string // the files being read, outermost first
	ended  bool     // "--" seen: the rest are arguments
}

// read appends the arguments of the options file path.
func (x *optionsExpansion) read(path string) error {
	if path == "" {
		return errOptionsFileMissing
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return &agent.OptionError{Option: "options-file", Value: path, Reason: err.Error()}
	}
	if slices.Contains(x.files, abs) {
		return &agent.OptionError{Option: "options-file", Value: path, Reason: "options files include each other: " + strings.Join(append(x.files[slices.Index(x.files, abs):], abs), " includes ")}
	}
	if len(x.files) == maxOptionsFileDepth {
		return &agent.OptionError{Option: "options-file", Value: path, Reason: fmt.Sprintf("options files nested more than %d deep", maxOptionsFileDepth)}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		// The error names the path.
		return &agent.OptionError{Option: "options-file", Reason: err.Error()}
	}
	x.files = append(x.files, abs)
	defer func() { x.files = x.files[:len(x.files)-1] }()
	for n, line := range strings.Split(string(data), "\n") {
		if err := x.line(path, line); err != nil {
			var fe *optionsFileError
			if errors.As(err, &fe) {
				return err // located in a nested file
			}
			return &optionsFileError{File: path, Line: n + 1, Err: err}
		}
	}
	return nil
}

// line appends the arguments of a line of the options file path.
func (x *optionsExpansion) line(path, line string) error {
	line = strings.Trim(line, " \t\r")
	if line == "" || line[0] == '#' {
		return nil
	}
	option, value, sep := "", line, byte(0)
	if line[0] == '-' {
		if i := strings.IndexAny(line, " \t="); i >= 0 {
			option, value, sep = line[:i], line[i+1:], line[i]
			if sep != '=' {
				value = strings.TrimLeft(value, " \t\r")
			}
		} else {
			option, value = line, ""
		}
	}
	if first, last := firstByte(value), lastByte(value); isQuote(first) || isQuote(last) {
		if len(value) < 2 || first != last {
			return fmt.Errorf("unmatched quote in %s", value)
		}
		value = value[1 : len(value)-1]
	}
	switch {
	case option == "":
		x.out = append(x.out, value)
	case !x.ended && isOptionsFileOption(option):
		if value == "" {
			return errOptionsFileMissing
		}
		if !filepath.IsAbs(value) {
			value = filepath.Join(filepath.Dir(path), value)
		}
		return x.read(value)
	case sep == 0:
		x.out = append(x.out, option)
		x.ended = x.ended || option == "--"
	case sep == '=':
		// One argument, as on a command line: a boolean option takes
		// its value only this way.
		x.out = append(x.out, option+"="+value)
	case x.isBool != nil && x.isBool(option):
		// The flag package takes a boolean's value only after "=": given
		// apart, it would become the first URL.
		if value != "true" && value != "false" {
			return fmt.Errorf("%s takes no value but true or false, not '%s'", option, value)
		}
		x.out = append(x.out, option+"="+value)
	default:
		x.out = append(x.out, option, value)
	}
	return nil
}

func isQuote(c byte) bool { return c == '"' || c == '\'' }

func firstByte(s string) byte {
	if s == "" {
		return 0
	}
	return s[0]
}

func lastByte(s string) byte {
	if s == "" {
		return 0
	}
	return s[len(s)-1]
}
