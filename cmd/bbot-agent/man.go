package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/build2/bbot-agent-go/agent"
)

// manPage is bbot-agent(1) in man(7) macros. Its OPTIONS are app's flags,
// by the categories and in the order --help shows them, so that a new
// option is documented by its definition; bbot-agent.1 is its output
// (TestManPage). It carries the agent's Version rather than a date, so
// that it changes only with what it says.
func manPage(app *cli.App) []byte {
	app.Setup() // adds the help and version flags, and the categories
	var b bytes.Buffer
	p := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }

	p(`.\" Generated from the command line definition in cmd/bbot-agent; do not edit.`)
	p(`.\" Regenerate: go test ./cmd/bbot-agent -run TestManPage -update`)
	p(`.TH BBOT\-AGENT 1 "" "bbot\-agent %s" "bbot-agent"`, agent.Version)
	p(`.nh`)
	p(`.ad l`)
	p(`.SH NAME`)
	p(`bbot\-agent \- %s`, roff(app.Usage))
	p(`.SH SYNOPSIS`)
	p(`.B bbot\-agent`)
	p(`[\fIoptions\fP] [\fIpriority\fP\fB=\fP]\fIurl\fP ...`)
	fmt.Fprintf(&b, manDescription, maxOptionsFileDepth)

	p(`.SH OPTIONS`)
	p(`Durations are in integer seconds and sizes in KiB, as in bbot;`)
	p(`a numeric option's accepted values are shown as MIN..MAX, and a value out of range is an error naming the option.`)
	var other cli.VisibleFlagCategory
	for _, c := range app.VisibleFlagCategories() {
		if c.Name() == "" {
			other = c // flags without a category: last
			continue
		}
		manOptions(&b, c.Name(), c.Flags())
	}
	if other != nil {
		manOptions(&b, "Other options", other.Flags())
	}

	b.WriteString(manPriority)
	p(`.SH EXIT STATUS`)
	for _, s := range []struct {
		status int
		text   string
	}{
		{0, `Success, including \fB\-\-dump\-*\fP whatever the result's status, and a stop by SIGTERM or SIGINT.`},
		{exitFailure, `A failure at run time.`},
		{2, `A Go panic (a bug in the agent), or SIGABRT from the systemd watchdog (a goroutine stuck outside its loop): both are restarted.`},
		{exitUsage, `A bad option or value (EX_USAGE): an unknown option, a value that does not parse or is out of range, a bad controller URL or priority, an options file that cannot be read or has a syntax error, a \fB\-\-fake\-request\fP or \fB\-\-fake\-machine\fP file that cannot be read.`},
		{exitDataErr, `A malformed \fB\-\-fake\-request\fP or \fB\-\-fake\-machine\fP manifest (EX_DATAERR), reported as \fIfile\fP:\fIline\fP:\fIcolumn\fP: error: ...`},
		{exitConfig, `The host does not fit the options, found at start (EX_CONFIG): the \fB\-\-bridge\fP is missing or has no IPv4 address, \fBnft\fP(8) is missing in bridge mode, \fB\-\-guest\-range\fP does not fit its network, the \fB\-\-auth\-key\fP cannot be read or is not an RSA key, the \fB\-\-qemu\-user\fP does not exist, the state or run directory cannot be created, or another process holds one of this process's instances.`},
	} {
		p(`.TP`)
		p(`.B %d`, s.status)
		p(`%s`, s.text)
	}
	b.WriteString(manFiles)
	b.WriteString(manSignals)
	b.WriteString(manSeeAlso)
	return b.Bytes()
}

// manOptions writes a category's flags: each with its names and
// placeholder, then its usage and default as --help shows them.
func manOptions(b *bytes.Buffer, category string, flags []cli.VisibleFlag) {
	fmt.Fprintf(b, ".SS %s\n", roff(category))
	for _, f := range flags {
		df, ok := f.(cli.DocGenerationFlag)
		if !ok {
			panic(fmt.Sprintf("manOptions: --%s (%T) cannot be documented", f.Names()[0], f))
		}
		placeholder, usage := unquoteUsage(df.GetUsage())
		if df.TakesValue() && placeholder == "" {
			placeholder = "value" // urfave/cli's
		}
		var names []string
		for _, n := range df.Names() {
			dashes := "--"
			if len(n) == 1 {
				dashes = "-"
			}
			name := `\fB` + roff(dashes+n) + `\fP`
			if placeholder != "" {
				name += ` \fI` + roff(placeholder) + `\fP`
			}
			names = append(names, name)
		}
		if _, isBool := f.(*cli.BoolFlag); !isBool {
			if d := df.GetDefaultText(); d != "" {
				usage += " (default: " + d + ")"
			}
		}
		fmt.Fprintf(b, ".TP\n%s\n%s\n", strings.Join(names, ", "), roff(usage))
	}
}

// unquoteUsage splits urfave/cli's usage text into the placeholder (the
// first `quoted` word) and the text without the quotes, as its help does.
func unquoteUsage(usage string) (placeholder, text string) {
	before, rest, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok := strings.Cut(rest, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
}

// optionLike is an option name in text: its dashes are minus signs, so
// that the name can be searched for and copied.
var optionLike = regexp.MustCompile(`(^|[\s(\[,])(--?[A-Za-z][A-Za-z0-9-]*)`)

// roff escapes text for a man(7) text line.
func roff(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = optionLike.ReplaceAllStringFunc(s, func(m string) string {
		i := strings.IndexByte(m, '-')
		return m[:i] + strings.ReplaceAll(m[i:], "-", `\-`)
	})
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s // not a request
	}
	return s
}

const manDescription = `.SH DESCRIPTION
.B bbot\-agent
is the build2 build bot agent, a drop-in for build2's C++
.BR bbot\-agent :
the same options and meanings, the same protocol with the controllers (brep).
It keeps build machines as btrfs subvolumes under
.BR \-\-machines ,
bootstraps each machine once with the toolchain served over TFTP from
.B \-\-tftp
and keeps that bootstrapped snapshot, asks the controllers for build tasks,
runs each task in a fresh copy-on-write snapshot under QEMU, collects the result over TFTP and uploads it.
A build that times out, or whose machine never talks or uploads no usable result, is soft-failed:
its VM is paused and kept for inspection until it is released (see
.BR \-\-suspended ,
.BR \-\-resume ,
.B \-\-release
and
.BR \-\-suspend\-timeout ).
With
.B \-\-interactive true
or
.B both
it asks for interactive builds too, naming the asking slot's console attach command as its interactive login;
a worker at its breakpoint PUTs a file named
.IR interactive ,
after which its machine keeps running for up to
.B \-\-interactive\-timeout
and is listed by
.B \-\-suspended
until its result comes or
.B \-\-release
ends it
.RB ( abort ,
not held).
One process runs up to
.B \-\-slots
tasks at once, as bbot's instances
.BR \-\-instance ", ..."
.RB \-\-instance +N\-1.
.PP
Each
.I url
is a controller's task endpoint, such as https://ci.cppget.org/?build\-task,
optionally prefixed with a
.IB priority =
(see PRIORITY).
Options come first: the first argument that is not an option, and every argument after it, is a URL.
.SS Options files
.B \-\-options\-file
.I file
reads options and URLs from
.I file
as if they were given in its place: options after it override the file's, and the file's override those before it.
Each line holds one option, with its value after the first space, tab or
.BR = ,
or one argument (a URL).
Leading and trailing whitespace is ignored, and so are empty lines and lines starting with
.BR # .
A value that starts or ends with a quote must be wrapped in one pair of
.B \(dq...\(dq
or
.BR \(aq...\(aq ,
which keeps its leading and trailing spaces (or gives an empty value); quotes inside a value are part of it.
An options file may name other options files (a relative name is relative to its directory), up to %d deep.
For example,
.I /etc/bbot\-agent/default.options
for the systemd unit
.BR bbot\-agent@default.service :
.PP
.RS
.nf
# 4 tasks at once, 4 CPUs and 8 GiB each.
\-\-toolchain\-name default
\-\-slots 4
\-\-cpu 4
\-\-build\-ram=8388608
\-\-auth\-key /etc/bbot\-agent/default.pem
\-\-toolchain\-id \(dqgcc 14, clang 19\(dq
https://ci.cppget.org/?build\-task
1100=https://ci.example.org/?build\-task
.fi
.RE
`

const manPriority = `.SH PRIORITY
A URL's
.IB priority =
prefix is bbot's
.RI [ F ] DCBA :
a number of up to 5 digits (0 without a prefix).
Levels compare hierarchically: a URL's level-L value is its DCBA number divided by 10^(L\-1)
(the C value of 1234 is 12).
.TP
.B A
Order only: higher first, equal priorities in random order.
.TP
.B B
While a task of a higher B value runs, URLs of a lower B value are not asked (resources are kept for it).
.TP
.B C
A task from this URL interrupts
.I one
running task of a lower C value (the lowest-priority one) when its machine is busy with it or no slot is free.
.TP
.B D
A task from this URL interrupts
.I all
running tasks of a lower D value.
.TP
.B F
1: the task's CPUs are all the host's hardware threads (boost); not part of the order.
.PP
Interrupted tasks are reported
.B interrupt
(brep queues the build again); their VM is forced down and their snapshot removed.
A task held for inspection is never interrupted and takes no part in these comparisons.
For example, a host that serves a public queue and, first, a team's CI:
.PP
.RS
.nf
bbot\-agent \-\-slots 4 \-\-cpu 4 \-\-toolchain\-name public \e
  https://ci.cppget.org/?build\-task 1100=https://ci.example.org/?build\-task
.fi
.RE
.PP
The CI's tasks (C=1, D=1) interrupt every public task to take the whole host;
.B 11100=
would also give them all hardware threads.
`

const manFiles = `.SH FILES
.I <toolchain>
is
.BR \-\-toolchain\-name ,
.I <i>
an instance of this process.
.TP
.I /build/machines/
The machines
.RB ( \-\-machines ,
on btrfs):
.IR <volume> / <machine> / <machine> \-1. <R>
subvolumes with their link
.IR <machine> \-1,
the bootstrapped snapshot
.IR <machine> \- <toolchain>
beside them, and each machine's
.I .lock
(one job at a time, across processes).
.TP
.I /build/tftp/
The TFTP root
.RB ( \-\-tftp ):
.IR toolchains/ <toolchain> /
is what bootstrapping machines get; the agent makes
.IR bootstrap/ <toolchain> \- <i> /
and
.IR build/ <toolchain> \- <i> /get/ " and " put/
for its sessions.
.TP
.IR /var/lib/bbot\-agent/ <toolchain> /
The state directory
.RB ( \-\-state\-dir ,
0700):
.IR journal/ <i> /
each instance's task journal (a task's result request is kept there until the controller has it),
.I failed/
results that could not be delivered (with a
.I .why
file),
.I accel
the QEMU accelerator chosen.
.TP
.IR /run/bbot\-agent/ <toolchain> /
The run directory
.RB ( \-\-run\-dir ,
0700):
.IR instance\- <i> .lock
each instance's claim,
.IR token\- <k> .lock
the
.B \-\-instance\-max
tokens, and
.IR <i> /
each instance's QMP sockets
.RI ( qmp.sock ", " admin.sock ),
console socket
.RI ( console.sock :
the machine's serial console, for
.BR "socat \-,raw,echo=0,escape=0x1d UNIX\-CONNECT:" \fIpath\fR;
Ctrl\-] detaches),
VNC socket
.RI ( vnc.sock :
the machine's display, keyboard and mouse, without a password),
pid file, console log, VM record and
.IR suspended.json .
Neither socket is TCP: only the agent's user can reach them.
To view VNC on the host:
.B socat TCP\-LISTEN:5901,bind=127.0.0.1,reuseaddr UNIX\-CONNECT:\fIpath\fB &
.BR "vncviewer 127.0.0.1::5901" ;
from another machine:
.B ssh \-L 5901:\fIpath\fB \fIhost\fR
and
.B vncviewer 127.0.0.1::5901
there.
A held machine is paused: attaching shows the replay of its last output
only, and typed input is buffered until
.BR \-\-resume .
A hold taken over from an earlier agent has its console served again on the same socket.
.TP
.IR /etc/bbot\-agent/ <toolchain> .options
The options file the systemd unit
.BI bbot\-agent@ <toolchain> .service
reads
.RB ( \-\-options\-file ).
`

const manSignals = `.SH SIGNALS
.TP
.BR SIGTERM ", " SIGINT
Stop: every running machine is forced down, running tasks are reported
.B interrupt
(or
.B abort
to a controller that refuses it), and the agent exits 0.
A build machine held for inspection is not ended: it stays suspended, with its records, and the next agent takes it over (its console served again) and sends its result when the hold ends. Held bootstraps and builds with auxiliary machines are ended and reported now.
.TP
.B SIGHUP
Rescan the machines now. It does not read the options, options files or URLs again: restart the agent for that.
.TP
.B SIGUSR1
Drain: finish the running tasks and bootstraps, take no new ones (a poll under way ends first), leave held machines held as on SIGTERM, wait up to a minute for results being sent (the rest stays journaled), and exit 0.
.TP
.B SIGABRT
Sent by systemd's watchdog when the agent stopped sending WATCHDOG=1 (a goroutine did not answer its heartbeat): Go prints every goroutine's stack and exits 2.
`

const manSeeAlso = `.SH SEE ALSO
.BR qemu\-system\-x86_64 (1),
.BR btrfs (8),
.BR systemd.service (5),
.BR sd_notify (3),
.BR sysexits (3)
.PP
README.md in the bbot-agent-go sources: running it on a host, slots, the address plan, security and failure outcomes.
`
