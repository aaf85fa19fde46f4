package agent

import (
	"net"
	"strconv"

	"github.com/build2/bbot-agent-go/agent/inventory"
	"github.com/build2/bbot-agent-go/manifest"
)

// UseFakeMachine makes h, the --fake-machine header, the agent's only
// machine (bbot's worker-development mode): it is what enumeration
// returns (--dump-machines prints it), what the task requests offer, and
// its tasks run the machine session without a machine: served over TFTP,
// the result (and upload.tar) PUT by whoever plays the worker, collected,
// journaled and reported like any other (perform).
func (a *Agent) UseFakeMachine(h manifest.MachineHeader) {
	a.Enumerator.Fake = inventory.FakeMachine(h)
}

// fakeBind is where a --fake-machine task's TFTP is served: the loopback
// unless --tftp-address says otherwise, on the slot's port.
func fakeBind(o *Options, plan SlotPlan) string {
	host := o.TFTPAddress
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(plan.TFTPPort))
}
