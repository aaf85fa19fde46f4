// Package machine runs build machines under QEMU: the command line is a
// pure function of the configuration, the process is started with os/exec,
// and everything else goes through QMP (github.com/digitalocean/go-qemu).
package machine

import (
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Config describes one QEMU machine.
type Config struct {
	QEMU   string // binary; default qemu-system-x86_64
	Name   string // -name, for ps and logs
	Dir    string // working directory (the snapshot): manifest paths resolve here
	RunDir string // qmp.sock, qemu.pid (and the console log by default)

	Accel string // "kvm" or "tcg"
	CPUs  int
	RAM   uint64 // KiB

	Network string // "user" or "bridge"
	Tap     string // bridge mode: the tap interface
	MAC     string // optional
	// AuxTap, if set, is a second NIC (virtio, MAC AuxMAC) on that tap:
	// the build machine's link to its task's auxiliary machines, on a
	// private bridge of the slot.
	AuxTap, AuxMAC string

	// OEMStrings become SMBIOS type 11 strings (bbot.tftp=..., ...).
	OEMStrings []string
	// OEMFiles are files (absolute paths) whose contents become further
	// type 11 strings: for secrets, which on the command line anyone could
	// read in /proc/<pid>/cmdline. QEMU reads them at start-up, as the
	// user that starts it.
	OEMFiles []string
	// Options are the machine manifest's extra QEMU arguments, with shell
	// quoting ('...', "...", backslash).
	Options string
	// Disk, relative to Dir, is attached as a virtio disk when not empty.
	Disk string

	ConsoleLog    string // default <RunDir>/console.log
	ConsoleLogMax int64  // bytes kept (the tail); default 16 MiB
	// ConsoleSocket (default <RunDir>/console.sock) is where Start serves
	// the serial console to people: the live output after a replay of its
	// last lines, and their input to the guest. The agent serves it (QEMU's
	// serial stays on its stdio), so the console log stays whole.
	ConsoleSocket string

	// VNC makes QEMU serve VNC (the display's framebuffer, and keyboard
	// and mouse input) on the unix socket VNCSocket, default
	// <RunDir>/vnc.sock: -vnc unix:<path>. Never TCP: QEMU's VNC server has
	// no authentication here, and a guest on user networking reaches the
	// host's loopback (10.0.2.2). The guest sees a display device only if
	// its manifest's options add one (-nodefaults).
	VNC       bool
	VNCSocket string

	// Sandbox runs QEMU under its seccomp filter: -sandbox on with
	// obsolete, spawn and resourcecontrol denied, and elevateprivileges
	// denied unless RunAs needs setuid (QEMU 7.2 dies of SIGSYS on its
	// -runas setuid under elevateprivileges=deny).
	Sandbox bool
	// RunAs, a user name, is QEMU's -runas: QEMU starts as the caller
	// (root) and switches to this user's uid, gid and groups at the end of
	// its initialisation. Everything on the command line is opened before
	// the switch: the QMP sockets and the pid file in RunDir (created as
	// root; QEMU can no longer unlink them, Start's owner removes them),
	// the kernel, initrd and disk (read as root: nothing in Dir needs to be
	// owned by or readable for the user), /dev/kvm and the tap. Afterwards
	// QEMU opens nothing; the console is its stdout. The uid change also
	// clears the parent-death signal (Pdeathsig) and makes the process
	// non-dumpable (other processes of the user cannot ptrace it or read
	// its memory, but they can signal it): a dedicated user is better than
	// nobody. Not for unprivileged callers: QEMU cannot setuid.
	RunAs string
}

// Socket and file names inside RunDir; short, because a UNIX socket path
// must fit in sun_path.
const (
	QMPSocketName = "qmp.sock"
	// AdminSocketName is a second QMP socket for administrators and the
	// admin commands: QEMU serves one client per socket, and the agent
	// holds the first.
	AdminSocketName = "admin.sock"
	PIDFileName     = "qemu.pid"
	ConsoleLogName  = "console.log"
	// ConsoleSocketName, the longest of the socket names, is the console
	// socket; VNCSocketName is VNC's.
	ConsoleSocketName = "console.sock"
	VNCSocketName     = "vnc.sock"
	maxSunPath        = 107 // sizeof(sun_path) - 1 on Linux
)

// MaxRunDir is the longest RunDir whose sockets fit in sun_path: the
// longest socket name decides.
const MaxRunDir = maxSunPath - 1 - max(len(ConsoleSocketName), len(VNCSocketName), len(AdminSocketName), len(QMPSocketName))

// QMPSocket is the QMP socket's path.
func (c *Config) QMPSocket() string { return filepath.Join(c.RunDir, QMPSocketName) }

// AdminSocket is the administrators' QMP socket's path.
func (c *Config) AdminSocket() string { return filepath.Join(c.RunDir, AdminSocketName) }

// PIDFile is the pid file QEMU writes.
func (c *Config) PIDFile() string { return filepath.Join(c.RunDir, PIDFileName) }

// ConsolePath is the console log's path.
func (c *Config) ConsolePath() string {
	if c.ConsoleLog != "" {
		return c.ConsoleLog
	}
	return filepath.Join(c.RunDir, ConsoleLogName)
}

// ConsoleSocketPath is the console socket's path.
func (c *Config) ConsoleSocketPath() string {
	if c.ConsoleSocket != "" {
		return c.ConsoleSocket
	}
	return filepath.Join(c.RunDir, ConsoleSocketName)
}

// VNCSocketPath is the VNC socket's path ("" without VNC).
func (c *Config) VNCSocketPath() string {
	switch {
	case !c.VNC:
		return ""
	case c.VNCSocket != "":
		return c.VNCSocket
	}
	return filepath.Join(c.RunDir, VNCSocketName)
}

func (c *Config) binary() string {
	if c.QEMU == "" {
		return "qemu-system-x86_64"
	}
	return c.QEMU
}

// Validate checks the configuration without touching the system.
func (c *Config) Validate() error {
	switch {
	case c.Dir == "":
		return errors.New("machine: no working directory")
	case c.RunDir == "":
		return errors.New("machine: no run directory")
	case len(c.AdminSocket()) > maxSunPath || len(c.QMPSocket()) > maxSunPath:
		return fmt.Errorf("machine: QMP socket path %q is longer than %d bytes", c.AdminSocket(), maxSunPath)
	case len(c.ConsoleSocketPath()) > maxSunPath:
		return fmt.Errorf("machine: console socket path %q is longer than %d bytes", c.ConsoleSocketPath(), maxSunPath)
	case len(c.VNCSocketPath()) > maxSunPath:
		return fmt.Errorf("machine: VNC socket path %q is longer than %d bytes", c.VNCSocketPath(), maxSunPath)
	case c.Accel != "kvm" && c.Accel != "tcg":
		return fmt.Errorf("machine: accelerator %q is not kvm or tcg", c.Accel)
	case c.CPUs < 1:
		return fmt.Errorf("machine: %d CPUs", c.CPUs)
	case c.RAM < 64<<10:
		return fmt.Errorf("machine: %d KiB of RAM is below 64 MiB", c.RAM)
	}
	switch c.Network {
	case "user":
	case "bridge":
		if !validIfName(c.Tap) {
			return fmt.Errorf("machine: bad tap interface name %q", c.Tap)
		}
	default:
		return fmt.Errorf("machine: network %q is not user or bridge", c.Network)
	}
	if c.MAC != "" && !validMAC(c.MAC) {
		return fmt.Errorf("machine: bad MAC address %q", c.MAC)
	}
	if c.AuxTap != "" && (!validIfName(c.AuxTap) || c.AuxMAC == "" || !validMAC(c.AuxMAC)) {
		return fmt.Errorf("machine: bad second NIC: tap %q, MAC %q", c.AuxTap, c.AuxMAC)
	}
	for _, s := range c.OEMStrings {
		if s == "" || strings.ContainsAny(s, "\x00") {
			return fmt.Errorf("machine: bad OEM string %q", s)
		}
	}
	for _, f := range c.OEMFiles {
		if !filepath.IsAbs(f) || strings.ContainsAny(f, "\x00") {
			return fmt.Errorf("machine: OEM string file %q must be an absolute path", f)
		}
	}
	if c.Disk != "" && (filepath.IsAbs(c.Disk) || strings.Contains(c.Disk, ",")) {
		return fmt.Errorf("machine: disk %q must be a plain relative path", c.Disk)
	}
	if c.RunAs != "" && !ValidUserName(c.RunAs) {
		return fmt.Errorf("machine: bad user name %q", c.RunAs)
	}
	opts, err := SplitOptions(c.Options)
	if err != nil {
		return err
	}
	// The manifest's options must not undo the sandbox or the user switch
	// (QEMU merges -sandbox options and the last -runas wins), nor add a
	// display or a VNC server (on TCP, say) beside the agent's.
	for _, w := range opts {
		opt := w
		if strings.HasPrefix(opt, "--") {
			opt = opt[1:] // QEMU takes --opt for -opt
		}
		switch opt {
		case "-sandbox":
			if c.Sandbox {
				return fmt.Errorf("machine options: %s conflicts with the agent's sandbox", w)
			}
		case "-runas", "-run-with":
			if c.RunAs != "" {
				return fmt.Errorf("machine options: %s conflicts with the agent's -runas", w)
			}
		case "-vnc", "-display":
			return fmt.Errorf("machine options: %s conflicts with the agent's display (VNC on a unix socket)", w)
		}
	}
	return nil
}

// userName is a portable user name (POSIX's portable filename characters,
// not starting with '-' or a digit, so it is neither an option nor QEMU's
// <uid>:<gid> form), at most 32 bytes like Linux's utmp.
var userName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)

// ValidUserName reports whether s is acceptable as RunAs.
func ValidUserName(s string) bool { return userName.MatchString(s) }

// validIfName is a network interface name QEMU's option syntax and Linux
// (IFNAMSIZ) take.
func validIfName(s string) bool { return s != "" && len(s) <= 15 && !strings.ContainsAny(s, ",/ ") }

func validMAC(s string) bool {
	parts := strings.Split(s, ":")
	if len(parts) != 6 {
		return false
	}
	for _, p := range parts {
		if _, err := strconv.ParseUint(p, 16, 8); err != nil || len(p) != 2 {
			return false
		}
	}
	return true
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// Args returns QEMU's argv (without the binary); it does no I/O.
func (c *Config) Args() ([]string, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	cpu := "max"
	if c.Accel == "kvm" {
		cpu = "host"
	}
	name := c.Name
	if name == "" {
		name = "bbot"
	}
	a := []string{
		"-name", qemuEscape(name),
		"-nodefaults", "-no-user-config",
		"-machine", "pc,accel=" + c.Accel,
		"-cpu", cpu,
		"-smp", strconv.Itoa(c.CPUs),
		"-m", strconv.FormatUint(c.RAM, 10) + "K",
		"-display", "none",
		// The console comes to us on stdout (to a bounded log and the
		// console socket's clients); stdin is their input.
		"-chardev", "stdio,id=console,signal=off",
		"-serial", "chardev:console",
		"-qmp", "unix:" + qemuEscape(c.QMPSocket()) + ",server=on,wait=off",
		"-qmp", "unix:" + qemuEscape(c.AdminSocket()) + ",server=on,wait=off",
		"-pidfile", c.PIDFile(),
		// A guest reboot ends the machine like a power-off.
		"-no-reboot",
	}
	if c.VNC {
		a = append(a, "-vnc", "unix:"+qemuEscape(c.VNCSocketPath()))
	}
	if len(c.OEMStrings)+len(c.OEMFiles) > 0 {
		s := "type=11"
		for _, v := range c.OEMStrings {
			s += ",value=" + qemuEscape(v)
		}
		for _, f := range c.OEMFiles {
			s += ",path=" + qemuEscape(f)
		}
		a = append(a, "-smbios", s)
	}
	switch c.Network {
	case "user":
		a = append(a, "-netdev", "user,id=net0")
	case "bridge":
		a = append(a, "-netdev", "tap,id=net0,ifname="+c.Tap+",script=no,downscript=no")
	}
	dev := "virtio-net-pci,netdev=net0"
	if c.MAC != "" {
		dev += ",mac=" + c.MAC
	}
	a = append(a, "-device", dev)
	if c.AuxTap != "" {
		a = append(a, "-netdev", "tap,id=net1,ifname="+c.AuxTap+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev=net1,mac="+c.AuxMAC)
	}
	if c.Disk != "" {
		a = append(a, "-drive", "file="+c.Disk+",if=virtio,format=raw")
	}
	opts, _ := SplitOptions(c.Options)
	a = append(a, opts...)
	// Last, after the manifest's options (which Validate has checked).
	if c.Sandbox {
		elevate := "deny"
		if c.RunAs != "" {
			elevate = "allow" // -runas's setgid/setuid
		}
		a = append(a, "-sandbox", "on,obsolete=deny,elevateprivileges="+elevate+",spawn=deny,resourcecontrol=deny")
	}
	if c.RunAs != "" {
		a = append(a, "-runas", c.RunAs)
	}
	return a, nil
}

// SplitOptions splits the manifest's options like a POSIX shell would
// (without expansions): blanks separate words, '...' is literal, "..."
// allows \" and \\, and a backslash elsewhere escapes the next character.
func SplitOptions(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, errors.New("machine options: unterminated single quote")
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, errors.New("machine options: unterminated double quote")
			}
			inWord = true
		case c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("machine options: trailing backslash")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// CommandLine renders argv shell-quoted, for the log.
func CommandLine(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=/.,:@+", r))
		}) < 0 {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
