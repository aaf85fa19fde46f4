package agent

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"

	"github.com/build2/bbot-agent-go/manifest"
)

// ServeFake performs a task with no VM (--fake-machine): a machine session
// without a machine serves the task over TFTP (the loopback, or
// --tftp-address) and waits up to --build-timeout for whoever plays the
// worker to upload a result. It returns the result and, when the upload
// did not parse, why it is abnormal; a timeout is an abort.
func (a *Agent) ServeFake(ctx context.Context, task *manifest.Task) (res manifest.Result, problem error, err error) {
	o := a.Opts
	var b bytes.Buffer
	// No controller response: no agent checksum, so the worker gets no
	// worker/dependency checksums (a full build).
	if err := WorkerTask(task, o.Trust, "", "").Serialize(&b); err != nil {
		return res, nil, err
	}
	host := o.TFTPAddress
	if host == "" {
		host = "127.0.0.1"
	}
	sl := a.slots[0]
	dirs := sl.dirs
	s := &session{v: sl.vms, mode: "build", noVM: true, bind: net.JoinHostPort(host, strconv.Itoa(sl.plan.TFTPPort)),
		get: dirs.Get, put: dirs.Put, getFiles: map[string][]byte{"manifest": b.Bytes(), "task.manifest": b.Bytes()},
		names: resultNames, timeout: o.BuildTimeout, maxFile: maxTaskUpload, maxTotal: 4 * maxTaskUpload}
	a.Log.Info("serving the task over TFTP with no VM", "address", s.bind, "get", dirs.Get, "put", dirs.Put)
	rep := s.run(ctx)
	defer s.teardown()
	res = manifest.Result{Name: task.Name(), Version: task.Version(), Status: "abort"}
	switch rep.ev {
	case evResult:
		res, problem = readResult(filepath.Join(dirs.Put, rep.name), task)
		return res, problem, nil
	case evTimeout, evBadResult:
		a.Log.Warn("no result", "why", rep.why)
		if rep.ev == evBadResult {
			res.Status = "abnormal"
		}
		return res, nil, nil
	case evInterrupted:
		return res, nil, context.Canceled
	}
	return res, nil, errors.New(rep.why)
}
