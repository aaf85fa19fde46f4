// Command guest is the test/demo guest worker that runs as /init inside the
// test machine (testdata/machine/build.sh). It learns its TFTP endpoint and
// mode from SMBIOS OEM strings, talks to nothing but that endpoint, and acts
// by mode and, for builds, by the task's package name, so that every agent
// path can be exercised. It is not a product.
package main

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pierrec/lz4/v4"
	pintftp "github.com/pin/tftp/v3"
	"golang.org/x/sys/unix"

	"github.com/build2/bbot-agent-go/manifest"
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stdout, "bbot-guest: "+format+"\n", args...)
}

func main() {
	start := time.Now()
	defer powerOff("end of main")
	if os.Getpid() == 1 {
		setupSystem()
	}
	go watchPowerButton()

	if opts := kernelOptions(); opts["bbot.worker"] == "plain" {
		if err := plainWorker(opts); err != nil {
			// As a worker without its agent: waiting to be powered off.
			logf("plain: failed: %v; waiting", err)
			select {}
		}
		return
	}
	oem, err := readOEMStrings()
	if err != nil {
		logf("cannot read SMBIOS OEM strings: %v", err)
		return
	}
	logf("oem strings: %v (%.2fs after init)", oem, time.Since(start).Seconds())
	if err := setupNetwork(oem); err != nil {
		logf("network setup failed: %v", err)
		return
	}
	c, err := pintftp.NewClient(oem["bbot.tftp"])
	if err != nil {
		logf("bad bbot.tftp %q: %v", oem["bbot.tftp"], err)
		return
	}
	c.SetTimeout(2 * time.Second)
	c.SetRetries(5)
	c.SetBlockSize(1468)
	g := &guest{tftp: c, prefix: oem["bbot.tftp-prefix"], oem: oem}
	switch oem["bbot.mode"] {
	case "bootstrap":
		err = g.bootstrap()
	case "build":
		err = g.build()
	case "auxiliary":
		err = g.auxiliary()
	default:
		err = fmt.Errorf("unknown bbot.mode %q", oem["bbot.mode"])
	}
	if err != nil {
		logf("failed: %v", err)
	}
}

// setupSystem mounts what the worker needs and loads the kernel modules
// shipped in /modules, in the order listed in /modules/order (the cloud
// kernel has no modules.dep here).
func setupSystem() {
	os.MkdirAll("/proc", 0o755)
	os.MkdirAll("/sys", 0o755)
	os.MkdirAll("/dev", 0o755)
	unix.Mount("proc", "/proc", "proc", 0, "")
	unix.Mount("sysfs", "/sys", "sysfs", 0, "")
	unix.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	os.MkdirAll("/tmp", 0o1777)
	unix.Mount("tmpfs", "/tmp", "tmpfs", 0, "")
	order, err := os.ReadFile("/modules/order")
	if err != nil {
		logf("no module order: %v", err)
		return
	}
	for _, name := range strings.Fields(string(order)) {
		f, err := os.Open(filepath.Join("/modules", name+".ko"))
		if err != nil {
			logf("module %s: %v", name, err)
			continue
		}
		if err := unix.FinitModule(int(f.Fd()), "", 0); err != nil && !errors.Is(err, unix.EEXIST) {
			logf("loading %s: %v", name, err)
		}
		f.Close()
	}
}

// readOEMStrings returns the bbot.* OEM strings (SMBIOS type 11), which
// Linux shows NUL-separated after the structure's formatted area.
func readOEMStrings() (map[string]string, error) {
	entries, _ := filepath.Glob("/sys/firmware/dmi/entries/11-*/raw")
	if len(entries) == 0 {
		return nil, errors.New("no SMBIOS type 11 entry")
	}
	r := map[string]string{}
	for _, e := range entries {
		raw, err := os.ReadFile(e)
		if err != nil || len(raw) < 5 {
			continue
		}
		for _, s := range bytes.Split(raw[raw[1]:], []byte{0}) {
			if k, v, ok := strings.Cut(string(s), "="); ok && strings.HasPrefix(k, "bbot.") {
				r[k] = v
			}
		}
	}
	if r["bbot.tftp"] == "" {
		return nil, errors.New("no bbot.tftp OEM string")
	}
	return r, nil
}

// setupNetwork configures the first Ethernet interface: bbot.ip/bbot.gw in
// bridge mode, QEMU user networking's fixed addresses otherwise.
func setupNetwork(oem map[string]string) error {
	dev, err := firstInterface()
	if err != nil {
		return err
	}
	addr, gw := oem["bbot.ip"], oem["bbot.gw"]
	if addr == "" {
		addr, gw = "10.0.2.15/24", "10.0.2.2"
	}
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "set", dev, "up"},
		{"addr", "add", addr, "dev", dev},
		{"route", "add", "default", "via", gw},
	} {
		if out, err := exec.Command("/bin/busybox", append([]string{"ip"}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	logf("network: %s %s via %s", dev, addr, gw)
	return nil
}

// watchPowerButton powers off on an ACPI power button press (QMP
// system_powerdown), read as KEY_POWER from the input devices.
func watchPowerButton() {
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		devs, _ := filepath.Glob("/dev/input/event*")
		if len(devs) == 0 {
			continue
		}
		for _, d := range devs {
			go func(d string) {
				f, err := os.Open(d)
				if err != nil {
					return
				}
				// struct input_event: timeval (16), type u16, code u16, value s32.
				ev := make([]byte, 24)
				for {
					if _, err := io.ReadFull(f, ev); err != nil {
						return
					}
					typ := binary.LittleEndian.Uint16(ev[16:])
					code := binary.LittleEndian.Uint16(ev[18:])
					value := int32(binary.LittleEndian.Uint32(ev[20:]))
					if typ == 1 && code == 116 && value == 1 { // EV_KEY, KEY_POWER, press
						if ignorePowerButton.Load() {
							logf("ignoring the power button")
							continue
						}
						powerOff("power button")
					}
				}
			}(d)
		}
		return
	}
	logf("no input device: the power button is not watched")
}

// ignorePowerButton makes the guest a machine that never powers off
// (bootstrap tests of a forced power-off).
var ignorePowerButton atomic.Bool

func powerOff(why string) {
	logf("powering off (%s)", why)
	unix.Sync()
	if os.Getpid() == 1 {
		unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	}
	os.Exit(0)
}

// guest is the worker's TFTP side; prefix is the session's secret first
// path element (bbot.tftp-prefix), without which the agent refuses us.
type guest struct {
	tftp   *pintftp.Client
	prefix string
	oem    map[string]string // every bbot.* OEM string
	task   string            // the task's name: "manifest" unless set
}

func (g *guest) path(name string) string {
	if g.prefix == "" {
		return name
	}
	return g.prefix + "/" + name
}

func (g *guest) get(name string) ([]byte, error) {
	wt, err := g.tftp.Receive(g.path(name), "octet")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	_, err = wt.WriteTo(&b)
	return b.Bytes(), err
}

func (g *guest) put(name string, r io.Reader) error {
	rf, err := g.tftp.Send(g.path(name), "octet")
	if err != nil {
		return err
	}
	_, err = rf.ReadFrom(r)
	return err
}

func (g *guest) putManifest(name string, pairs []manifest.NameValue) error {
	var b bytes.Buffer
	if err := manifest.WriteStream(&b, "", pairs); err != nil {
		return err
	}
	return g.put(name, &b)
}

// bootstrap reports the versions the toolchain manifest names.
func (g *guest) bootstrap() error {
	logf("bootstrap: fetching toolchain")
	data, err := g.get("toolchain")
	if err != nil {
		return fmt.Errorf("GET toolchain: %w", err)
	}
	b, err := manifest.ParseBootstrap(bytes.NewReader(data), "toolchain")
	if err != nil {
		return err
	}
	logf("bootstrap: installing %d packages", len(b.Versions))
	if err := g.putManifest("manifest", b.Pairs()); err != nil {
		return fmt.Errorf("PUT manifest: %w", err)
	}
	// A toolchain listing the package "test-hang" makes a worker that
	// uploads and then never powers off, power button included.
	if _, ok := b.Version("test-hang"); ok {
		ignorePowerButton.Store(true)
		logf("bootstrap: uploaded, now hanging (test-hang)")
		select {}
	}
	logf("bootstrap: done")
	return nil
}

func (g *guest) build() error {
	logf("build: fetching task")
	name := g.task
	if name == "" {
		name = "manifest"
	}
	data, err := g.get(name)
	if err != nil {
		return fmt.Errorf("GET %s: %w", name, err)
	}
	task, err := manifest.ParseTask(bytes.NewReader(data), "manifest")
	if err != nil {
		return err
	}
	logf("build: task %s/%s", task.Name(), task.Version())
	if bp := task.Interactive(); bp != "" && bp != "none" {
		return g.interactive(task, bp) // interactive.go
	}
	res := manifest.Result{Name: task.Name(), Version: task.Version(), Status: "success"}
	switch task.Name() {
	case "hello":
		res.Status = "success"
		for _, step := range []struct{ op, cmd string }{
			{"configure", "uname -a; cat /proc/cmdline"},
			{"update", "echo 'int main() {}' > /tmp/hello.c && md5sum /tmp/hello.c"},
			{"test", "ls / && echo tests passed"},
		} {
			out, err := exec.Command("/bin/busybox", "sh", "-c", step.cmd).CombinedOutput()
			status := "success"
			if err != nil {
				status = "error"
				res.Status = manifest.WorseStatus(res.Status, status)
			}
			logf("build: %s: %s", step.op, status)
			res.Operations = append(res.Operations, manifest.OperationResult{Operation: step.op, Status: status, Log: string(out)})
		}
	case "error":
		res.Status = "error"
		res.Operations = []manifest.OperationResult{{Operation: "update", Status: "error", Log: "hello.cxx:1:1: error: this package always fails\n"}}
	case "hang":
		logf("build: hanging")
		go readConsole() // a person inspecting the held machine types
		select {}
	case "crash":
		return errors.New("crashing without a result")
	case "garbage":
		return g.put("manifest", strings.NewReader("this is not a manifest\n"))
	case "huge":
		logf("build: uploading 1 GiB")
		err := g.put("manifest", io.LimitReader(zeroReader{}, 1<<30))
		logf("build: huge upload: %v", err)
		return err
	case "escape":
		res.Status = "success"
		var log strings.Builder
		probes := []func() (string, error){
			func() (string, error) { _, err := g.get("../../etc/passwd"); return "GET ../../etc/passwd", err },
			func() (string, error) { _, err := g.get("/etc/passwd"); return "GET /etc/passwd", err },
			func() (string, error) { _, err := g.get("//etc/passwd"); return "GET //etc/passwd", err },
			func() (string, error) { return "PUT ../x", g.put("../x", strings.NewReader("x")) },
			func() (string, error) { return "PUT ../../x", g.put("../../x", strings.NewReader("x")) },
			func() (string, error) {
				return "PUT //tmp/bbot-escape", g.put("//tmp/bbot-escape", strings.NewReader("x"))
			},
		}
		for _, p := range probes {
			what, err := p()
			if err == nil {
				res.Status = "error"
				fmt.Fprintf(&log, "%s: succeeded\n", what)
			} else {
				// Error texts off the wire may carry NULs: keep the log a
				// valid manifest value.
				fmt.Fprintf(&log, "%s: refused: %s\n", what, printable(err.Error()))
			}
		}
		res.Operations = []manifest.OperationResult{{Operation: "test", Status: res.Status, Log: log.String()}}
	case "upload", "upload-refused", "upload-expired":
		// The same artifacts; the controller answers them differently.
		log, err := g.putUploadTar(artifacts(), nil)
		if err != nil {
			return err
		}
		res.Operations = []manifest.OperationResult{{Operation: "bindist", Status: "success", Log: log}}
	case "upload-late", "upload-stuck":
		// upload.tar is still coming when the result is in: slowly (done
		// within the agent's grace), or never.
		slow := &throttled{delay: 50 * time.Millisecond}
		if task.Name() == "upload-stuck" {
			slow = &throttled{delay: time.Second}
		}
		done := make(chan error, 1)
		var log string
		go func() {
			var err error
			log, err = g.putUploadTar(artifacts()[:5], slow) // bindist/debian only
			logf("build: upload.tar: %v", err)
			done <- err
		}()
		time.Sleep(500 * time.Millisecond)
		res.Operations = []manifest.OperationResult{{Operation: "bindist", Status: "success", Log: "upload.tar on its way\n"}}
		if err := g.putManifest("result.manifest", res.Pairs()); err != nil {
			return fmt.Errorf("PUT result.manifest: %w", err)
		}
		logf("build: result uploaded, upload.tar still on its way")
		if err := <-done; err != nil {
			select {} // cut off: the agent forces the machine down
		}
		logf("build: upload.tar done: %s", log)
		return nil
	case "upload-noresult":
		if _, err := g.putUploadTar(artifacts(), nil); err != nil {
			return err
		}
		return errors.New("crashing after upload.tar, without a result")
	case "badtar":
		var b bytes.Buffer
		if _, err := writeTar(&b, artifacts()); err != nil {
			return err
		}
		if err := g.put(uploadTar, bytes.NewReader(b.Bytes()[:b.Len()*2/3])); err != nil {
			return fmt.Errorf("PUT upload.tar: %w", err)
		}
		res.Operations = []manifest.OperationResult{{Operation: "bindist", Status: "success", Log: "sent a truncated upload.tar\n"}}
	case "bigtar":
		big := []artifact{{name: "upload/bindist/debian/huge.deb", data: pseudoRandom("huge", 3<<20)}}
		_, err := g.putUploadTar(big, nil)
		logf("build: big upload.tar: %v", err)
		res.Operations = []manifest.OperationResult{{Operation: "bindist", Status: "success", Log: fmt.Sprintf("upload.tar of 3 MiB: %v\n", printable(fmt.Sprint(err)))}}
	case "lz4":
		res.Operations = []manifest.OperationResult{{Operation: "update", Status: "success", Log: LZ4Log()}}
		return g.putLZ4(res.Pairs())
	case "lz4bomb":
		// 24 MiB (more than the tests' cap) in a few hundred KiB.
		head := ": 1\nname: lz4bomb\nversion: 1.0.0\nstatus: success\nupdate-status: success\nupdate-log:\\\n"
		line := strings.Repeat("a", 63) + "\n"
		body := io.MultiReader(strings.NewReader(head), io.LimitReader(repeatReader(line), 24<<20), strings.NewReader("\\\n"))
		pr, pw := io.Pipe()
		go func() {
			zw := lz4.NewWriter(pw)
			// Plain writes: the Writer's ReadFrom wants a fresh Writer.
			_, err := io.Copy(struct{ io.Writer }{zw}, body)
			pw.CloseWithError(errors.Join(err, zw.Close()))
		}()
		if err := g.put("result.manifest.lz4", pr); err != nil {
			return err
		}
		logf("build: bomb uploaded; staying up, as a worker still running would")
		select {}
	case "console":
		// An interactive guest: it echoes what it reads on its console
		// (the agent's console socket), floods it on request, and ticks
		// until forced down.
		go readConsole()
		logf("build: console: ready")
		for i := 0; ; i++ {
			time.Sleep(500 * time.Millisecond)
			logf("build: console: tick %d", i)
		}
	case "slow":
		logf("build: sleeping 5s")
		time.Sleep(5 * time.Second)
		res.Operations = []manifest.OperationResult{{Operation: "update", Status: "success", Log: "slept 5s\n"}}
	default:
		res.Status = "abort"
		res.Operations = []manifest.OperationResult{{Operation: "configure", Status: "abort", Log: "unknown test package " + task.Name() + "\n"}}
	}
	g.checkAuxiliary(task, &res)
	if err := g.putManifest("manifest", res.Pairs()); err != nil {
		return fmt.Errorf("PUT manifest: %w", err)
	}
	logf("build: result %s uploaded", res.Status)
	return nil
}

// readConsole logs each line read on the console; "flood N" writes N KiB
// of numbered lines to it.
func readConsole() {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		line := sc.Text()
		logf("console input %q", line)
		var kib int
		if _, err := fmt.Sscanf(line, "flood %d", &kib); err == nil {
			w := bufio.NewWriter(os.Stdout)
			for i := range kib * 16 { // 64-byte lines
				fmt.Fprintf(w, "flood %08d %s\n", i, strings.Repeat("f", 48))
			}
			w.Flush()
			logf("console: flood of %d KiB done", kib)
		}
	}
	logf("console: input ended: %v", sc.Err())
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
}

// uploadTar is bbot's artifacts archive name.
const uploadTar = "upload.tar"

// artifact is one member of upload.tar: a directory (name ends in "/"), a
// file (data) or a symbolic link (link).
type artifact struct {
	name string
	data []byte
	link string
}

// artifacts is what the upload packages send, in bbot's layout
// upload/<type>/<instance>/...: two instances the tests' controller takes,
// one over its size limit, a type the task has no URL for, an instance
// with no file, and a symbolic link the agent leaves out.
func artifacts() []artifact {
	return []artifact{
		{name: "upload/"},
		{name: "upload/bindist/"},
		{name: "upload/bindist/debian/"},
		{name: "upload/bindist/debian/bindist-result.manifest", data: []byte(": 1\nos-release-name-id: debian\nos-release-version-id: 12\n")},
		{name: "upload/bindist/debian/libhello_1.0.0_amd64.deb", data: pseudoRandom("deb", 64<<10)},
		{name: "upload/bindist/fedora/sub/libhello-1.0.0.x86_64.rpm", data: pseudoRandom("rpm", 300<<10)},
		{name: "upload/bindist/big/libhello-big.tar.xz", data: pseudoRandom("big", 600<<10)},
		{name: "upload/bindist/empty/"},
		{name: "upload/bindist/debian/current", link: "libhello_1.0.0_amd64.deb"},
		{name: "upload/other/x/file.txt", data: []byte("no upload URL for this type\n")},
	}
}

// pseudoRandom is n incompressible bytes, the same for the same seed.
func pseudoRandom(seed string, n int) []byte {
	h := sha256.Sum256([]byte(seed))
	r := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// writeTar writes upload.tar and returns the list the tests check the
// uploads against: "<name> <size> <sha256>" per file.
func writeTar(w io.Writer, as []artifact) (string, error) {
	tw := tar.NewWriter(w)
	mtime := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	var list strings.Builder
	for _, a := range as {
		h := &tar.Header{Name: a.name, Mode: 0o644, ModTime: mtime, Typeflag: tar.TypeReg, Size: int64(len(a.data))}
		switch {
		case strings.HasSuffix(a.name, "/"):
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case a.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, a.link, 0
		default:
			sum := sha256.Sum256(a.data)
			fmt.Fprintf(&list, "%s %d %x\n", a.name, len(a.data), sum)
		}
		if err := tw.WriteHeader(h); err != nil {
			return "", err
		}
		if _, err := tw.Write(a.data); err != nil {
			return "", err
		}
	}
	return list.String(), tw.Close()
}

// putUploadTar PUTs upload.tar holding as (through slow, if set) and
// returns the file list.
func (g *guest) putUploadTar(as []artifact, slow *throttled) (string, error) {
	var b bytes.Buffer
	list, err := writeTar(&b, as)
	if err != nil {
		return "", err
	}
	var r io.Reader = &b
	if slow != nil {
		slow.r = &b
		r = slow
	}
	logf("build: uploading %s (%d bytes)", uploadTar, b.Len())
	if err := g.put(uploadTar, r); err != nil {
		return "", fmt.Errorf("PUT upload.tar: %w", err)
	}
	return list, nil
}

// throttled reads a little at a time, delay apart.
type throttled struct {
	r     io.Reader
	delay time.Duration
}

func (t *throttled) Read(p []byte) (int, error) {
	time.Sleep(t.delay)
	return t.r.Read(p[:min(len(p), 2048)])
}

// LZ4Log is the "lz4" package's update log (the tests build it too).
func LZ4Log() string {
	var b strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&b, "line %05d of the update log\n", i)
	}
	return b.String()
}

// putLZ4 uploads the result as result.manifest.lz4, as bbot's worker does.
func (g *guest) putLZ4(pairs []manifest.NameValue) error {
	var plain, packed bytes.Buffer
	if err := manifest.WriteStream(&plain, "", pairs); err != nil {
		return err
	}
	zw := lz4.NewWriter(&packed)
	if _, err := zw.Write(plain.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	logf("build: result of %d bytes as %d bytes of LZ4", plain.Len(), packed.Len())
	return g.put("result.manifest.lz4", &packed)
}

// repeatReader repeats a line forever.
type repeatReader string

func (r repeatReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		n += copy(p[n:], r)
	}
	return n, nil
}
