package main

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"time"

	"github.com/build2/bbot-agent-go/manifest"
)

// auxPort is where the test auxiliary machine serves its "database".
const auxPort = "5432"

// auxiliary is an auxiliary machine's worker: it PUTs its environment
// (DATABASE_HOST, DATABASE_PORT) and then answers every connection to port
// 5432 with "aux-ok <address>" until it is powered off. The OEM string
// bbot.test-aux (from the test machine manifest's options) makes it
// misbehave: "silent" talks (a GET, so it counts as started) but never
// uploads, "bad" uploads a malformed file.
func (g *guest) auxiliary() error {
	ip, _, _ := strings.Cut(g.oem["bbot.ip"], "/")
	if ip == "" {
		return errors.New("auxiliary: no bbot.ip")
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(ip, auxPort))
	if err != nil {
		return err
	}
	env := "# test auxiliary machine\nDATABASE_HOST=" + ip + "\nDATABASE_PORT=" + auxPort + "\n"
	switch g.oem["bbot.test-aux"] {
	case "silent":
		_, err := g.get("nothing")
		logf("auxiliary: GET nothing: %v; not uploading the environment (bbot.test-aux=silent)", err)
		select {}
	case "bad":
		env = "DATABASE_HOST=" + ip + "\nnot a variable\n"
	}
	if err := g.put("environment", strings.NewReader(env)); err != nil {
		return fmt.Errorf("PUT environment: %w", err)
	}
	logf("auxiliary: environment uploaded, serving %s", ln.Addr())
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		logf("auxiliary: connection from %s", c.RemoteAddr())
		fmt.Fprintf(c, "aux-ok %s\n", ip)
		c.Close()
	}
}

// checkAuxiliary checks, for a task with auxiliary-environment, that the
// auxiliary machine is reachable where its environment says: the second
// NIC gets bbot.aux.ip, then each *DATABASE_HOST/PORT pair is dialled. The
// result gets an "auxiliary" operation whose log holds the environment and
// the answers.
func (g *guest) checkAuxiliary(task *manifest.Task, res *manifest.Result) {
	env := task.Fields.Value("auxiliary-environment")
	if env == "" {
		return
	}
	status := "success"
	var log strings.Builder
	defer func() {
		logf("build: auxiliary: %s", status)
		res.Operations = append(res.Operations, manifest.OperationResult{Operation: "auxiliary", Status: status, Log: log.String()})
		res.Status = manifest.WorseStatus(res.Status, status)
	}()
	fmt.Fprintf(&log, "auxiliary-environment:\n%s\n", env)
	fail := func(format string, args ...any) {
		status = "error"
		fmt.Fprintf(&log, "error: "+format+"\n", args...)
	}
	if err := setupAuxNIC(g.oem["bbot.aux.ip"]); err != nil {
		fail("second NIC: %v", err)
		return
	}
	vars := map[string]string{}
	for _, line := range strings.Split(env, "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			vars[k] = v
		}
	}
	var hosts []string
	for k := range vars {
		if strings.HasSuffix(k, "DATABASE_HOST") {
			hosts = append(hosts, k)
		}
	}
	sort.Strings(hosts)
	if len(hosts) == 0 {
		fail("no *DATABASE_HOST variable")
	}
	for _, k := range hosts {
		addr := net.JoinHostPort(vars[k], vars[strings.TrimSuffix(k, "HOST")+"PORT"])
		answer, err := dialAnswer(addr)
		if err != nil {
			fail("%s: %v", addr, err)
			continue
		}
		fmt.Fprintf(&log, "%s (%s): %s\n", addr, k, answer)
	}
}

// setupAuxNIC configures the second Ethernet interface (sorted by name).
func setupAuxNIC(addr string) error {
	if addr == "" {
		return errors.New("no bbot.aux.ip")
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return err
	}
	var names []string
	for _, i := range ifaces {
		if i.Flags&net.FlagLoopback == 0 {
			names = append(names, i.Name)
		}
	}
	sort.Strings(names)
	if len(names) < 2 {
		return fmt.Errorf("one network interface only: %v", names)
	}
	for _, args := range [][]string{{"link", "set", names[1], "up"}, {"addr", "add", addr, "dev", names[1]}} {
		if out, err := exec.Command("/bin/busybox", append([]string{"ip"}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %v: %v: %s", args, err, out)
		}
	}
	logf("network: %s %s (auxiliary)", names[1], addr)
	return nil
}

// dialAnswer reads the first line served at addr, retrying for a while
// (the link may take a moment to come up).
func dialAnswer(addr string) (string, error) {
	var err error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err != nil {
			continue
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, rerr := bufio.NewReader(c).ReadString('\n')
		c.Close()
		return strings.TrimSpace(line), rerr
	}
	return "", err
}
