package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/build2/bbot-agent-go/agent/controllertest"
	"github.com/build2/bbot-agent-go/btrfs"
)

// scriptCmds are the custom testscript commands for real-component tests.
var scriptCmds = map[string]func(ts *testscript.TestScript, neg bool, args []string){
	"mkbtrfs":    cmdMkbtrfs,
	"subvol":     cmdSubvol,
	"waitfile":   cmdWaitfile,
	"controller": cmdController,
	"waitgone":   cmdWaitgone,
	"hup":        cmdHup,
	"sleep":      cmdSleep,
	"exits":      cmdExits,
}

// exits STATUS PROGRAM [ARGS...]: run PROGRAM like exec and check its exit
// status (exec and ! exec tell only zero from non-zero).
func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits STATUS PROGRAM [ARGS...]")
	}
	want, err := strconv.Atoi(args[0])
	ts.Check(err)
	status := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("%s: %v", args[1], err)
		}
		status = ee.ExitCode()
	}
	if status != want {
		ts.Fatalf("%s exited with status %d, want %d", args[1], status, want)
	}
}

// sleep DURATION (Go syntax, e.g. 500ms).
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	d, err := time.ParseDuration(args[0])
	ts.Check(err)
	time.Sleep(d)
}

// hup: send SIGHUP to the background commands (testscript's kill knows
// only INT and KILL).
func cmdHup(ts *testscript.TestScript, neg bool, args []string) {
	for _, c := range ts.BackgroundCmds() {
		if c.Process != nil {
			ts.Check(c.Process.Signal(syscall.SIGHUP))
		}
	}
}

// waitgone GLOB: wait (up to 30 s) until nothing matches GLOB.
func cmdWaitgone(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitgone GLOB")
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if m, _ := filepath.Glob(ts.MkAbs(args[0])); len(m) == 0 {
			return
		}
	}
	ts.Fatalf("%s still exists", args[0])
}

// controller queue PKG MACHINE | force PKG MACHINE (handed out even if
// the machine was not offered) | results N (waits up to 60 s for N results
// and prints "name version status" per result) | requests (prints the
// number of task requests) | upload-types TYPE... (the upload types the
// task responses name) | uploads (prints "type instance archive status
// members..." per upload taken) | result PKG (prints PKG's result
// manifest).
func cmdController(ts *testscript.TestScript, neg bool, args []string) {
	srv := ts.Value("controller").(*controllertest.Server)
	if len(args) == 0 {
		ts.Fatalf("usage: controller queue|results|requests ...")
	}
	switch args[0] {
	case "queue":
		srv.QueueTask(args[1], args[2])
	case "force":
		srv.ForceTask(args[1], args[2])
	case "results":
		n, _ := strconv.Atoi(args[1])
		for _, r := range srv.WaitResults(n, 60*time.Second) {
			res := r.Request.Result
			fmt.Fprintf(ts.Stdout(), "%s %s %s\n", res.Name, res.Version, res.Status)
		}
	case "requests":
		fmt.Fprintf(ts.Stdout(), "%d\n", len(srv.Requests()))
	case "upload-types":
		srv.UploadTypes = args[1:]
	case "uploads":
		for _, u := range srv.Uploads() {
			fmt.Fprintf(ts.Stdout(), "%s %s %s %d", u.Type, u.Instance, u.ArchiveName, u.Status)
			tr := tar.NewReader(bytes.NewReader(u.Archive))
			for {
				h, err := tr.Next()
				if err != nil {
					break
				}
				fmt.Fprintf(ts.Stdout(), " %s", h.Name)
			}
			fmt.Fprintln(ts.Stdout())
		}
	case "result":
		for _, r := range srv.Results() {
			if r.Request.Result.Name == args[1] {
				ts.Check(r.Request.Result.Serialize(ts.Stdout()))
			}
		}
	default:
		ts.Fatalf("unknown controller command %q", args[0])
	}
}

// waitfile PATH: wait (up to 30 s) until PATH exists.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: waitfile PATH")
	}
	p := ts.MkAbs(args[0])
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(p); err == nil {
			return
		}
	}
	ts.Fatalf("%s did not appear", p)
}

// scriptCondition answers [btrfs]: root, mkfs.btrfs and loop devices are
// there. Under CI=true a missing prerequisite is an error, not a skip.
func scriptCondition(cond string) (bool, error) {
	var why string
	switch cond {
	case "root": // not a prerequisite: scripts test both sides
		return os.Geteuid() == 0, nil
	case "btrfs":
		why = btrfsMissing()
	case "curl":
		if _, err := exec.LookPath("curl"); err != nil {
			why = "curl not installed"
		}
	default:
		return false, fmt.Errorf("unknown condition %q", cond)
	}
	if why == "" {
		return true, nil
	}
	if os.Getenv("CI") == "true" {
		return false, fmt.Errorf("prerequisite missing under CI: %s", why)
	}
	return false, nil
}

func btrfsMissing() string {
	if os.Geteuid() != 0 {
		return "needs root to mount a loop device"
	}
	if _, err := exec.LookPath("mkfs.btrfs"); err != nil {
		return "mkfs.btrfs not found (apt-get install btrfs-progs)"
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return "no /dev/loop-control"
	}
	return ""
}

// requirePrereq fails the command when a prerequisite is missing; scripts
// check [btrfs] first so that they skip outside CI.
func requirePrereq(ts *testscript.TestScript, ok bool, why string) {
	if !ok {
		ts.Fatalf("prerequisite missing: %s", why)
	}
}

// mkbtrfs DIR: loop-mount a fresh 256 MiB btrfs at DIR (unmounted when the
// script ends).
func cmdMkbtrfs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: mkbtrfs DIR")
	}
	requirePrereq(ts, os.Geteuid() == 0, "needs root to mount a loop device")
	_, err := exec.LookPath("mkfs.btrfs")
	requirePrereq(ts, err == nil, "mkfs.btrfs not found")
	mnt := ts.MkAbs(args[0])
	img := mnt + ".img"
	ts.Check(os.MkdirAll(mnt, 0o755))
	f, err := os.Create(img)
	ts.Check(err)
	ts.Check(f.Truncate(256 << 20))
	f.Close()
	if out, err := exec.Command("mkfs.btrfs", "-q", "-f", img).CombinedOutput(); err != nil {
		ts.Fatalf("mkfs.btrfs: %v\n%s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		requirePrereq(ts, false, "cannot loop-mount: "+string(out))
	}
	ts.Defer(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			exec.Command("umount", "-l", mnt).Run()
			ts.Logf("umount %s: %v\n%s", mnt, err, out)
		}
	})
}

// subvol create PATH | snapshot SRC DST | ro PATH | exists PATH
func cmdSubvol(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) < 2 {
		ts.Fatalf("usage: subvol create|snapshot|ro|exists ...")
	}
	p := ts.MkAbs(args[1])
	switch args[0] {
	case "create":
		ts.Check(os.MkdirAll(filepath.Dir(p), 0o755))
		ts.Check(btrfs.Create(p))
	case "snapshot":
		ts.Check(btrfs.Snapshot(p, ts.MkAbs(args[2]), false))
	case "ro":
		ts.Check(btrfs.SetReadOnly(p, true))
	case "exists":
		ok, err := btrfs.IsSubvolume(p)
		if err != nil && !os.IsNotExist(err) {
			ok = false
		}
		if ok == neg {
			ts.Fatalf("subvolume %s exists: %v", p, ok)
		}
	default:
		ts.Fatalf("unknown subvol command %q", args[0])
	}
}
